"""``metarch train``: meta-train from a config into a run directory."""

from __future__ import annotations

import sys
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
from torch.multiprocessing.spawn import ProcessExitedException

from metarch.cli.options import DATA_ROOT_OPTION
from metarch.cli.progress import show_progress
from metarch.engine.checkpoint import CheckpointError, load_checkpoint
from metarch.engine.config import TrainConfig, load_config
from metarch.engine.distributed import current_group, launch
from metarch.engine.trainer import Trainer, train_command
from metarch.errors import ConfigError, MetarchError
from metarch.utils.io import describe_os_error, display_path

__all__ = ["train"]

# What a shell reports for a process stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def _train_process(
    config: TrainConfig,
    out: Path,
    resume: bool,
    data_root: Path | None,
    config_file: Path | None,
) -> None:
    """One training process (rank 0 draws the progress bar and prints the summary)."""
    group = current_group()
    try:
        with show_progress():
            trainer = Trainer(
                config, out, resume=resume, data_root=data_root, config_file=config_file
            )
        if trainer.start_step >= config.steps:
            trainer.close()
            if group.is_main:
                print(
                    f"{display_path(out)} has trained all {config.steps} steps already; nothing "
                    "to resume (to train on, raise steps in its config.yaml and resume again)"
                )
            return
        console = Console(stderr=True)
        columns = [
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        ]
        visible = group.is_main and console.is_terminal
        with Progress(*columns, console=console, disable=not visible) as progress:
            task = progress.add_task(
                "train", total=config.steps, completed=trainer.start_step, status=""
            )

            def on_step(step: int, metrics: dict[str, float]) -> None:
                status = f"loss {metrics['loss']:.3f} acc {metrics['accuracy']:.1f}%"
                progress.update(task, completed=step, status=status)

            trainer.on_step = on_step
            final = trainer.run()
    except (MetarchError, OSError) as exc:
        if not group.distributed:
            raise
        # A spawned process reports its own error; the parent only learns the exit code.
        message = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        print(f"error (rank {group.rank}): {message}", file=sys.stderr)
        sys.exit(2)
    if group.is_main:
        summary = ", ".join(f"{k} {v:.3f}" for k, v in final.items())
        if trainer.stopped_by is None:
            print(f"trained {config.steps} steps into {display_path(out)}: {summary}")
        else:
            step = trainer.step
            print(
                f"stopped at step {step} of {config.steps}, having reached {trainer.stopped_by}"
                f"={getattr(config.budget, trainer.stopped_by.split('.')[1])}, into "
                f"{display_path(out)}: {summary}"
            )


def _interrupted(out: Path, data_root: Path | None) -> str:
    """Where an interrupted run stands, and the command that continues it."""
    try:
        step = load_checkpoint(out / "last.json").step
    except CheckpointError:
        return (
            f"interrupted before the first checkpoint of {display_path(out)}; nothing to "
            "resume: run the same command again to start over"
        )
    command = train_command(out / "config.yaml", out, data_root, "--resume")
    return f"interrupted; the last checkpoint is at step {step}; resume with: {command}"


def train(
    config_file: Path | None = typer.Option(
        None, "--config", help="YAML config (default: built-in defaults)."
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Override a config key: KEY.PATH=VALUE (repeatable).",
    ),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out from its last checkpoint; give the run's settings "
        "(--config OUT/config.yaml, or the same config and --set as it was started with).",
    ),
    nproc: int = typer.Option(
        1, "--nproc", help="Training processes on this machine (torch.distributed)."
    ),
    data_root: Path | None = DATA_ROOT_OPTION,
) -> None:
    """Meta-train a learner; checkpoints, metrics and TensorBoard events go to --out."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    config = load_config(config_file, overrides)
    if config.meta_batch % nproc:
        raise ConfigError(
            f"meta_batch {config.meta_batch} does not split evenly over --nproc {nproc}"
        )
    try:
        launch(nproc, _train_process, config, out, resume, data_root, config_file)
    except OSError as exc:
        # The file system's one-line error (cli/app.py), and how to continue once fixed.
        if not (out / "last.json").exists():
            raise
        command = train_command(out / "config.yaml", out, data_root, "--resume")
        raise MetarchError(f"{describe_os_error(exc)}; to continue: {command}") from None
    except KeyboardInterrupt:
        # Every file is written atomically (or appended whole), so there is nothing to undo.
        typer.echo(_interrupted(out, data_root), err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except ProcessExitedException as exc:
        raise MetarchError(
            f"training process {exc.error_index} failed (exit code {exc.exit_code}); "
            "its message is above"
        ) from None
