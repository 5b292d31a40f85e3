"""User-facing errors. The CLI prints these as one line (no traceback) and exits with status 2."""

from __future__ import annotations


class EbtPolicyError(Exception):
    """Base class for errors caused by user input (files, keys, values), not by bugs."""


class DatasetError(EbtPolicyError, ValueError):
    """A dataset (episode store or importer input) is missing, malformed or inconsistent."""


class CheckpointError(EbtPolicyError, ValueError):
    """A checkpoint directory is missing, truncated or does not match the code."""


class ConfigError(EbtPolicyError, ValueError):
    """A configuration value or key is invalid."""


class TaskError(EbtPolicyError, ValueError):
    """An unknown task or invalid environment metadata."""
