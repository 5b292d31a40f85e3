"""Shared pytest setup: headless MuJoCo rendering and small, deterministic torch runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ebt_policy.utils import default_mujoco_gl

# MuJoCo renders offscreen on CPU through EGL (Mesa llvmpipe); osmesa where EGL is missing.
default_mujoco_gl()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: recorded chunks keep their reduction order, and timing-free
    comparisons do not depend on the machine's core count. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
