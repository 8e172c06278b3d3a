"""``metarch hardware ...``: devices, layer latency tables, and how well latency is predicted."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from metarch.engine.config import validated_options
from metarch.errors import ConfigError
from metarch.hardware.check import check_latency_models
from metarch.hardware.devices import LOCAL_DEVICES, LocalDevice, Measurement
from metarch.hardware.fewshot import (
    FewShotLatencyPredictor,
    FewShotSettings,
    cache_key,
    pick_devices,
)
from metarch.hardware.lut import LayerLatencyTable, profile_layers
from metarch.hardware.predictors import FlopsModel, LatencyModel, LayerTableModel, ParamsModel
from metarch.hardware.tables import DeviceLatencyTable
from metarch.nas.spaces import SEARCH_SPACES, SearchSpace
from metarch.registry import options_of
from metarch.utils.io import atomic_write_text, display_path

__all__ = ["app"]

app = typer.Typer(
    help="Hardware: local devices, layer latency tables, latency prediction.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

SPACE_OPTION = typer.Option(..., "--space", help="Search space (e.g. nasbench201).")
DEVICE_OPTION = typer.Option(
    "torch-cpu", "--device", help="Local device ('metarch hardware devices' lists them)."
)
DEVICE_SETTINGS_OPTION = typer.Option(
    [],
    "--device-option",
    metavar="KEY=VALUE",
    help="A device setting, e.g. threads=2 (repeatable).",
)
SPACE_SETTINGS_OPTION = typer.Option(
    [],
    "--space-option",
    metavar="KEY=VALUE",
    help="A search-space option, e.g. channels=8 (repeatable).",
)
INPUT_OPTION = typer.Option(
    None, "--input", help="Input image shape CxHxW, e.g. 3x32x32 (default: the space's)."
)
CLASSES_OPTION = typer.Option(
    None, "--classes", help="Put a linear head of this many classes on every network."
)
WARMUP_OPTION = typer.Option(10, "--warmup", min=0, help="Untimed runs before timing.")
REPEATS_OPTION = typer.Option(
    20, "--repeats", min=1, help="Timed runs per round (their median is the round's)."
)
ROUNDS_OPTION = typer.Option(
    5,
    "--rounds",
    min=1,
    help="Rounds across all layers or networks; each keeps its fastest round's median "
    "(steadier on a machine whose speed drifts).",
)


def _pairs(values: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict, values read as YAML scalars."""
    pairs: dict[str, Any] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {value!r}: expected KEY=VALUE, e.g. {flag} threads=2")
        pairs[key.strip()] = yaml.safe_load(text) if text.strip() else None
    return pairs


def _validated(where: str, target: Any, options: dict[str, Any]) -> dict[str, Any]:
    try:
        return validated_options(where, target, options, skip=0)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _device(name: str, settings: list[str]) -> LocalDevice:
    target = LOCAL_DEVICES.get(name)
    device = target(**_validated("--device-option", target, _pairs(settings, "--device-option")))
    device.check_available()
    return device


def _space(name: str, settings: list[str], shape: str | None) -> SearchSpace[Any]:
    target = SEARCH_SPACES.get(name)
    options = _pairs(settings, "--space-option")
    if shape is not None:
        channels, side = _input_shape(shape)
        known = {option.name for option in options_of(target)}
        if {"in_channels", "image_size"} <= known:
            options.setdefault("in_channels", channels)
            options.setdefault("image_size", side)
    space = target(**_validated("--space-option", target, options))
    if shape is not None and space.input_shape != (channels, side, side):
        raise ConfigError(
            f"--input {shape}: the {name} space takes "
            f"{'x'.join(str(d) for d in space.input_shape)} images"
        )
    return space


def _input_shape(text: str) -> tuple[int, int]:
    """``C`` and the side of a ``CxHxW`` string (square images)."""
    parts = text.lower().split("x")
    try:
        c, h, w = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--input {text!r}: expected CxHxW, e.g. 3x32x32") from None
    if min(c, h, w) < 1 or h != w:
        raise ConfigError(f"--input {text!r}: need positive sizes and square images (H = W)")
    return c, h


def _progress(console: Console, what: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )


