"""MuJoCo's offscreen renderer: EGL unless the user chose otherwise (``MUJOCO_GL=osmesa``)."""

from __future__ import annotations

import os


def default_mujoco_gl() -> str:
    """Set ``MUJOCO_GL`` (and PyOpenGL's platform to match) if unset; return the backend.

    Call before the first ``import mujoco`` / ``robosuite``: the backend is read at import.
    """
    backend = os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend
