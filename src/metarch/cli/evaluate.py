"""``metarch evaluate``: score a trained run on episodes or on Lake's one-shot runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from metarch.cli.data import (
    DEFAULT_EPISODE_SET,
    DEFAULT_QUERIES,
    DEFAULT_SEED,
    DEFAULT_SHOTS,
    DEFAULT_WAYS,
)
from metarch.cli.options import DATA_ROOT_OPTION, data_root_from, pick_dataset
from metarch.cli.progress import show_progress
from metarch.engine.evaluate import evaluate_episodes, evaluate_lake, load_trained_learner
from metarch.errors import ConfigError
from metarch.meta.test_time import TestTimeAugmentation

__all__ = ["evaluate"]


def _json(data: dict[str, Any]) -> str:
    """Strict JSON (never a bare ``NaN``, which strict parsers reject): non-numbers -> null."""
    clean = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in data.items()
    }
    return json.dumps(clean, allow_nan=False)


def evaluate(
    run: Path = typer.Option(..., "--run", help="Run directory written by 'metarch train'."),
    checkpoint: str = typer.Option(
        "best",
        "--checkpoint",
        help="best, last, or a checkpoint's .json sidecar (a run without validation has "
        "only last, used then).",
    ),
    data_root: Path | None = DATA_ROOT_OPTION,
    protocol: str = typer.Option(
        "episodes", "--protocol", help="'episodes' or 'lake-runs' (Lake's 20 one-shot runs)."
    ),
    dataset: str = typer.Option(
        DEFAULT_EPISODE_SET,
        "--dataset",
        metavar="NAME",
        help="Set name, SET:PART of a named split, or a split file (--protocol episodes).",
    ),
    settings: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Change how the trained learner adapts at test time: method.options.eval_*"
        "=VALUE, e.g. method.options.eval_batch_size=15 (repeatable).",
    ),
    ways: int = typer.Option(DEFAULT_WAYS, "--ways", help="Classes per episode (N)."),
    shots: int = typer.Option(DEFAULT_SHOTS, "--shots", help="Support images per class (K)."),
    queries: int = typer.Option(
        DEFAULT_QUERIES, "--queries", help="Query images per class (Q), scored."
    ),
    episodes: int = typer.Option(
        1000, "--episodes", help="Episodes to score (the 95% interval narrows with more)."
    ),
    within_alphabet: bool = typer.Option(
        False, "--within-alphabet", help="Draw all classes of an episode from one alphabet."
    ),
    seed: int = typer.Option(
        DEFAULT_SEED, "--seed", help="Seed of the episode stream (same seed: same episodes)."
    ),
    tta: int = typer.Option(
        0,
        "--tta",
        help="Test-time augmentation: also adapt to and average predictions over this many "
        "randomly distorted copies of every image (costs copies+1 times the time).",
    ),
    tta_strength: float = typer.Option(
        1.0,
        "--tta-strength",
        help="Distortion ranges of --tta, as a fraction (0, 1] of training augmentation's "
        "defaults (rotation 10 deg, shear 0.1, scale 10%, shift 8%).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Mean accuracy with a 95% confidence interval, or Lake's one-shot error."""
    overrides = [item for item in settings if "=" in item]
    legacy_sets = [item for item in settings if "=" not in item]  # --set NAME: a data set
    if len(legacy_sets) > 1:
        raise ConfigError(f"--set NAME given {len(legacy_sets)} times; pass --dataset once")
    set_name = pick_dataset(dataset, legacy_sets[0] if legacy_sets else None, DEFAULT_EPISODE_SET)
    if protocol not in ("episodes", "lake-runs"):
        raise ConfigError(f"--protocol must be 'episodes' or 'lake-runs', got {protocol!r}")
    for option, value in (
        ("--ways", ways),
        ("--shots", shots),
        ("--queries", queries),
        ("--episodes", episodes),
    ):
        if value < 1:
            raise ConfigError(f"{option} must be at least 1, got {value}")
    if tta < 0:
        raise ConfigError(f"--tta must be 0 (off) or a number of copies, got {tta}")
    if not 0.0 < tta_strength <= 1.0:
        raise ConfigError(f"--tta-strength must be in (0, 1], got {tta_strength}")
    augmentation = TestTimeAugmentation.with_strength(tta, tta_strength) if tta else None
    root = data_root_from(data_root)
    model = load_trained_learner(run, checkpoint, overrides)
    image_size = model.inputs.shape[1]
    source: dict[str, Any] = {"checkpoint": str(model.checkpoint), "step": model.step}
    if overrides:
        source["settings"] = overrides
    with show_progress():
        if protocol == "lake-runs":
            lake = evaluate_lake(
                model.learner,
                root,
                image_size=image_size,
                augmentation=augmentation,
                inputs=model.inputs,
            )
            if as_json:
                typer.echo(_json({**lake.to_json(), **source}))
            else:
                typer.echo(
                    f"Lake's one-shot runs: error {lake.error_percent:.2f}% (20 runs; "
                    f"{model.checkpoint}, step {model.step})"
                )
            return
        result = evaluate_episodes(
            model.learner,
            set_name,
            root,
            image_size=image_size,
            ways=ways,
            shots=shots,
            queries=queries,
            episodes=episodes,
            within_alphabet=within_alphabet,
            seed=seed,
            augmentation=augmentation,
            inputs=model.inputs,
            train_set=model.config.data.train_set,
        )
    if as_json:
        typer.echo(_json({**result.to_json(), **source}))
        return
    mode = " within-alphabet" if within_alphabet else ""
    mode += f", test-time augmentation x{tta}" if tta else ""
    typer.echo(
        f"{set_name}: {ways}-way {shots}-shot{mode}, {result.episodes} episodes: "
        f"accuracy {result.accuracy:.2f}% ± {result.ci95:.2f}% (95% CI; "
        f"{model.checkpoint}, step {model.step})"
    )
    found = result.architectures
    if found is not None:
        typer.echo(
            f"adapted architectures ({found.space} space): {found.distinct} distinct in "
            f"{result.episodes} tasks; meta-architecture {found.meta_architecture}"
        )
        for share in found.most_frequent:
            typer.echo(
                f"  {share.tasks:>5} tasks, accuracy {share.accuracy:.2f}%, "
                f"{share.parameters:,} parameters, {share.flops / 1e6:.1f} MFLOPs: "
                f"{share.architecture}"
            )
