"""``metarch nas ...``: architecture search on a trained run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from metarch.engine.adapt import adapt_architecture_to, load_support_folder, write_adapted
from metarch.engine.evaluate import load_trained_learner
from metarch.errors import ConfigError

__all__ = ["app"]

app = typer.Typer(
    help="Architecture search: adapt a meta-learned architecture to a task.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("adapt")
def adapt(
    run: Path = typer.Option(..., "--run", help="Run directory of a MetaNAS 'metarch train'."),
    support: Path = typer.Option(
        ..., "--support", help="The task's support set: one folder of images per class."
    ),
    out: Path = typer.Option(
        Path("adapted"),
        "--out",
        help="Folder for architecture.json, architecture.txt and weights.safetensors.",
    ),
    shots: int | None = typer.Option(
        None, "--shots", help="Images per class to use (the first by name; default: all)."
    ),
    checkpoint: str = typer.Option(
        "best", "--checkpoint", help="best, last, or a checkpoint's .json sidecar."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the record as one JSON object."),
) -> None:
    """Adapt weights and architecture to one task; write the architecture and weights."""
    if shots is not None and shots < 1:
        raise ConfigError(f"--shots must be at least 1, got {shots}")
    started = time.perf_counter()
    trained = load_trained_learner(run, checkpoint)
    support_set = load_support_folder(support, trained, shots=shots)
    adapted = adapt_architecture_to(trained, support_set)
    record = write_adapted(out, trained, support_set, adapted)
    record["seconds"] = round(time.perf_counter() - started, 3)
    if as_json:
        typer.echo(json.dumps(record))
        return
    typer.echo(
        f"adapted to {len(support_set.classes)} classes ({len(support_set.labels)} images) in "
        f"{record['seconds']:.1f} s: {record['architecture']}\n"
        f"{record['parameters']:,} parameters, {record['flops'] / 1e6:.1f} MFLOPs per image; "
        f"written to {out}/architecture.json, architecture.txt, weights.safetensors"
    )
