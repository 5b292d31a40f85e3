"""Evaluation videos: frames rendered inside the env workers, annotated and written as mp4.

:class:`RenderFrames` wraps an env inside its (possibly remote) worker and, while its
``record_frames`` attribute is set, adds the rendered frame to ``info["render_frame"]`` on reset
and step, so the parent process receives it through the vector env's info dict. The parent writes
frames with :class:`EpisodeVideo` (imageio + ffmpeg), drawing the step and the policy's
per-chunk energy on each frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

FRAME_KEY = "render_frame"


class RenderFrames(gym.Wrapper):
    """Adds ``info["render_frame"]`` (H, W, 3) uint8 from ``env.render()`` while recording."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.record_frames = False

    def _add_frame(self, info: dict[str, Any]) -> dict[str, Any]:
        if not self.record_frames:
            return info
        frame = self.env.render()
        if frame is None:
            raise RuntimeError(
                f"{self.env} rendered no frame: build it with render_mode='rgb_array' for videos"
            )
        return {**info, FRAME_KEY: np.ascontiguousarray(frame, dtype=np.uint8)}

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return obs, self._add_frame(info)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._add_frame(info)


def annotate(frame: np.ndarray, lines: list[str]) -> np.ndarray:
    """Return a copy of ``frame`` with ``lines`` of text drawn at the top left."""
    import cv2

    out = np.ascontiguousarray(frame, dtype=np.uint8).copy()
    scale = max(0.35, out.shape[0] / 640)
    height = int(22 * scale) + 4
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, text in enumerate(lines):
        org = (4, height * (i + 1))
        # dark outline under white text stays readable on any background
        cv2.putText(out, text, org, font, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, org, font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class EpisodeVideo:
    """Streams the frames of one episode into an mp4 file (written to ``path``.part, then moved)."""

    def __init__(self, path: str | Path, fps: float) -> None:
        import imageio.v2 as imageio

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".part.mp4")
        # macro_block_size=1: keep the rendered size instead of resizing to a multiple of 16
        self._writer = imageio.get_writer(
            self._tmp, fps=fps, codec="libx264", macro_block_size=1, ffmpeg_log_level="error"
        )
        self.n_frames = 0

    def append(self, frame: np.ndarray, lines: list[str]) -> None:
        """Add one frame with ``lines`` of text drawn on it."""
        self._writer.append_data(annotate(frame, lines))
        self.n_frames += 1

    def close(self) -> Path:
        """Finish the file and return its path."""
        self._writer.close()
        self._tmp.replace(self.path)
        return self.path
