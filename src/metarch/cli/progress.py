"""Rich progress bars for the library's progress reports."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from metarch.utils.progress import progress_callback

__all__ = ["show_progress"]


@contextlib.contextmanager
def show_progress() -> Iterator[None]:
    """Display every :func:`~metarch.utils.progress.report_progress` of the block on stderr."""
    console = Console(stderr=True)
    if not console.is_terminal:
        # Logs and pipes get no bars (and no stray blank lines around error messages).
        yield
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def update(label: str, done: int, total: int | None) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total)
            progress.update(tasks[label], completed=done, total=total)

        with progress_callback(update):
            yield
