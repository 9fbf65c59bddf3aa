"""Progress: one callback type for every long job that reports as it goes (export, the INT8 guard, the live run,
deploy). A job takes ``progress: Progress | None`` and calls it with one human-readable line at a time; the CLI
passes a function that prints to stderr, a script may pass ``print`` or ``list.append``, None says nothing."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def reporter(progress: Progress | None) -> Progress:
    """``progress``, or a callback that drops every line."""
    return progress if progress is not None else _silent


def _silent(_line: str) -> None:
    return None
