"""``metarch train``: meta-train from a config into a run directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from metarch.cli.options import DATA_ROOT_OPTION
from metarch.cli.progress import show_progress
from metarch.engine.config import load_config
from metarch.engine.trainer import Trainer
from metarch.errors import ConfigError

__all__ = ["train"]


def train(
    config_file: Path | None = typer.Option(
        None, "--config", help="YAML config (default: built-in defaults)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config key: KEY.PATH=VALUE (repeatable)."
    ),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    nproc: int = typer.Option(1, "--nproc", help="Processes (torch.distributed, gloo on CPU)."),
    data_root: Path | None = DATA_ROOT_OPTION,
) -> None:
    """Meta-train a learner; checkpoints, metrics and TensorBoard events go to --out."""
    if nproc != 1:
        raise ConfigError("--nproc > 1 is not available yet in this version; use --nproc 1")
    config = load_config(config_file, overrides)
    console = Console(stderr=True)
    with show_progress():
        trainer = Trainer(config, out, resume=resume, data_root=data_root)
    columns = [
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(
            "train", total=config.steps, completed=trainer.start_step, status=""
        )

        def on_step(step: int, metrics: dict[str, float]) -> None:
            status = f"loss {metrics['loss']:.3f} acc {metrics['accuracy']:.1f}%"
            progress.update(task, completed=step, status=status)

        trainer.on_step = on_step
        final = trainer.run()
    summary = ", ".join(f"{k} {v:.3f}" for k, v in final.items())
    typer.echo(f"trained {config.steps} steps into {out}: {summary}")
