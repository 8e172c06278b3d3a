"""Progress reporting that library code emits and only front ends display.

Long library operations (decoding a data set, downloading an archive) call
:func:`report_progress`; it costs nothing unless a caller installed a display with
:func:`progress_callback`, as the CLI does with a rich progress bar. No progress argument
has to be threaded through every layer in between.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

__all__ = ["ProgressCallback", "progress_callback", "report_progress"]

ProgressCallback = Callable[[str, int, "int | None"], None]
"""Called with (what is in progress, units done, units in total or None)."""

_CURRENT: ContextVar[ProgressCallback | None] = ContextVar("metarch_progress", default=None)


@contextlib.contextmanager
def progress_callback(callback: ProgressCallback) -> Iterator[None]:
    """Send progress reports of the enclosed block to ``callback``."""
    token = _CURRENT.set(callback)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def report_progress(label: str, done: int, total: int | None) -> None:
    """Report that ``done`` of ``total`` units of ``label`` are finished."""
    callback = _CURRENT.get()
    if callback is not None:
        callback(label, done, total)
