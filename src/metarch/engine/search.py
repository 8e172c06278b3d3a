"""Search a trained H-Meta-NAS supernet for a device and budget: fitness, budgets, results.

The fitness of a sub-network is its mean accuracy after few-shot adaptation on a fixed set
of tasks from the run's *validation* classes (never test classes, never test queries).
Budgets are a latency on a device by a latency model (a layer table of the device, profiled
here for local devices and cached, or brought from elsewhere; or exact lookup in a table of
whole networks measured on real devices, HELP's CSV form, for the NAS-Bench-201 space),
parameters and FLOPs. The
result keeps the whole Pareto front; for a local device the chosen network is measured end
to end and its measured latency reported next to the predicted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metarch.data.episodes import EpisodeBatch, EpisodeSampler
from metarch.data.resolve import load_pool
from metarch.engine.evaluate import TrainedModel
from metarch.errors import ConfigError
from metarch.hardware.devices import LOCAL_DEVICES, LocalDevice, Measurement, create_device
from metarch.hardware.lut import LayerLatencyTable, profile_layers
from metarch.hardware.onnx import EXPORT_REVISION
from metarch.hardware.predictors import DeviceTableModel, LatencyModel, LayerTableModel
from metarch.hardware.tables import DeviceLatencyTable
from metarch.models.cost import count_parameters, flops_per_image
from metarch.nas.methods.hmetanas import HMetaNAS
from metarch.nas.search import (
    SAMPLERS,
    Constraint,
    SearchResult,
    check_budgets,
    run_search,
)
from metarch.nas.spaces.base import SearchSpace
from metarch.utils.io import atomic_write_text, display_path

__all__ = [
    "Budget",
    "DeviceLatency",
    "device_latency",
    "search_trained",
    "supernet_learner",
    "validation_tasks",
    "write_search",
]


@dataclass(frozen=True)
class Budget:
    """Limits a sub-network must meet (``None``: no limit).

    Attributes:
        latency_ms: Milliseconds on the device, by its latency model.
        parameters: Trainable parameters.
        flops: FLOPs per image.
    """

    latency_ms: float | None = None
    parameters: float | None = None
    flops: float | None = None


@dataclass
class DeviceLatency:
    """A device's latency model for a space, and the device itself where it is local.

    Attributes:
        name: The device as the user named it.
        model: Predicts milliseconds of the space's networks.
        device: The local device (to measure the chosen network), or None.
        table: Where the layer table (or whole-network table) was read from.
        proxy: Why the latencies are only a proxy (a whole-network table measured on
            another macro size than the space's), or None where they are the network's.
    """

    name: str
    model: LatencyModel
    device: LocalDevice | None
    table: str
    proxy: str | None = None

    def measure(self, network: torch.nn.Module, input_shape: tuple[int, ...]) -> float | None:
        """Measured milliseconds of ``network`` on the device (None if it is not local)."""
        if self.device is None:
            return None
        how = Measurement(warmup=5, repeats=20, rounds=3)
        return self.device.measure(network, input_shape, how).median_ms


def supernet_learner(trained: TrainedModel) -> HMetaNAS:
    """The run's H-Meta-NAS learner.

    Raises:
        ConfigError: For a run of another learner.
    """
    if not isinstance(trained.learner, HMetaNAS):
        raise ConfigError(
            f"the run trained method {trained.config.method.name!r}; searching sub-networks "
            "needs an H-Meta-NAS run (method: hmetanas, model: elastic-conv-supernet or "
            "nasbench201-supernet)"
        )
    return trained.learner


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "metarch" / "layer-tables"


def device_latency(
    space: SearchSpace[Any],
    device: str,
    *,
    table: Path | None = None,
    calibration: int = 5,
    seed: int = 0,
    cache: Path | None = None,
    on_layer: Callable[[int, int, str], None] | None = None,
    proxy_table: bool = False,
) -> DeviceLatency:
    """The latency model of ``device`` for ``space``.

    With ``table``: that layer table (profiled on the device, elsewhere), as it is; or, for
    a ``.csv`` table of whole networks measured on devices (HELP's form), exact lookup in
    the column ``device``. Else ``device`` must be a local device: its table is profiled
    once and cached (under ``~/.cache/metarch/layer-tables``), then calibrated on
    ``calibration`` random networks measured end to end.

    Args:
        space: The space whose networks it predicts.
        device: A local device, or a device of ``table``.
        table: A layer table (JSON) or a whole-network table (``.csv``) of the device.
        calibration: Networks measured end to end to calibrate a local layer table.
        seed: Draws the calibration networks.
        cache: Where local layer tables are cached (default: the user's cache).
        on_layer: Called with ``(done, total, layer)`` while profiling layers.
        proxy_table: Accept a whole-network table measured on another macro size than
            the space's (cells are then ranked by the table's networks, which are not
            the ones deployed: :attr:`DeviceLatency.proxy` says so).

    Raises:
        ConfigError: An unknown device, or a table of another space (or, without
            ``proxy_table``, of another macro size).
    """
    if table is not None and table.suffix.lower() == ".csv":
        return _whole_network_table(space, device, table, proxy_table)
    if table is not None:
        loaded = LayerLatencyTable.load(table)
        model = LayerTableModel(space, table=loaded)
        local = None
        if device in LOCAL_DEVICES:
            local = create_device(device, **loaded.device.get("settings", {}))
        return DeviceLatency(device, model, local, display_path(table))
    if device not in LOCAL_DEVICES:
        raise ConfigError(
            f"--device {device!r} is not a local device ({', '.join(LOCAL_DEVICES)}); for a "
            "device elsewhere, profile it there (metarch hardware profile --space "
            f"{space.registered_name} ...) and pass the file with --table"
        )
    local = create_device(device)
    local.check_available()
    how = Measurement(warmup=5, repeats=10, rounds=3)
    key = json.dumps(
        [
            space.registered_name,
            space.settings(),
            local.describe(),
            local.fingerprint()["cpu"],
            EXPORT_REVISION,
        ],
        sort_keys=True,
    )
    path = (cache or _cache_root()) / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        loaded = LayerLatencyTable.load(path)
        if not loaded.complete:
            loaded = profile_layers(space, local, path, how=how, on_layer=on_layer)
    else:
        loaded = profile_layers(space, local, path, how=how, on_layer=on_layer)
    model = LayerTableModel(space, table=loaded)
    if calibration:
        # The extremes and random networks between: the calibration spans the space, so a
        # budget near the smallest network is judged by a fit that has seen it.
        rng = random.Random(seed)
        extremes = []
        for end in (space.smallest, space.largest):
            with contextlib.suppress(NotImplementedError):  # a space without extremes
                extremes.append(end())
        networks = extremes + [space.sample(rng) for _ in range(max(0, calibration - 2))]
        timings = local.measure_many([(space.build(a), space.input_shape) for a in networks], how)
        model.fit(networks, [t.median_ms for t in timings])
    return DeviceLatency(device, model, local, display_path(path))


def _whole_network_table(
    space: SearchSpace[Any], device: str, path: Path, proxy_table: bool
) -> DeviceLatency:
    """Exact lookup in a table of whole networks measured on devices (HELP's CSV)."""
    measured = DeviceLatencyTable.from_csv(path)
    if device not in measured.devices:
        raise ConfigError(
            f"--device {device!r} is not a column of {display_path(path)}; its devices: "
            f"{', '.join(measured.devices)}"
        )
    example = space.encode(space.sample(random.Random(0)))
    if example not in measured:
        raise ConfigError(
            f"{display_path(path)} holds networks of another space than this run's "
            f"{space.registered_name} (no row for {example}; its rows look like "
            f"{next(iter(measured))})"
        )
    proxy = None
    macro = getattr(space, "benchmark_macro", None)
    if callable(macro) and not macro():
        proxy = (
            f"{display_path(path)} measured the benchmark's macro network "
            f"({space.registered_name} {space.settings()} differs): its latencies rank this "
            "run's cells, they are not the latencies of its networks"
        )
        if not proxy_table:
            raise ConfigError(
                f"{proxy}. Train the supernet at the benchmark's macro size (channels 16, "
                "cells_per_stage 5, 32x32 images) for exact latencies, or pass "
                "--proxy-table to rank by the table anyway"
            )
    model = DeviceTableModel(space, table=measured, device=device)
    local = create_device(device) if device in LOCAL_DEVICES else None
    return DeviceLatency(device, model, local, display_path(path), proxy)


def validation_tasks(
    trained: TrainedModel,
    data_root: Path,
    *,
    tasks: int,
    seed: int,
    pool_spec: str | None = None,
    within_group: bool = False,
) -> EpisodeBatch:
    """``tasks`` fixed episodes of the run's validation classes (its ways, shots, queries).

    ``within_group`` draws every episode's classes from one group (alphabet), so that a
    search for within-alphabet tasks is scored on tasks like them.

    Raises:
        ConfigError: The run has no validation set and none is given.
    """
    spec = pool_spec or trained.config.data.val_set
    if spec is None:
        raise ConfigError(
            "the run has no validation set (data.val_set) to score sub-networks on; pass "
            "--val-set with held-out training classes (never the test classes)"
        )
    episodes = trained.config.episodes
    pool = load_pool(spec, data_root, image_size=trained.config.data.image_size)
    sampler = EpisodeSampler(
        pool,
        episodes.ways,
        episodes.shots,
        max(1, episodes.queries),
        seed=seed,
        normalize=trained.inputs.normalization,
        within_group=within_group,
    )
    return sampler.tasks(list(range(tasks)))


def _cached(space: SearchSpace[Any], cost: Callable[[Any], float]) -> Callable[[Any], float]:
    values: dict[str, float] = {}

    def cached(architecture: Any) -> float:
        key = space.encode(architecture)
        if key not in values:
            values[key] = float(cost(architecture))
        return values[key]

    return cached


def budget_constraints(
    space: SearchSpace[Any],
    budget: Budget,
    latency: DeviceLatency | None,
    num_classes: int,
) -> list[Constraint]:
    """The budget as constraints (latency first: the front is sorted by it)."""
    constraints = []
    if latency is not None:
        limit = budget.latency_ms if budget.latency_ms is not None else float("inf")
        constraints.append(Constraint("latency_ms", _cached(space, latency.model.predict), limit))
    if budget.parameters is not None:
        constraints.append(
            Constraint(
                "parameters",
                _cached(space, lambda a: count_parameters(space.build(a, num_classes=num_classes))),
                budget.parameters,
            )
        )
    if budget.flops is not None:
        constraints.append(
            Constraint(
                "flops",
                _cached(space, lambda a: flops_per_image(space.build(a), space.input_shape)),
                budget.flops,
            )
        )
    return constraints


def search_trained(
    trained: TrainedModel,
    tasks: EpisodeBatch,
    budget: Budget,
    latency: DeviceLatency | None,
    *,
    sampler: str = "evolution",
    evaluations: int = 64,
    population: int = 16,
    seed: int = 0,
    on_evaluated: Callable[[int, int], None] | None = None,
    seconds: float | None = None,
) -> SearchResult:
    """Search the run's supernet for the fittest sub-network within ``budget``.

    ``seconds``, if given, stops evaluating new sub-networks after that much time.

    Raises:
        SearchError: A budget even the smallest sub-network misses (naming its cost).
    """
    learner = supernet_learner(trained)
    space = learner.space
    constraints = budget_constraints(space, budget, latency, trained.config.episodes.ways)
    check_budgets(space, constraints, space.smallest())
    options: dict[str, Any] = {"population": population} if sampler == "evolution" else {}
    search = SAMPLERS.get(sampler)(space, constraints, seed, **options)
    chosen = learner.architecture

    def fitness(architecture: Any) -> float:
        learner.use_architecture(architecture)
        return float(learner.evaluate(tasks).double().mean())

    try:
        return run_search(
            search,
            fitness,
            evaluations=evaluations,
            on_evaluated=None
            if on_evaluated is None
            else lambda _, n: on_evaluated(n, evaluations),
            seconds=seconds,
        )
    finally:
        learner.use_architecture(chosen)


def write_search(out: Path, result: SearchResult, record: dict[str, Any]) -> None:
    """Write ``front.json`` (record, best, front, every candidate) and ``architecture.txt``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "front.json", json.dumps(record | result.to_json(), indent=1) + "\n")
    atomic_write_text(out / "architecture.txt", result.best.text + "\n")
