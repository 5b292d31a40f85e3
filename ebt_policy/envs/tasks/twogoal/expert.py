"""Scripted expert for `twogoal`: a phase machine that picks one of the two goals at random.

Closed-loop on the observation dict; each episode draws its side, waypoints, hold time, speed and
action noise from the expert's seeded generator, so demonstrations differ but are reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ebt_policy.envs.tasks.twogoal import env as twogoal

__all__ = ["TwoGoalExpert", "make_twogoal_expert"]


class TwoGoalExpert:
    """twogoal: go straight up toward the obstacle, stop, then pick a side at random, pass beside
    the obstacle and go to that side's goal.

    The side does not depend on the state: every demonstration goes up the same corridor (start
    positions spread +-5 cm, the obstacle is 20 cm wide), holds still for a few steps at a random
    height below the obstacle and turns left or right from rest. At the turn the same states
    (and the same recent history: standing still) carry both actions, so a policy that regresses
    the mean action gets no sideways push there and stays put. Waypoints, hold time, speed and
    noise vary per episode.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """New episode: draw the side (the mode) and this episode's path."""
        self.side = 1.0 if self.rng.random() < 0.5 else -1.0
        x_clear = twogoal.OBSTACLE_CENTER[0] + twogoal.OBSTACLE_HALF[0] + twogoal.AGENT_RADIUS
        y_below = twogoal.OBSTACLE_CENTER[1] - twogoal.OBSTACLE_HALF[1] - twogoal.AGENT_RADIUS
        self.turn_y = self.rng.uniform(y_below - 0.08, y_below - 0.03)
        self.beside = np.array(
            [
                self.side * self.rng.uniform(x_clear + 0.04, x_clear + 0.07),
                self.turn_y + self.rng.uniform(0.0, 0.03),
            ]
        )
        self.goal = twogoal.GOALS[1 if self.side > 0 else 0] + self.rng.uniform(-0.01, 0.01, 2)
        self.wait = int(self.rng.integers(4, 11))  # steps to hold still before turning
        self.stage = 0  # 0: up the corridor, 1: hold, 2: sideways, 3: to the goal
        self.gain = self.rng.uniform(8.0, 14.0)
        self.speed = self.rng.uniform(0.7, 1.0)
        self.noise = self.rng.uniform(0.0, 0.1)

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Next action (float32 (2,))."""
        pos = np.asarray(obs["agent_pos"], dtype=np.float64)
        if self.stage == 0 and pos[1] >= self.turn_y - 0.005:
            self.stage, self.hold = 1, np.array([pos[0], self.turn_y])
        if self.stage == 1:
            self.wait -= 1
            if self.wait < 0:
                self.stage = 2
        if self.stage == 2 and np.linalg.norm(self.beside - pos) < 0.04:
            self.stage = 3
        if self.stage == 0:
            target = np.array([pos[0], self.turn_y])  # straight up, whatever x the start had
        elif self.stage == 1:
            target = self.hold
        else:
            target = self.beside if self.stage == 2 else self.goal
        action = self.gain * (target - pos)
        norm = np.linalg.norm(action)
        if norm > self.speed:
            action *= self.speed / norm
        action += self.rng.normal(0.0, self.noise, 2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def make_twogoal_expert(seed: int) -> TwoGoalExpert:
    """Scripted expert for `twogoal`."""
    return TwoGoalExpert(seed)