@app.command("devices")
def devices(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
) -> None:
    """List the local devices: their settings and whether they can measure here."""
    rows: list[dict[str, Any]] = []
    for name, target in LOCAL_DEVICES.items():
        device = target()
        rows.append(
            {
                "device": name,
                "settings": {o.name: o.default for o in options_of(target)},
                "help": (target.__doc__ or "").strip().splitlines()[0],
                "available": device.unavailable() is None,
                "why_not": device.unavailable(),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        status = "ready" if row["available"] else f"not available: {row['why_not']}"
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
        typer.echo(f"{row['device']:<17} {status}\n{'':17} {row['help']} Settings: {settings}")


@app.command("profile")
def profile(
    space_name: str = SPACE_OPTION,
    device_name: str = DEVICE_OPTION,
    out: Path = typer.Option(..., "--out", help="The table file (JSON); resumed if it exists."),
    device_settings: list[str] = DEVICE_SETTINGS_OPTION,
    space_settings: list[str] = SPACE_SETTINGS_OPTION,
    shape: str | None = INPUT_OPTION,
    classes: int | None = CLASSES_OPTION,
    warmup: int = WARMUP_OPTION,
    repeats: int = REPEATS_OPTION,
    rounds: int = ROUNDS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Time every distinct layer of a search space on a device, into a layer latency table.

    The table is written after every chunk of layers: run the same command again after a
    kill and it carries on. Needs only this package's torch (and the device's runtime), so it can
    run on the target device itself.
    """
    space = _space(space_name, space_settings, shape)
    device = _device(device_name, device_settings)
    started = time.perf_counter()
    console = Console(stderr=True)
    with _progress(console, "profile") as progress:
        task = progress.add_task("profile", total=None, status="")

        def on_layer(done: int, total: int, key: str) -> None:
            progress.update(task, completed=done, total=total, status=key)

        table = profile_layers(
            space,
            device,
            out,
            how=Measurement(warmup, repeats, rounds=rounds),
            num_classes=classes,
            on_layer=on_layer,
        )
    summary = {
        "table": display_path(out),
        "space": space_name,
        "device": device.describe(),
        "layers": len(table.entries),
        "seconds": round(time.perf_counter() - started, 3),
        "total_layer_ms": sum(t.median_ms for t in table.entries.values()),
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(
        f"{summary['layers']} layers of {space_name} on {summary['device']} in "
        f"{summary['seconds']:.1f} s, written to {summary['table']}"
    )


@app.command("check")
def check(
    space_name: str = SPACE_OPTION,
    device_name: str = DEVICE_OPTION,
    samples: int = typer.Option(200, "--samples", min=2, help="Networks scored."),
    calibration: int = typer.Option(
        10, "--calibration", min=0, help="Further networks the models are calibrated on."
    ),
    table_path: Path | None = typer.Option(
        None, "--table", help="Layer latency table of the device (default: profile one now)."
    ),
    device_settings: list[str] = DEVICE_SETTINGS_OPTION,
    space_settings: list[str] = SPACE_SETTINGS_OPTION,
    shape: str | None = INPUT_OPTION,
    classes: int | None = CLASSES_OPTION,
    seed: int = typer.Option(0, "--seed", help="Seed of the networks drawn."),
    warmup: int = WARMUP_OPTION,
    repeats: int = REPEATS_OPTION,
    rounds: int = ROUNDS_OPTION,
    report_path: Path | None = typer.Option(
        None, "--out", help="Also write the full report (every network) as JSON here."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Measure random networks end to end on a device; score every latency model on them.

    Reports each model's Spearman and Kendall rank correlation, mean absolute percentage
    error and share of networks within +-10 % of the measured latency.
    """
    space = _space(space_name, space_settings, shape)
    device = _device(device_name, device_settings)
    how = Measurement(warmup, repeats, rounds=rounds)
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory() as folder:
        if table_path is None:
            table_path = Path(folder) / "layers.json"
            profile_layers(space, device, table_path, how=how, num_classes=classes)
        table = LayerLatencyTable.load(table_path)
    models: dict[str, LatencyModel] = {
        "layer-table": LayerTableModel(space, classes, table=table),
        "flops": FlopsModel(space, classes),
        "params": ParamsModel(space, classes),
    }
    with _progress(console, "measure") as progress:
        task = progress.add_task("measure", total=None, status="")
        report = check_latency_models(
            space,
            device,
            models,
            samples=samples,
            calibration=calibration,
            seed=seed,
            how=how,
            num_classes=classes,
            on_network=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if report_path is not None:
        atomic_write_text(report_path, json.dumps(report, indent=1) + "\n")
    if as_json:
        typer.echo(json.dumps({k: v for k, v in report.items() if k != "networks"}))
        return
    typer.echo(
        f"{report['samples']} networks of {space_name} measured on {device.describe()} "
        f"(models calibrated on {report['calibration']} more):"
    )
    typer.echo(f"{'model':<13}{'Spearman':>10}{'Kendall':>9}{'MAPE %':>8}{'within 10%':>12}")
    for name, score in report["scores"].items():
        typer.echo(
            f"{name:<13}{score['spearman']:>10.3f}{score['kendall']:>9.3f}"
            f"{score['mape']:>8.1f}{score['within_10']:>11.1f}%"
        )


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "metarch" / "latency-predictors"


@app.command("fewshot")
def fewshot(
    table_path: Path = typer.Option(
        ..., "--table", help="Whole-network latencies in HELP's CSV form (arch, device columns)."
    ),
    train_devices: str = typer.Option(
        ...,
        "--train-devices",
        help="Devices to meta-train on, comma-separated; NAME* takes every NAME... column.",
    ),
    device: str = typer.Option(..., "--device", help="The new device (a column of --table)."),
    samples: int = typer.Option(
        10, "--samples", min=1, help="Networks measured on the new device (chosen by --seed)."
    ),
    seed: int = typer.Option(0, "--seed", help="Chooses the networks; seeds meta-training."),
    validation_devices: str = typer.Option(
        "",
        "--validation-devices",
        help="Devices that pick the best meta-training iteration (comma-separated).",
    ),
    iterations: int = typer.Option(1000, "--iterations", min=1, help="Meta-iterations."),
    cache: Path | None = typer.Option(
        None,
        "--cache",
        help="Folder of meta-trained predictors (default: ~/.cache/metarch/latency-predictors).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Predict a new device's latencies from a few of its networks (HELP's protocol).

    Meta-trains a predictor across --train-devices (or loads the one cached for the same
    table, devices and settings), adapts it to --device from the latencies of --samples
    of its networks, and scores its ranking of all the device's other networks.
    """
    started = time.perf_counter()
    table = DeviceLatencyTable.from_csv(table_path)
    train = pick_devices(table, train_devices.split(","))
    validation = pick_devices(table, validation_devices.split(","))
    if device not in table.devices:
        raise ConfigError(
            f"--device {device!r} is not a column of {table_path}; its devices: "
            f"{', '.join(table.devices)}"
        )
    if device in train:
        raise ConfigError(
            f"--device {device} is one of --train-devices; few-shot prediction is for a "
            "device the predictor has not been trained on"
        )
    settings = FewShotSettings(samples=samples, seed=seed, iterations=iterations)
    folder = (cache or _default_cache()) / cache_key(table, train + validation, settings)
    cached = (folder / "predictor.json").exists()
    if cached:
        predictor = FewShotLatencyPredictor.load(folder)
    else:
        predictor = FewShotLatencyPredictor.create(table, train, settings)
        console = Console(stderr=True)
        with _progress(console, "meta-train") as progress:
            task = progress.add_task("meta-train", total=iterations, status="")
            predictor.meta_train(
                table,
                validation,
                on_iteration=lambda done, _: progress.update(task, completed=done),
            )
        predictor.save(folder)
    result = predictor.evaluate(table, device)
    result |= {
        "train_devices": train,
        "validation_devices": validation,
        "cached": cached,
        "predictor": display_path(folder),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"{device}: adapted from {samples} networks, on its {result['networks']} others "
        f"Spearman {result['spearman']:.3f}, Kendall {result['kendall']:.3f} "
        f"({'cached predictor' if cached else 'meta-trained'} in {display_path(folder)})"
    )
