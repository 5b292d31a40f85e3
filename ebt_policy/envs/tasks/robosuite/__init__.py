"""robosuite 1.5 tasks (lift, can, square, stack) with a Panda under OSC delta-pose control.

``spec.py`` declares the four tasks, ``env.py`` wraps robosuite, ``expert.py`` holds the scripted
pick-and-place experts.
"""
