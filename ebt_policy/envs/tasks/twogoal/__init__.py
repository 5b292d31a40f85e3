"""`twogoal`: a point mass that reaches either of two goals (our own multimodal MuJoCo task).

``spec.py`` declares the task, ``env.py`` holds the env, ``expert.py`` its scripted expert.
"""
