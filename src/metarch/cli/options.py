"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path

import typer

from metarch.data.paths import resolve_data_root
from metarch.errors import ConfigError

__all__ = [
    "DATA_ROOT_OPTION",
    "LEGACY_SET_OPTION",
    "LEGACY_SETS_OPTION",
    "data_root_from",
    "pick_dataset",
    "pick_datasets",
]

DATA_ROOT_OPTION = typer.Option(
    None,
    "--data-root",
    help="Folder holding the data sets (default: $METARCH_DATA, ./data, ../shared/data).",
    show_default=False,
)

# ``--set NAME`` chose a data set in earlier versions; ``--set KEY=VALUE`` is a config override in
# ``metarch train``. The old spelling still works where a data set is meant, with a warning.
LEGACY_SET_OPTION = typer.Option(None, "--set", hidden=True)
LEGACY_SETS_OPTION = typer.Option([], "--set", hidden=True)

DEPRECATED_SET = "warning: --set is deprecated here; use --dataset"


def pick_dataset(dataset: str, legacy: str | None, default: str) -> str:
    """The set a command works on: ``--dataset``, or the deprecated ``--set`` if given."""
    if legacy is None:
        return dataset
    typer.echo(DEPRECATED_SET, err=True)
    if dataset not in (default, legacy):
        raise ConfigError(f"--dataset {dataset} and --set {legacy} disagree; pass --dataset only")
    return legacy


def pick_datasets(datasets: list[str], legacy: list[str], default: list[str]) -> list[str]:
    """Several sets (repeatable ``--dataset``), with the deprecated ``--set`` still taken."""
    if not legacy:
        return datasets
    typer.echo(DEPRECATED_SET, err=True)
    return [*(datasets if datasets != default else []), *legacy]


def data_root_from(value: Path | None) -> Path:
    """The data root an option value (or its absence) stands for."""
    return resolve_data_root(value)
