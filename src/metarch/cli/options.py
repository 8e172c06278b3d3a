"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path

import typer

from metarch.data.paths import resolve_data_root

__all__ = ["DATA_ROOT_OPTION", "data_root_from"]

DATA_ROOT_OPTION = typer.Option(
    None,
    "--data-root",
    help="Folder holding the data sets (default: $METARCH_DATA, ./data, ../shared/data).",
    show_default=False,
)


def data_root_from(value: Path | None) -> Path:
    """The data root an option value (or its absence) stands for."""
    return resolve_data_root(value)
