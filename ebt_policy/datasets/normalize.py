"""The normaliser moved to :mod:`ebt_policy.models.normalizer` (running a policy must not import
the episode store); this name stays for ``from ebt_policy.datasets import Normalizer``."""

from __future__ import annotations

from ebt_policy.models.normalizer import DEFAULT_EPS, Normalizer

__all__ = ["DEFAULT_EPS", "Normalizer"]
