"""Scripted expert for `pusht`: model-predictive pushing with a private copy of the physics.

Closed-loop on the observation dict; each episode draws its outline sampling, push speed, corner
lead and action noise from the expert's seeded generator, so demonstrations differ but are
reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["PushTExpert", "make_pusht_expert"]


# The T in its body frame (gym-pusht, scale 30): bar x in [-60, 60], y in [0, 30]; stem x in
# [-15, 15], y in [30, 120]. Outline corners in order, and the centre of gravity.
_T_OUTLINE = np.array(
    [[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], float
)
_T_KEYPOINTS = np.array(
    [[-60, 30], [60, 30], [60, 0], [-60, 0], [-15, 30], [-15, 120], [15, 120], [15, 30]], float
)
_T_COG = np.array([0.0, 45.0])
_AGENT_RADIUS = 15.0


def _corner_offsets() -> tuple[np.ndarray, np.ndarray]:
    """The outline's corners and the unit bisectors of their two edges' outward normals (a point
    ``r * sqrt(2)`` out along the bisector clears both edges by ``r``)."""
    n = len(_T_OUTLINE)
    bisectors = []
    for i in range(n):
        prev_dir = _T_OUTLINE[i] - _T_OUTLINE[i - 1]
        next_dir = _T_OUTLINE[(i + 1) % n] - _T_OUTLINE[i]
        n1 = np.array([prev_dir[1], -prev_dir[0]]) / np.linalg.norm(prev_dir)
        n2 = np.array([next_dir[1], -next_dir[0]]) / np.linalg.norm(next_dir)
        b = n1 + n2
        bisectors.append(b / np.linalg.norm(b))
    return _T_OUTLINE.copy(), np.array(bisectors)


_CORNER_OFFSETS = _corner_offsets()


def _rot2(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _to_world(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ _rot2(pose[2]).T + pose[:2]


def _outline_contacts(spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Points along the T's outline (body frame), ``spacing`` apart, with outward normals."""
    points, normals = [], []
    n = len(_T_OUTLINE)
    # Outline goes counter-clockwise in pymunk's frame, so the outward normal is the edge
    # direction turned clockwise.
    for i in range(n):
        a, b = _T_OUTLINE[i], _T_OUTLINE[(i + 1) % n]
        length = np.linalg.norm(b - a)
        direction = (b - a) / length
        normal = np.array([direction[1], -direction[0]])
        k = max(int(length // spacing), 1)
        for j in range(k):
            t = (j + 0.5) / k
            points.append(a + t * (b - a))
            normals.append(normal)
    return np.array(points), np.array(normals)


class PushTExpert:
    """PushT: model-predictive pushing with a private copy of the gym-pusht physics.

    At each decision it simulates straight pushes (up to 100 px far from the goal, 20 px close to
    it, where it also pushes slower) from points along the T's outline, inward along the outline
    normal and tilted +-23 degrees, and from where the agent stands in 12 directions. It keeps the
    push (and its length) that brings the T's keypoints closest to the target's, charging a little
    for the walk to the contact point, walks there around the block (shortest path over the T's
    corners pushed out by the agent's radius), pushes, and plans again. Randomised per episode:
    outline sample spacing and offsets, push speed, how far it aims past corners while walking,
    and a little action noise.
    """

    def __init__(self, seed: int) -> None:
        from ebt_policy.envs.tasks.pusht.env import GOAL_POSE, _import_pusht

        self.rng = np.random.default_rng(seed)
        self._sim = _import_pusht()(obs_type="state")
        self._sim._setup()
        self._goal_kp = _to_world(GOAL_POSE, _T_KEYPOINTS)
        self.reset()

    def reset(self) -> None:
        """New episode: draw this episode's speeds and candidate pattern."""
        self.phase = "plan"
        self.plan: tuple[np.ndarray, np.ndarray, int] | None = None  # (start, direction, steps)
        # target this far ahead of the agent while pushing; it then moves at about half of it
        self.push_speed = self.rng.uniform(16.0, 24.0)  # pixels per step
        self.speed = self.push_speed  # the current plan's push speed
        self.walk_lead = self.rng.uniform(0.3, 0.6)
        self.noise = self.rng.uniform(0.0, 1.5)
        self.spacing = self.rng.uniform(12.0, 16.0)
        self.push_steps = 0
        self.walk_steps = 0
        self.waypoints: list[np.ndarray] = []

    # --- model ------------------------------------------------------------------------------
    def _cost(self, pose: np.ndarray) -> float:
        return float(np.mean(np.sum((_to_world(pose, _T_KEYPOINTS) - self._goal_kp) ** 2, axis=1)))

    def _simulate(
        self, pose: np.ndarray, start: np.ndarray, direction: np.ndarray, steps: int
    ) -> list[np.ndarray]:
        """Block poses after each of ``steps`` pushing steps from ``start`` along ``direction``
        (gym-pusht's PD agent and pymunk physics; the block keeps no velocity between steps)."""
        sim = self._sim
        block, agent = sim.block, sim.agent
        block.angle = float(pose[2])
        block.position = (float(pose[0]), float(pose[1]))
        block.velocity, block.angular_velocity = (0.0, 0.0), 0.0
        agent.position = (float(start[0]), float(start[1]))
        agent.velocity = (0.0, 0.0)
        dt, n_sub = sim.dt, int(1 / (sim.dt * sim.control_hz))
        kp, kv = sim.k_p, sim.k_v
        poses = []
        for _ in range(steps):
            px, py = agent.position
            tx, ty = px + direction[0] * self.speed, py + direction[1] * self.speed
            for _ in range(n_sub):
                (px, py), (vx, vy) = agent.position, agent.velocity
                agent.velocity = (
                    vx + (kp * (tx - px) - kv * vx) * dt,
                    vy + (kp * (ty - py) - kv * vy) * dt,
                )
                sim.space.step(dt)
            poses.append(np.array([block.position.x, block.position.y, block.angle]))
        return poses

    def _choose_push(
        self, pose: np.ndarray, agent: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int, list[np.ndarray]]:
        """Best push found: (start point, direction, steps, walking waypoints to the start).
        steps == 0 when no push improves on the current pose."""
        from shapely.geometry import Point, Polygon

        block = Polygon(_to_world(pose, _T_OUTLINE))
        points, normals = _outline_contacts(self.spacing)
        points = points + self.rng.uniform(-3, 3, points.shape) * (normals == 0)
        rot = _rot2(pose[2])
        current = self._cost(pose)
        error = np.sqrt(current)
        # long pushes while far, short ones to finish
        max_length = 100.0 if error > 60 else 50.0 if error > 20 else 20.0
        # slow, fine pushes near the goal (coverage 0.95 needs the T within a few pixels)
        self.speed = self.push_speed if error > 20 else self.push_speed / 2.5
        max_steps = int(np.ceil((max_length + 4.0) / self.speed))
        candidates = []
        for point, normal in zip(points, normals, strict=True):
            world_normal = rot @ normal
            start = pose[:2] + rot @ point + world_normal * (_AGENT_RADIUS + 4.0)
            if not (0.0 <= start[0] <= 512.0 and 0.0 <= start[1] <= 512.0):
                continue  # out of the action range
            if Point(start).distance(block) < _AGENT_RADIUS + 2.0:
                continue  # inside a notch corner: the agent would touch another edge
            walk_cost = 0.0005 * np.linalg.norm(start - agent) * current  # 100 px: 5%
            for tilt in (0.0, 0.4, -0.4):
                direction = _rot2(tilt) @ -world_normal
                poses = self._simulate(pose, start, direction, max_steps)
                costs = [self._cost(p) for p in poses]
                k = int(np.argmin(costs))
                if costs[k] < current:  # improves the pose; the walk only ranks candidates
                    candidates.append((costs[k] + walk_cost, start, direction, k + 1))
        # pushes from where the agent stands (no walk): keep going, or veer
        for angle in np.linspace(-np.pi, np.pi, 12, endpoint=False):
            direction = np.array([np.cos(angle), np.sin(angle)])
            poses = self._simulate(pose, agent, direction, max_steps)
            costs = [self._cost(p) for p in poses]
            k = int(np.argmin(costs))
            if costs[k] < current:
                candidates.append((costs[k], agent, direction, k + 1))
        candidates.sort(key=lambda c: c[0])
        for _, start, direction, steps in candidates[:20]:
            path = self._path(pose, agent, start)
            if path:
                return start, direction, steps, path
        return agent, np.zeros(2), 0, []

    # --- walking ----------------------------------------------------------------------------
    def _path(self, pose: np.ndarray, agent: np.ndarray, goal: np.ndarray) -> list[np.ndarray]:
        """Shortest walk from ``agent`` to ``goal`` that keeps clear of the block: a visibility
        graph over the T's corners pushed out by the agent's radius."""
        from shapely.geometry import LineString, Polygon

        block = Polygon(_to_world(pose, _T_OUTLINE))
        clearance = _AGENT_RADIUS + 1.0
        nodes = [agent, goal]
        corners, bisectors = _CORNER_OFFSETS
        out = corners + bisectors * (_AGENT_RADIUS + 5.0) * np.sqrt(2)
        for p in _to_world(pose, out):
            # the agent is kinematic: walls do not stop it, only the action range does
            if 0.0 <= p[0] <= 512.0 and 0.0 <= p[1] <= 512.0:
                nodes.append(p)
        n = len(nodes)
        dist = np.full(n, np.inf)
        prev = np.full(n, -1)
        dist[0] = 0.0
        done = np.zeros(n, bool)
        for _ in range(n):  # Dijkstra on a dozen nodes
            i = int(np.argmin(np.where(done, np.inf, dist)))
            if not np.isfinite(dist[i]) or i == 1:
                break
            done[i] = True
            for j in range(n):
                if done[j]:
                    continue
                d = dist[i] + np.linalg.norm(nodes[j] - nodes[i])
                if d < dist[j] and LineString([nodes[i], nodes[j]]).distance(block) >= clearance:
                    dist[j], prev[j] = d, i
        if prev[1] < 0:
            return []
        path, i = [], 1
        while i != 0:
            path.append(nodes[i])
            i = int(prev[i])
        return path[::-1]

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Next action: the agent's target position (float32 (2,), pixels)."""
        agent = np.asarray(obs["agent_pos"], dtype=np.float64)
        pose = np.asarray(obs["block_pose"], dtype=np.float64)
        if self.phase == "push":
            assert self.plan is not None
            _, direction, steps = self.plan
            self.push_steps += 1
            if self.push_steps <= steps:
                return self._out(agent + direction * self.speed)
            self.phase = "plan"
        if self.phase == "walk" and self.walk_steps > 40:
            self.phase = "plan"  # the walk went wrong (the block moved): plan afresh
        if self.phase == "plan":
            start, direction, steps, self.waypoints = self._choose_push(pose, agent)
            self.plan = (start, direction, steps)
            self.walk_steps = 0
            self.phase = "walk"
        assert self.plan is not None
        start, direction, steps = self.plan
        if steps == 0:  # no push helps from here: step back from the block and plan again
            self.phase = "plan"
            cog = _to_world(pose, _T_COG[None])[0]
            # (a spot 110 px from the T's centre: clear of it, never off into a corner)
            away = agent - cog
            return self._out(cog + away / max(np.linalg.norm(away), 1e-6) * 110.0)
        self.walk_steps += 1
        if np.linalg.norm(start - agent) < 3.0:
            self.phase, self.push_steps = "push", 1
            return self._out(agent + direction * self.speed)
        while len(self.waypoints) > 1 and np.linalg.norm(self.waypoints[0] - agent) < 10.0:
            self.waypoints.pop(0)
        # The agent's PD controller lags (a target d away is ~75% unreached after one step), so
        # aim past intermediate corners; aim exactly at the last one, in front of the block.
        target = self.waypoints[0]
        if len(self.waypoints) > 1:
            target = target + self.walk_lead * (target - agent)
        return self._out(target)

    def _out(self, target: np.ndarray) -> np.ndarray:
        target = target + self.rng.normal(0.0, self.noise, 2)
        return np.clip(target, 0.0, 512.0).astype(np.float32)


def make_pusht_expert(seed: int) -> PushTExpert:
    """Scripted expert for `pusht`."""
    return PushTExpert(seed)
