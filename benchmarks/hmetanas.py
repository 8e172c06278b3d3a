"""H-Meta-NAS: sub-networks of a trained supernet per device and latency budget, on test classes.

For a trained H-Meta-NAS run and each local device: the manual baseline network (the Conv-4
of the same meta-learner's config) is measured on the device; for each budget (a fraction of
the baseline's latency) the supernet is searched (fitness: accuracy after adaptation on
validation tasks of the run's validation classes, never test classes) and the chosen
sub-network is tested on held-out classes (95% CI, the same seeded episodes as the published
baselines) and measured on the device next to its predicted latency. With ``--random``,
random search with the same number of evaluations at each budget, side by side. The largest
and smallest sub-networks are tested too, as reference points. ``--ablation`` searches the
first device's middle budget with several population sizes and evaluation counts (the pool
size and the number of generations).

Usage::

    python benchmarks/hmetanas.py --run RUN --task omniglot-20w1s --data-root ../shared/data
        [--devices torch-cpu onnxruntime-cpu openvino-cpu] [--budgets 0.4 0.7 1.0]
        [--episodes 600] [--shots N] [--evaluations 32] [--tasks 10] [--random] [--ablation]
        [--publish | --out FILE]

``--publish`` writes ``benchmarks/results/hmetanas-TASK.json`` (``--publish NAME``:
``NAME.json``) and its figure ``..._fronts.png``; ``benchmarks/tables.py`` renders it as the
section of the same name. With ``--table`` (a whole-network CSV of real devices, HELP's) and
``--table-devices``, the searches are repeated per device of the table, budgets being
fractions of the largest network's latency there (NAS-Bench-201 runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import (
    add_output_arguments,
    command_line,
    figure_axes,
    machine,
    output_path,
    repo_relative,
    save_figure,
    write_json,
)


@dataclass(frozen=True)
class BaselineTask:
    """A task H-Meta-NAS runs are benchmarked on, and its manual baseline.

    Attributes:
        config: The baseline's config (the same meta-learner as the H-Meta-NAS run).
        model: The baseline's backbone and its options (for its latency on each device).
        results: The published JSON holding the baseline's test accuracy.
        label: The baseline's row in ``results`` (its ``task`` field).
        test_pool: Held-out classes, as the baseline was tested on.
        queries: Query images per class of a test episode, as the baseline's.
        options: The baseline backbone's options.
        within_alphabet: Test episodes draw all classes from one alphabet (Omniglot).
    """

    config: str
    model: str
    results: str
    label: str
    test_pool: str
    queries: int
    options: dict[str, Any] = field(default_factory=dict)
    within_alphabet: bool = False


#: The manual baselines of the natural-images issue, by the task H-Meta-NAS runs train.
TASKS = {
    "omniglot-20w1s": BaselineTask(
        "omniglot-fomaml-20w1s", "conv4-strided", "omniglot.json", "20-way 1-shot",
        "background:test", 5,
    ),
    "omniglot-within-20w1s": BaselineTask(
        "omniglot-fomaml-20w1s", "conv4-strided", "omniglot.json",
        "20-way 1-shot within-alphabet", "background:test", 5, within_alphabet=True,
    ),
    # Trained with the inner rate and meta-batch of the supernets of this task.
    "tiny-5w1s": BaselineTask(
        "tiny-imagenet-fs-fomaml-conv4-inner0.1-5w1s", "conv4", "tiny_imagenet_fs.json",
        "5-way 1-shot",
        "tiny_imagenet_fs_background:test", 15, {"hidden": 32},
    ),
    "tiny-5w5s": BaselineTask(
        "tiny-imagenet-fs-fomaml-conv4-5w5s", "conv4", "tiny_imagenet_fs.json", "5-way 5-shot",
        "tiny_imagenet_fs_background:test", 15, {"hidden": 32},
    ),
}  # fmt: skip


def with_shots(trained: Any, shots: int | None) -> Any:
    """The trained run, searched and tested at ``shots`` (``None``: its own)."""
    if shots is None:
        return trained
    episodes = trained.config.episodes.model_copy(update={"shots": shots})
    return replace(trained, config=trained.config.model_copy(update={"episodes": episodes}))


def baseline_spec(task: BaselineTask) -> dict[str, Any]:
    """What a report records of its manual baseline (the tables find its accuracy by it)."""
    return {
        "config": task.config,
        "model": task.model,
        "options": task.options,
        "results": task.results,
        "label": task.label,
    }


def baseline_network(task: BaselineTask, ways: int, shape: tuple[int, int, int]) -> torch.nn.Module:
    from metarch.models import FewShotClassifier, create_model

    backbone = create_model(task.model, in_channels=shape[0], **task.options)
    return FewShotClassifier(backbone, ways, shape)


class Tester:
    """Test accuracy of sub-networks on the task's held-out classes, once per architecture."""

    def __init__(self, trained: Any, task: BaselineTask, args: argparse.Namespace) -> None:
        self.trained = trained
        self.task = task
        self.args = args
        self.results: dict[str, dict[str, float]] = {}

    def __call__(self, architecture: Any) -> dict[str, float]:
        from metarch.engine.evaluate import evaluate_episodes

        learner = self.trained.learner
        key = learner.space.encode(architecture)
        if key not in self.results:
            learner.use_architecture(architecture)
            episodes = self.trained.config.episodes
            started = time.perf_counter()
            result = evaluate_episodes(
                learner,
                self.task.test_pool,
                Path(self.args.data_root),
                image_size=self.trained.config.data.image_size,
                ways=episodes.ways,
                shots=episodes.shots,
                queries=self.task.queries,
                episodes=self.args.episodes,
                within_alphabet=self.task.within_alphabet,
                seed=0,
                inputs=self.trained.inputs,
            )
            self.results[key] = {
                "accuracy": result.accuracy,
                "ci95": result.ci95,
                "episodes": result.episodes,
                "adapt_seconds_per_task": (time.perf_counter() - started) / result.episodes,
            }
        return self.results[key]


