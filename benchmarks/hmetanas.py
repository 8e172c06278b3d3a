"""H-Meta-NAS: sub-networks of a trained supernet per device and latency budget, on test classes.

For a trained H-Meta-NAS run and each local device: the manual baseline network (Conv-4 of
the same meta-learner's config) is measured on the device; for each budget (a fraction of
the baseline's latency) the supernet is searched (fitness: accuracy after adaptation on
validation tasks of the run's validation classes) and the chosen sub-network is tested on
held-out classes (95% CI) and measured on the device next to its predicted latency. With
``--random``, random search with the same number of evaluations at each budget, side by
side. The largest and smallest sub-networks are tested too, as reference points.

Usage::

    python benchmarks/hmetanas.py --run RUN --data-root ../shared/data
        [--devices torch-cpu onnxruntime-cpu] [--budgets 0.4 0.7 1.0] [--episodes 600]
        [--evaluations 32] [--tasks 10] [--random] [--publish | --out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import add_output_arguments, command_line, machine, output_path, write_json

#: The manual baselines of the natural-images issue, by the task H-Meta-NAS runs train:
#: the Conv-4 network and meta-learner they were trained with.
BASELINES = {
    "omniglot-20w1s": {"config": "omniglot-fomaml-20w1s", "model": "conv4-strided"},
}


def baseline_network(name: str, ways: int, shape: tuple[int, int, int]) -> torch.nn.Module:
    from metarch.models import FewShotClassifier, create_model

    backbone = create_model(BASELINES[name]["model"], in_channels=shape[0])
    return FewShotClassifier(backbone, ways, shape)


def test_accuracy(trained: Any, architecture: Any, args: argparse.Namespace) -> dict[str, float]:
    from metarch.engine.evaluate import evaluate_episodes

    learner = trained.learner
    learner.use_architecture(architecture)
    episodes = trained.config.episodes
    result = evaluate_episodes(
        learner,
        args.test_pool,
        Path(args.data_root),
        image_size=trained.config.data.image_size,
        ways=episodes.ways,
        shots=episodes.shots,
        queries=5 if episodes.ways > 5 else 15,
        episodes=args.episodes,
        seed=0,
        inputs=trained.inputs,
    )
    return {"accuracy": result.accuracy, "ci95": result.ci95, "episodes": result.episodes}


def main() -> None:
    from metarch.engine.evaluate import load_trained_learner
    from metarch.engine.search import (
        Budget,
        device_latency,
        search_trained,
        supernet_learner,
        validation_tasks,
    )
    from metarch.hardware.devices import Measurement
    from metarch.nas.search import SearchError

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--task", default="omniglot-20w1s", choices=BASELINES)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--test-pool", default="background:test")
    parser.add_argument("--devices", nargs="+", default=["torch-cpu", "onnxruntime-cpu"])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.7, 1.0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--evaluations", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random", action="store_true", help="also random search")
    add_output_arguments(parser, "hmetanas")
    args = parser.parse_args()

    torch.set_num_threads(1)
    trained = load_trained_learner(Path(args.run))
    learner = supernet_learner(trained)
    space = learner.space
    shape = trained.inputs.shape
    ways = trained.config.episodes.ways
    tasks = validation_tasks(trained, Path(args.data_root), tasks=args.tasks, seed=args.seed)
    how = Measurement(warmup=5, repeats=20, rounds=5)

    extremes = {"largest": space.largest(), "smallest": space.smallest()}
    references: dict[str, dict[str, Any]] = {}
    for name, architecture in extremes.items():
        references[name] = {"architecture": space.encode(architecture)} | test_accuracy(
            trained, architecture, args
        )
        print(name, references[name], flush=True)

    devices: dict[str, Any] = {}
    for device_name in args.devices:
        latency = device_latency(space, device_name, seed=args.seed)
        assert latency.device is not None
        baseline_ms = latency.device.measure(baseline_network(args.task, ways, shape), shape, how)
        reference_ms = {
            name: latency.device.measure(
                space.build(architecture, num_classes=ways), shape, how
            ).median_ms
            for name, architecture in extremes.items()
        }
        rows = []
        for fraction in args.budgets:
            budget = Budget(latency_ms=fraction * baseline_ms.median_ms)
            for sampler in ["evolution", "random"] if args.random else ["evolution"]:
                started = time.perf_counter()
                try:
                    result = search_trained(
                        trained,
                        tasks,
                        budget,
                        latency,
                        sampler=sampler,
                        evaluations=args.evaluations,
                        seed=args.seed,
                    )
                except SearchError as exc:  # a budget below the smallest sub-network
                    rows.append({"fraction": fraction, "budget_ms": budget.latency_ms,
                                 "sampler": sampler, "unreachable": str(exc)})  # fmt: skip
                    print(device_name, rows[-1], flush=True)
                    continue
                search_seconds = time.perf_counter() - started
                best = result.best
                network = space.build(best.architecture, num_classes=ways)
                row = {
                    "fraction": fraction,
                    "budget_ms": budget.latency_ms,
                    "sampler": sampler,
                    "architecture": best.text,
                    "validation_accuracy": 100.0 * best.fitness,
                    "predicted_ms": best.costs["latency_ms"],
                    "measured_ms": latency.device.measure(network, shape, how).median_ms,
                    "search_seconds": search_seconds,
                    "front": [c.to_json() for c in result.front],
                } | test_accuracy(trained, best.architecture, args)
                rows.append(row)
                print(device_name, {k: v for k, v in row.items() if k != "front"}, flush=True)
        devices[device_name] = {
            "baseline_ms": baseline_ms.median_ms,
            "references_ms": reference_ms,
            "latency_table": latency.table,
            "rows": rows,
        }
    report = {
        "benchmark": "hmetanas",
        "machine": machine(),
        "command": command_line(),
        "run": args.run,
        "task": args.task,
        "baseline": BASELINES[args.task],
        "test_pool": args.test_pool,
        "episodes": args.episodes,
        "search": {"evaluations": args.evaluations, "tasks": args.tasks, "seed": args.seed},
        "steps": trained.step,
        "references": references,
        "devices": devices,
    }
    out = output_path(args, "hmetanas")
    write_json(report, out)
    plot_fronts(report, out.with_name("hmetanas_fronts.png"))
    print(f"wrote {out}")


def plot_fronts(report: dict[str, Any], out: Path) -> None:
    """Test accuracy against measured latency per device: the chosen sub-networks, the
    largest and smallest ones, and the manual baseline's latency."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metarch.utils.io import atomic_write_bytes

    devices = report["devices"]
    figure, axes = plt.subplots(1, len(devices), figsize=(5 * len(devices), 4), squeeze=False)
    for axis, (device, result) in zip(axes[0], devices.items(), strict=True):
        for sampler, marker in (("evolution", "o"), ("random", "x")):
            rows = [r for r in result["rows"] if r["sampler"] == sampler and "accuracy" in r]
            if rows:
                axis.errorbar(
                    [r["measured_ms"] for r in rows],
                    [r["accuracy"] for r in rows],
                    yerr=[r["ci95"] for r in rows],
                    fmt=marker,
                    label=f"H-Meta-NAS ({sampler} search)",
                )
        for name, ms in result["references_ms"].items():
            reference = report["references"][name]
            axis.errorbar(
                [ms], [reference["accuracy"]], yerr=[reference["ci95"]], fmt="s", label=name
            )
        axis.axvline(result["baseline_ms"], color="grey", linestyle="--", label="Conv-4 latency")
        axis.set_title(device)
        axis.set_xlabel("measured latency (ms, batch 1)")
        axis.set_ylabel("test accuracy %")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(out, buffer.getvalue())


if __name__ == "__main__":
    main()
