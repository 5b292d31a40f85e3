"""`pusht` (gym-pusht): push a T-shaped block onto its target pose.

``spec.py`` declares the task, ``env.py`` wraps gym-pusht, ``expert.py`` holds its scripted
expert.
"""
