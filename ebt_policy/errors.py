"""User-facing errors. The CLI prints these as one line (no traceback) and exits with status 2.

Every message names the culprit (a file, key, flag or value) and says what was expected.
"""

from __future__ import annotations

import signal


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


class NumericalError(EbtPolicyError, FloatingPointError):
    """A computation produced NaN/Inf (NaN weights or inputs, a learning rate that diverged).

    Still a ``FloatingPointError``, so code that caught those before keeps working.
    """


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (after its clean shutdown); the CLI exits with 128 + signum,
    the shell's convention: 130 for Ctrl-C (SIGINT), 143 for SIGTERM."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """128 + the signal number."""
        return 128 + self.signum
