"""Shared pytest setup: headless MuJoCo rendering and small, deterministic torch runs."""

from __future__ import annotations

from ebt_policy.utils import default_mujoco_gl

# MuJoCo renders offscreen on CPU through EGL (Mesa llvmpipe); osmesa where EGL is missing.
default_mujoco_gl()
