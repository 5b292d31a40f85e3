"""Deployment runtime: the robot interface, a real-time simulated robot, the safety layer and the
control loop that runs a trained policy against any of them.

Nothing here imports training code, the episode store (except, lazily, its public append API for
recordings) or a simulator (except :mod:`ebt_policy.deploy.robots.sim`, through
``ebt_policy.envs``).
"""

from ebt_policy.deploy.robot import Observation, Robot, RobotSpec

__all__ = ["Observation", "Robot", "RobotSpec"]