def main() -> None:
    from metarch.engine.evaluate import load_trained_learner
    from metarch.engine.search import device_latency, supernet_learner, validation_tasks
    from metarch.hardware.devices import Measurement

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--task", default="omniglot-20w1s", choices=TASKS)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--devices", nargs="*", default=["torch-cpu", "onnxruntime-cpu"])
    parser.add_argument(
        "--table", help="a whole-network latency CSV of real devices (HELP's, NAS-Bench-201)"
    )
    parser.add_argument("--table-devices", nargs="*", default=[], help="columns of --table")
    parser.add_argument(
        "--proxy-table",
        action="store_true",
        help="rank by --table although it measured another macro size than the run's",
    )
    parser.add_argument(
        "--references",
        nargs="*",
        default=["largest", "smallest"],
        help="the space's networks tested as reference points",
    )
    parser.add_argument(
        "--reference-cell",
        action="append",
        default=[],
        metavar="NAME=ARCHITECTURE",
        help="another architecture to test and look up (e.g. MetaNAS's cell)",
    )
    parser.add_argument("--checkpoint", default="last", help="best, last or a sidecar")
    parser.add_argument("--rounds", type=int, default=10, help="--remeasure's rounds")
    parser.add_argument("--replot", metavar="JSON", help="only redraw a report's figure")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.7, 1.0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument(
        "--shots",
        type=int,
        help="search and test at this many shots instead of the run's (one supervised "
        "pre-trained supernet serves every shot count; its fine-tuning does not depend on it)",
    )
    parser.add_argument("--evaluations", type=int, default=32)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random", action="store_true", help="also random search")
    parser.add_argument(
        "--samplers",
        nargs="+",
        default=["evolution"],
        help="search samplers compared at every budget (evolution, nsga2, random)",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also search the first device's middle budget with each population size of "
        "--ablation-populations and each evaluation count of --ablation-evaluations",
    )
    parser.add_argument("--ablation-populations", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--ablation-evaluations", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument(
        "--remeasure",
        metavar="JSON",
        help="only re-time a report's local networks (baseline, references, choices) on a "
        "quiet machine, in interleaved rounds, and rewrite it (--run: the report's run)",
    )
    parser.add_argument(
        "--time-adapt",
        metavar="JSON",
        help="only time 'metarch adapt' end to end at each local device's middle budget of a "
        "report, and rewrite it (--run: the report's run)",
    )
    add_output_arguments(parser, "hmetanas-TASK")
    args = parser.parse_args()
    if args.remeasure:
        remeasure(Path(args.remeasure), args)
        return
    if args.time_adapt:
        time_adapt(Path(args.time_adapt), args)
        return
    if args.replot:
        import json

        report = json.loads(Path(args.replot).read_text())
        plot_fronts(report, Path(args.replot).with_name(report["figure"]))
        return
    if args.random and "random" not in args.samplers:
        args.samplers.append("random")
    if args.publish == "hmetanas-TASK":
        args.publish = f"hmetanas-{args.task}"

    torch.set_num_threads(1)
    task = TASKS[args.task]
    trained = load_trained_learner(Path(args.run), args.checkpoint)
    trained_shots = trained.config.episodes.shots
    trained = with_shots(trained, args.shots)
    learner = supernet_learner(trained)
    space = learner.space
    shape = trained.inputs.shape
    ways = trained.config.episodes.ways
    tasks = validation_tasks(
        trained,
        Path(args.data_root),
        tasks=args.tasks,
        seed=args.seed,
        within_group=task.within_alphabet,
    )
    how = Measurement(warmup=5, repeats=20, rounds=5)
    test = Tester(trained, task, args)

    extremes = {name: getattr(space, name)() for name in args.references}
    extremes |= {
        name: space.decode(text)
        for name, _, text in (item.partition("=") for item in args.reference_cell)
    }
    references: dict[str, dict[str, Any]] = {}
    for name, architecture in extremes.items():
        references[name] = {"architecture": space.encode(architecture)} | test(architecture)
        print(name, references[name], flush=True)

    devices: dict[str, Any] = {}
    ablation: dict[str, Any] | None = None
    for device_name in args.devices:
        started = time.perf_counter()
        latency = device_latency(space, device_name, seed=args.seed)
        table_seconds = time.perf_counter() - started
        assert latency.device is not None
        baseline = latency.device.measure(baseline_network(task, ways, shape), shape, how)
        reference_ms = {
            name: latency.device.measure(
                space.build(architecture, num_classes=ways), shape, how
            ).median_ms
            for name, architecture in extremes.items()
        }
        rows = []
        for fraction in args.budgets:
            for sampler in args.samplers:
                row = search_row(
                    trained, tasks, latency, shape, how, test, args,
                    fraction=fraction, baseline_ms=baseline.median_ms, sampler=sampler,
                    population=args.population, evaluations=args.evaluations,
                )  # fmt: skip
                rows.append(row)
                print(device_name, {k: v for k, v in row.items() if k != "front"}, flush=True)
        devices[device_name] = {
            "baseline_ms": baseline.median_ms,
            "references_ms": reference_ms,
            "latency_table": None if latency.table is None else Path(latency.table).name,
            "table_seconds": table_seconds,
            "rows": rows,
        }
        if args.ablation and ablation is None:
            fraction = sorted(args.budgets)[len(args.budgets) // 2]
            ablation = {"device": device_name, "fraction": fraction, "rows": []}
            for population in args.ablation_populations:
                for evaluations in args.ablation_evaluations:
                    row = search_row(
                        trained, tasks, latency, shape, how, test, args,
                        fraction=fraction, baseline_ms=baseline.median_ms,
                        sampler="evolution", population=population, evaluations=evaluations,
                    )  # fmt: skip
                    row = {"population": population, "evaluations": evaluations} | row
                    row.pop("front", None)
                    ablation["rows"].append(row)
                    print("ablation", row, flush=True)
    adapt_runs = adapt_commands(trained, task, args, devices)
    report = {
        "benchmark": "hmetanas",
        "machine": machine(),
        "command": command_line(),
        "run": repo_relative(args.run),
        "task": args.task,
        "baseline": baseline_spec(task),
        "test_pool": task.test_pool,
        "episodes": args.episodes,
        "shots": trained.config.episodes.shots,
        "trained_shots": trained_shots,
        "search": {
            "evaluations": args.evaluations,
            "population": args.population,
            "tasks": args.tasks,
            "within_alphabet": task.within_alphabet,
            "seed": args.seed,
        },
        "steps": trained.step,
        "train_seconds": trained_seconds(Path(args.run)),
        "references": references,
        "devices": devices,
        "adapt_command": adapt_runs,
    }
    if ablation is not None:
        report["ablation"] = ablation
    if args.table:
        report["table"] = repo_relative(args.table)
        report["table_devices"] = table_devices(
            trained, tasks, test, args, extremes, shape=shape, how=how
        )
    out = output_path(args, f"hmetanas-{args.task}")
    report["figure"] = f"{out.stem}_fronts.png"
    write_json(report, out)
    plot_fronts(report, out.with_name(report["figure"]))
    print(f"wrote {out}")


def adapt_commands(
    trained: Any, task: BaselineTask, args: argparse.Namespace, devices: dict[str, Any]
) -> list[dict[str, Any]]:
    """``metarch adapt`` timed on each local device at its middle budget.

    A middle budget that the device's freshly profiled table puts below its smallest
    network (a profile differs from the search's by a few per cent) moves up to the next
    budget; the record says which budgets were refused.
    """
    records = []
    for name, device in devices.items():
        fractions = sorted({row["fraction"] for row in device["rows"]})
        # The budget the searches had (a re-timing moves baseline_ms, not the budgets).
        baseline_ms = device.get("baseline_ms_at_search", device["baseline_ms"])
        refused: list[float] = []
        for fraction in fractions[len(fractions) // 2 :]:
            record = adapt_command(trained, task, args, name, fraction * baseline_ms)
            if "no network of the" not in record.get("error", ""):
                break
            refused.append(fraction)
        records.append({"fraction": fraction, "refused_fractions": refused} | record)
        print("metarch adapt", records[-1], flush=True)
    return records


def time_adapt(path: Path, args: argparse.Namespace) -> None:
    """Add ``metarch adapt``'s end-to-end timings to a report; rewrite it."""
    import json

    from metarch.engine.evaluate import load_trained_learner

    report = json.loads(path.read_text())
    trained = load_trained_learner(Path(args.run), args.checkpoint)
    trained = with_shots(trained, args.shots)
    report["adapt_command"] = adapt_commands(
        trained, TASKS[report["task"]], args, report["devices"]
    )
    write_json(report, path)
    print(f"wrote {path}")


def adapt_command(
    trained: Any, task: BaselineTask, args: argparse.Namespace, device: str, budget_ms: float
) -> dict[str, Any]:
    """``metarch adapt`` run as a user runs it, timed: a support folder of one test task
    (images as decoded, written as PNGs), the device's cached latency model, the CLI's
    default search; its own seconds per stage and the wall time with Python's start-up."""
    import json
    import subprocess
    import tempfile

    from PIL import Image

    from metarch.data.episodes import EpisodeSampler
    from metarch.data.resolve import load_pool

    episodes = trained.config.episodes
    image_size = trained.config.data.image_size
    pool = load_pool(task.test_pool, Path(args.data_root), image_size=image_size)
    sampler = EpisodeSampler(
        pool, episodes.ways, episodes.shots, 1, seed=args.seed, within_group=task.within_alphabet
    )
    batch = sampler.tasks([0])
    with tempfile.TemporaryDirectory() as folder:
        support = Path(folder) / "support"
        labels = batch.support_labels[0].tolist()
        for position, image_id in enumerate(batch.support_image_ids[0].tolist()):
            image = pool.dataset.images[image_id]
            pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
            (support / f"class{labels[position]:02d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(support / f"class{labels[position]:02d}/{position}.png")
        command = [
            sys.executable, "-m", "metarch", "adapt", "--run", str(args.run),
            "--checkpoint", args.checkpoint, "--device", device,
            "--latency-ms", f"{budget_ms:.6f}", "--support", str(support),
            "--data-root", str(args.data_root), "--out", str(Path(folder) / "adapted"), "--json",
        ] + (["--within-alphabet"] if task.within_alphabet else [])  # fmt: skip
        # A fresh cache: the first call profiles the device's layer table, as a user's first
        # call on a new device does; the second finds it cached, as every later call does.
        environment = os.environ | {"XDG_CACHE_HOME": str(Path(folder) / "cache")}
        calls = []
        for _ in range(2):
            started = time.perf_counter()
            done = subprocess.run(
                command, capture_output=True, text=True, check=False, env=environment
            )
            wall_seconds = time.perf_counter() - started
            if done.returncode != 0:
                error = done.stderr.strip()[-500:]
                return {"device": device, "budget_ms": budget_ms, "error": error}
            calls.append((json.loads(done.stdout.strip().splitlines()[-1]), wall_seconds))
    (first, first_wall), (record, wall_seconds) = calls
    return {
        "device": device,
        "budget_ms": budget_ms,
        "architecture": record["architecture"],
        "evaluated": record.get("evaluated"),
        "predicted_ms": record["predicted_latency_ms"],
        "measured_ms": record["measured_latency_ms"],
        "stages": record["seconds"],
        "total_seconds": record["total_seconds"],
        "wall_seconds": wall_seconds,
        "first_call": {
            "evaluated": first.get("evaluated"),
            "stages": first["seconds"],
            "total_seconds": first["total_seconds"],
            "wall_seconds": first_wall,
        },
    }


def remeasure(path: Path, args: argparse.Namespace) -> None:
    """Re-time every local network of a report in interleaved rounds; rewrite it."""
    import json

    from metarch.engine.evaluate import load_trained_learner
    from metarch.engine.search import supernet_learner
    from metarch.hardware.devices import Measurement, create_device

    torch.set_num_threads(1)
    report = json.loads(path.read_text())
    trained = load_trained_learner(Path(args.run), args.checkpoint)
    space = supernet_learner(trained).space
    shape = trained.inputs.shape
    ways = trained.config.episodes.ways
    task = TASKS[report["task"]]
    report["baseline"] = baseline_spec(task)  # the task's baseline now, re-timed below
    how = Measurement(warmup=5, repeats=20, rounds=args.rounds)
    for name, result in report["devices"].items():
        device = create_device(name)
        texts = {r["architecture"] for r in result["rows"] if "architecture" in r}
        texts |= {report["references"][ref]["architecture"] for ref in result["references_ms"]}
        ordered = sorted(texts)
        networks = [(baseline_network(task, ways, shape), shape)]
        networks += [(space.build(space.decode(t), num_classes=ways), shape) for t in ordered]
        timings = device.measure_many(networks, how)
        measured = {t: timing.median_ms for t, timing in zip(ordered, timings[1:], strict=True)}
        # The searches' budgets stay as they were (fractions of the baseline then).
        result.setdefault("baseline_ms_at_search", result["baseline_ms"])
        result["baseline_ms"] = timings[0].median_ms
        result["references_ms"] = {
            ref: measured[report["references"][ref]["architecture"]]
            for ref in result["references_ms"]
        }
        for row in result["rows"]:
            if "architecture" in row:
                row["measured_ms"] = measured[row["architecture"]]
        result["remeasured"] = f"interleaved rounds: {how.rounds}, quiet machine"
        print(name, "baseline", result["baseline_ms"], flush=True)
    write_json(report, path)
    plot_fronts(report, path.with_name(report["figure"]))
    print(f"rewrote {path}")


def table_devices(
    trained: Any,
    tasks: Any,
    test: Tester,
    args: argparse.Namespace,
    references: dict[str, Any],
    *,
    shape: tuple[int, int, int],
    how: Any,
) -> dict[str, Any]:
    """Searches per device of a whole-network table, budgets as fractions of the largest
    network's latency there (the table's latencies are the measurements)."""
    from metarch.engine.search import device_latency

    space = trained.learner.space
    devices: dict[str, Any] = {}
    for name in args.table_devices:
        latency = device_latency(space, name, table=Path(args.table), proxy_table=args.proxy_table)
        largest_ms = latency.model.predict(space.largest())
        rows = []
        for fraction in args.budgets:
            for sampler in args.samplers:
                row = search_row(
                    trained, tasks, latency, shape, how, test, args,
                    fraction=fraction, baseline_ms=largest_ms, sampler=sampler,
                    population=args.population, evaluations=args.evaluations,
                )  # fmt: skip
                rows.append(row)
                print(name, {k: v for k, v in row.items() if k != "front"}, flush=True)
        devices[name] = {
            "largest_ms": largest_ms,
            "references_ms": {
                reference: latency.model.predict(architecture)
                for reference, architecture in references.items()
            },
            "proxy": latency.proxy,
            "rows": rows,
        }
    return devices


def search_row(
    trained: Any,
    tasks: Any,
    latency: Any,
    shape: tuple[int, int, int],
    how: Any,
    test: Tester,
    args: argparse.Namespace,
    *,
    fraction: float,
    baseline_ms: float,
    sampler: str,
    population: int,
    evaluations: int,
) -> dict[str, Any]:
    """One search at ``fraction`` of the baseline's latency: the chosen sub-network's
    validation and test accuracy, predicted and measured latency, seconds."""
    from metarch.engine.search import Budget, search_trained
    from metarch.nas.search import SearchError

    budget = Budget(latency_ms=fraction * baseline_ms)
    row: dict[str, Any] = {"fraction": fraction, "budget_ms": budget.latency_ms, "sampler": sampler}
    started = time.perf_counter()
    try:
        result = search_trained(
            trained,
            tasks,
            budget,
            latency,
            sampler=sampler,
            evaluations=evaluations,
            population=population,
            seed=args.seed,
        )
    except SearchError as exc:  # a budget below the smallest sub-network
        return row | {"unreachable": str(exc)}
    search_seconds = time.perf_counter() - started
    best = result.best
    space = trained.learner.space
    network = space.build(best.architecture, num_classes=trained.config.episodes.ways)
    return (
        row
        | {
            "architecture": best.text,
            "validation_accuracy": 100.0 * best.fitness,
            "predicted_ms": best.costs["latency_ms"],
            "measured_ms": (
                latency.device.measure(network, shape, how).median_ms
                if latency.device is not None
                else None
            ),
            "search_seconds": search_seconds,
            "front": [c.to_json() for c in result.front],
        }
        | test(best.architecture)
    )


def trained_seconds(run: Path) -> float | None:
    """Seconds of meta-training the run's metrics record (its last logged step)."""
    import json

    seconds = None
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            if record.get("phase") == "train":
                seconds = record.get("seconds", seconds)
    return seconds


def baseline_result(report: dict[str, Any]) -> dict[str, Any] | None:
    """The manual baseline's published test result for the report's task."""
    import json

    from report import RESULTS

    spec = report["baseline"]
    rows = json.loads((RESULTS / spec["results"]).read_text())["rows"]
    return next(
        (r for r in rows if r["config"] == spec["config"] and r.get("task") == spec["label"]
         and "note" not in r),
        None,
    )  # fmt: skip


def plot_fronts(report: dict[str, Any], out: Path) -> None:
    """Test accuracy against latency per device: the chosen sub-networks and the reference
    networks; for local devices as measured (the manual baseline's latency dashed), for a
    table's devices as the table has them."""
    panels = [(name, result, "measured_ms") for name, result in report["devices"].items()]
    panels += [
        (f"{name} (table)", result, "predicted_ms")
        for name, result in report.get("table_devices", {}).items()
    ]
    if not panels:
        return
    figure, axes = figure_axes(len(panels), size=(5, 4))
    for axis, (device, result, x_key) in zip(axes, panels, strict=True):
        for sampler, marker in (("evolution", "o"), ("nsga2", "^"), ("random", "x")):
            rows = [r for r in result["rows"] if r["sampler"] == sampler and "accuracy" in r]
            if rows:
                axis.errorbar(
                    [r[x_key] for r in rows],
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
        if "baseline_ms" in result:
            axis.axvline(result["baseline_ms"], color="grey", linestyle="--")
            baseline = baseline_result(report)
            if baseline is not None:
                axis.errorbar(
                    [result["baseline_ms"]], [baseline["accuracy"]], yerr=[baseline["ci95"]],
                    fmt="*", markersize=12, color="black", label=f"{baseline['config']}",
                )  # fmt: skip
        axis.set_title(f"{report['task']}: {device}")
        axis.set_xlabel("latency (ms, batch 1)")
        axis.set_ylabel("test accuracy %")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    save_figure(figure, out)


if __name__ == "__main__":
    main()
