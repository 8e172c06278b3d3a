"""``metarch search`` and ``metarch adapt``: an H-Meta-NAS run's sub-network per device and budget.

``search`` runs the evolutionary search (fitness: accuracy after adaptation on validation
tasks) and writes the Pareto front and the chosen sub-network. ``adapt`` does what a user
with a new task and a device needs in seconds: picks the sub-network for the budget (from
a search's front, or by a short search), adapts it to the support folder, exports it to
ONNX (checked in ONNX Runtime) and reports the time spent per stage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console

from metarch.cli.export import _Normalised
from metarch.engine.adapt import load_support_folder
from metarch.engine.evaluate import TrainedModel, load_trained_learner
from metarch.engine.search import (
    Budget,
    DeviceLatency,
    budget_constraints,
    device_latency,
    search_trained,
    supernet_learner,
    validation_tasks,
    write_search,
)
from metarch.errors import ConfigError
from metarch.hardware.onnx import export_onnx, max_abs_difference
from metarch.models.cost import count_parameters, flops_per_image
from metarch.nas.search import SearchResult, check_budgets
from metarch.utils.io import atomic_write_bytes, atomic_write_text, display_path

__all__ = ["adapt", "search"]

RUN_OPTION = typer.Option(..., "--run", help="Run directory of an H-Meta-NAS 'metarch train'.")
DEVICE_OPTION = typer.Option(
    ..., "--device", help="Local device (metarch hardware devices), or a name for --table."
)
TABLE_OPTION = typer.Option(
    None,
    "--table",
    help="Layer latency table of the device (metarch hardware profile), or a CSV of whole "
    "networks measured on devices (HELP's form, NAS-Bench-201 runs; --device names its column).",
)
PROXY_TABLE_OPTION = typer.Option(
    False,
    "--proxy-table",
    help="Rank by a whole-network CSV measured on another macro size than the run's.",
)
LATENCY_OPTION = typer.Option(None, "--latency-ms", help="Latency budget on the device (ms).")
PARAMS_OPTION = typer.Option(None, "--params", help="Most parameters.")
FLOPS_OPTION = typer.Option(None, "--flops", help="Most FLOPs per image.")
DATA_ROOT_OPTION = typer.Option(
    Path("data"), "--data-root", help="Where the run's validation classes are."
)

WITHIN_OPTION = typer.Option(
    False,
    "--within-alphabet",
    help="Score sub-networks on validation tasks whose classes share one alphabet (group), "
    "for tasks like Omniglot's within-alphabet ones.",
)


class _Stages:
    """Seconds spent per stage, shown as each one ends."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        with self.console.status(name):
            yield
        self.seconds[name] = round(time.perf_counter() - started, 3)
        self.console.print(f"{name}: {self.seconds[name]:.1f} s")


