"""Shared pytest setup: headless MuJoCo rendering and small, deterministic torch runs."""

from __future__ import annotations

import os

# MuJoCo renders offscreen on CPU through EGL (Mesa llvmpipe); osmesa where EGL is missing.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
