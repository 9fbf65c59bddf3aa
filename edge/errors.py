"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations


class EdgesegError(Exception):
    """A failure the user can fix.

    The CLI prints ``str(err)`` as a single line and exits non-zero without a traceback.
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.rstrip(".")
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.problem}: {self.fix}" if self.fix else self.problem


class DataError(EdgesegError):
    """Bad or missing input data."""


class ModelError(EdgesegError):
    """A model name, file, card or checkpoint that cannot be used."""


class MissingDependency(EdgesegError):
    """An optional package this feature needs is not installed (exit code 3)."""

    exit_code = 3