def _budget(latency_ms: float | None, params: float | None, flops: float | None) -> Budget:
    for flag, value in (("--latency-ms", latency_ms), ("--params", params), ("--flops", flops)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be positive, got {value:g}")
    return Budget(latency_ms=latency_ms, parameters=params, flops=flops)


def _latency(
    trained: TrainedModel, device: str, table: Path | None, proxy: bool, console: Console
) -> DeviceLatency:
    space = supernet_learner(trained).space
    done = {"layers": 0}

    def on_layer(count: int, total: int, key: str) -> None:
        if count - done["layers"] >= 50 or count == total:
            console.print(f"  profiled {count}/{total} layers")
            done["layers"] = count

    latency = device_latency(space, device, table=table, on_layer=on_layer, proxy_table=proxy)
    if latency.proxy:
        console.print(f"[yellow]proxy latencies:[/] {latency.proxy}")
    return latency


def _search_record(
    trained: TrainedModel, latency: DeviceLatency, budget: Budget, result: SearchResult
) -> dict[str, Any]:
    learner = supernet_learner(trained)
    space = learner.space
    network = space.build(result.best.architecture, num_classes=trained.config.episodes.ways)
    measured = latency.measure(network, space.input_shape)
    return {
        "run": str(trained.checkpoint.parent),
        "device": latency.name,
        "latency_table": latency.table,
        "latency_proxy": latency.proxy,
        "budget": {
            "latency_ms": budget.latency_ms,
            "parameters": budget.parameters,
            "flops": budget.flops,
        },
        "chosen": {
            "architecture": result.best.text,
            "validation_accuracy": result.best.fitness,
            "predicted_latency_ms": result.best.costs.get("latency_ms"),
            "measured_latency_ms": measured,
            "parameters": count_parameters(network),
            "flops": flops_per_image(space.build(result.best.architecture), space.input_shape),
        },
    }


def search(
    run: Path = RUN_OPTION,
    device: str = DEVICE_OPTION,
    latency_ms: float | None = LATENCY_OPTION,
    params: float | None = PARAMS_OPTION,
    flops: float | None = FLOPS_OPTION,
    out: Path = typer.Option(..., "--out", help="Folder for front.json and architecture.txt."),
    table: Path | None = TABLE_OPTION,
    proxy_table: bool = PROXY_TABLE_OPTION,
    data_root: Path = DATA_ROOT_OPTION,
    within_alphabet: bool = WITHIN_OPTION,
    tasks: int = typer.Option(20, "--tasks", min=1, help="Validation tasks per fitness."),
    evaluations: int = typer.Option(64, "--evaluations", min=1, help="Sub-networks evaluated."),
    population: int = typer.Option(16, "--population", min=2, help="Evolution's population."),
    sampler: str = typer.Option(
        "evolution", "--sampler", help="evolution (ours), nsga2 (Optuna's) or random."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the tasks and the search."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, last, or a sidecar."),
    as_json: bool = typer.Option(False, "--json", help="Print the chosen network as JSON."),
) -> None:
    """Search an H-Meta-NAS run's supernet for a device and budget; write the Pareto front.

    Fitness is accuracy after few-shot adaptation on --tasks tasks of the run's validation
    classes; every sub-network proposed meets the budget by the device's latency model.
    The chosen one is measured on the device (a local one) next to its prediction.
    """
    console = Console(stderr=True)
    stages = _Stages(console)
    budget = _budget(latency_ms, params, flops)
    with stages.stage("load run"):
        trained = load_trained_learner(run, checkpoint)
        supernet_learner(trained)
    with stages.stage("latency model"):
        latency = _latency(trained, device, table, proxy_table, console)
    with stages.stage("validation tasks"):
        episodes = validation_tasks(
            trained, data_root, tasks=tasks, seed=seed, within_group=within_alphabet
        )
    with stages.stage("search"):
        result = search_trained(
            trained,
            episodes,
            budget,
            latency,
            sampler=sampler,
            evaluations=evaluations,
            population=population,
            seed=seed,
        )
    with stages.stage("measure"):
        record = _search_record(trained, latency, budget, result)
    record["seconds"] = stages.seconds
    write_search(out, result, record)
    chosen = record["chosen"]
    if as_json:
        typer.echo(json.dumps(record))
        return
    measured = chosen["measured_latency_ms"]
    typer.echo(
        f"{chosen['architecture']}: validation accuracy {100 * chosen['validation_accuracy']:.1f} "
        f"%, {chosen['predicted_latency_ms']:.3f} ms predicted"
        + (f", {measured:.3f} ms measured" if measured is not None else "")
        + f" on {device}; front of {len(result.front)} of {len(result.candidates)} evaluated, "
        f"written to {display_path(out)}/front.json"
    )


def _from_front(trained: TrainedModel, front: Path, budget: Budget, latency: DeviceLatency) -> str:
    """The fittest network of a search's front within the budget (by this latency model)."""
    learner = supernet_learner(trained)
    space = learner.space
    try:
        record = json.loads((front / "front.json").read_text(encoding="utf-8"))
        candidates = record["front"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"--front {front}: not a 'metarch search' folder ({exc})") from None
    constraints = budget_constraints(space, budget, latency, trained.config.episodes.ways)
    fitting = [
        c for c in candidates if all(k.holds(space.decode(c["architecture"])) for k in constraints)
    ]
    if not fitting:
        check_budgets(space, constraints, space.smallest())
        raise ConfigError(
            f"no network of {front}/front.json meets the budget on {latency.name}; run "
            "metarch search for it, or adapt without --front"
        )
    best = max(fitting, key=lambda c: c["fitness"])
    return str(best["architecture"])


#: What adapting, exporting and measuring a chosen sub-network take (seconds), kept free
#: of the search when ``metarch adapt`` has a time limit.
_AFTER_SEARCH_SECONDS = 3.0


def _search_seconds(time_limit: float, started: float) -> float | None:
    """Time left for the search of a command started at ``started`` (``None``: no limit)."""
    if time_limit <= 0:
        return None
    spent = time.perf_counter() - started
    return max(0.0, time_limit - spent - _AFTER_SEARCH_SECONDS)


def adapt(
    run: Path = RUN_OPTION,
    device: str = DEVICE_OPTION,
    support: Path = typer.Option(..., "--support", help="One folder of images per class."),
    latency_ms: float | None = LATENCY_OPTION,
    params: float | None = PARAMS_OPTION,
    flops: float | None = FLOPS_OPTION,
    out: Path = typer.Option(Path("adapted"), "--out", help="Folder for model.onnx and more."),
    table: Path | None = TABLE_OPTION,
    proxy_table: bool = PROXY_TABLE_OPTION,
    front: Path | None = typer.Option(
        None, "--front", help="A 'metarch search' folder to pick from (no search then)."
    ),
    data_root: Path = DATA_ROOT_OPTION,
    within_alphabet: bool = WITHIN_OPTION,
    tasks: int = typer.Option(8, "--tasks", min=1, help="Validation tasks per fitness."),
    evaluations: int = typer.Option(24, "--evaluations", min=1, help="Sub-networks evaluated."),
    time_limit: float = typer.Option(
        25.0,
        "--time-limit",
        min=0.0,
        help="Seconds the whole command aims at: the search evaluates no new sub-network "
        "once only what adapting, exporting and measuring need (about 3 s) is left, and the "
        "best of those evaluated is chosen (0: no limit; the seed alone then decides).",
    ),
    shots: int | None = typer.Option(None, "--shots", help="Images per class to use."),
    seed: int = typer.Option(0, "--seed", help="Seeds the tasks and the search."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, last, or a sidecar."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Pick a sub-network for a device and budget, adapt it to a task, export it to ONNX.

    Writes model.onnx (images in [0, 1] in, logits out; normalisation and the task's batch
    statistics inside), architecture.txt and adapted.json (the choice, its predicted and
    measured latency, the ONNX check and the seconds per stage).
    """
    started = time.perf_counter()
    console = Console(stderr=True)
    stages = _Stages(console)
    budget = _budget(latency_ms, params, flops)
    with stages.stage("load run"):
        trained = load_trained_learner(run, checkpoint)
        learner = supernet_learner(trained)
        support_set = load_support_folder(support, trained, shots=shots)
    with stages.stage("latency model"):
        latency = _latency(trained, device, table, proxy_table, console)
    space = learner.space
    with stages.stage("choose sub-network"):
        evaluated = None
        if front is not None:
            chosen = _from_front(trained, front, budget, latency)
        else:
            episodes = validation_tasks(
                trained, data_root, tasks=tasks, seed=seed, within_group=within_alphabet
            )
            result = search_trained(
                trained,
                episodes,
                budget,
                latency,
                evaluations=evaluations,
                seed=seed,
                seconds=_search_seconds(time_limit, started),
            )
            chosen = result.best.text
            evaluated = len(result.candidates)
    architecture = space.decode(chosen)
    with stages.stage("adapt"):
        subnet = learner.adapted_subnet(support_set.images, support_set.labels, architecture)
    with stages.stage("export"):
        network: torch.nn.Module = subnet
        if trained.inputs.normalization is not None:
            network = _Normalised(subnet, trained.inputs.normalization).eval()
        model = export_onnx(network, trained.inputs.shape)
        x = torch.rand(4, *trained.inputs.shape, generator=torch.Generator().manual_seed(0))
        difference = max_abs_difference(network, model, x)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "model.onnx", model)
    with stages.stage("measure"):
        measured = latency.measure(
            space.build(architecture, num_classes=len(support_set.classes)), space.input_shape
        )
    record = {
        "run": display_path(run),
        "device": device,
        "architecture": chosen,
        "evaluated": evaluated,
        "predicted_latency_ms": latency.model.predict(architecture),
        "measured_latency_ms": measured,
        "latency_table": latency.table,
        "latency_proxy": latency.proxy,
        "parameters": count_parameters(subnet),
        "flops": flops_per_image(subnet, space.input_shape),
        "classes": list(support_set.classes),
        "support_images": len(support_set.labels),
        "onnx": display_path(out / "model.onnx"),
        "onnx_max_abs_difference": difference,
        "seconds": stages.seconds,
        "total_seconds": round(sum(stages.seconds.values()), 3),
    }
    atomic_write_text(out / "architecture.txt", chosen + "\n")
    atomic_write_text(out / "adapted.json", json.dumps(record, indent=1) + "\n")
    if as_json:
        typer.echo(json.dumps(record))
        return
    typer.echo(
        f"{chosen}: {record['predicted_latency_ms']:.3f} ms predicted"
        + (f", {measured:.3f} ms measured" if measured is not None else "")
        + f" on {device}; adapted to {len(support_set.classes)} classes and written to "
        f"{record['onnx']} in {record['total_seconds']:.1f} s"
    )
