"""MetaNAS: accuracy, adapted architectures and their cost, next to the manual baselines.

Every ``configs/*-metanas-*.yaml`` is meta-trained from the CLI (or a finished run is
reused; an interrupted one resumes), then tested with ``metarch evaluate`` on fixed
episodes (seed 0) of held-out classes: Omniglot ``background:test`` 20-way 1-shot and
within-alphabet 20-way 1-shot; Tiny-ImageNet ``tiny_imagenet_fs_background:test`` 5-way
1-shot and 5-shot, the same run (the reference meta-trains both alike; 5-shot adapts on
mini-batches of 15 support images: ``--set method.options.eval_batch_size=15``). Each row
holds the accuracy with its 95% CI, how many distinct architectures the tasks adapted to,
the most frequent one with its share of tasks, and that architecture's
discrete network's cost: parameters, FLOPs per image and measured latency per image on this
CPU (batch 1, one thread, median of 200 forward passes after 20 warm-up), the same
protocol as the manual baselines of ``benchmarks/omniglot.py`` and
``benchmarks/tiny_imagenet_fs.py``, which the generated table shows beside MetaNAS with
their training time (compare at equal meta-training compute).

Usage::

    python benchmarks/metanas.py [--configs NAME ...] [--runs runs/metanas] [--episodes 100]
        [--set steps=100] [--no-train] [--publish [NAME] | --out FILE]
        [--merge-into benchmarks/results/metanas.json]

The JSON goes to ``runs/benchmarks/metanas.json``; ``--publish`` writes
``benchmarks/results/metanas.json`` (regenerate BENCHMARKS.md's tables with
``python benchmarks/tables.py`` afterwards).
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from omniglot import (  # noqa: E402 (benchmarks are scripts, not a package)
    merge_rows,
    metarch,
    shipped_configs,
    total_train_seconds,
    trained_runs,
)
from report import (  # noqa: E402
    RESULTS,
    add_output_arguments,
    command_line,
    output_path,
    repo_relative,
    write_json,
    write_report,
)

LATENCY = "batch 1, 1 thread, median of 200 forward passes after 20 warm-up"
#: Real-device latency tables (under the data root) of the spaces that have them, by the
#: backbone a config meta-learns.
DEVICE_TABLES = {"nasbench201-search": Path("hardware") / "help_nasbench201_latency.csv"}
#: The manual baselines' published results, by data set of the MetaNAS config.
BASELINE_TABLES = {"omniglot": "omniglot.json", "tiny-imagenet-fs": "tiny_imagenet_fs.json"}


def tasks_of(stem: str) -> list[dict[str, Any]]:
    """The test protocols of a config: data set, ways, shots, queries, within-alphabet."""
    if stem.startswith("omniglot-"):
        return [
            {"dataset": "background:test", "ways": 20, "shots": 1, "queries": 5, "within": False},
            {"dataset": "background:test", "ways": 20, "shots": 1, "queries": 5, "within": True},
        ]
    # The reference meta-trains 1- and 5-shot alike (15 shots a class) and differs only in
    # meta-testing: 1 or 5 shots, adapting on mini-batches of 5 or 15 support images.
    test = "tiny_imagenet_fs_background:test"
    return [
        {"dataset": test, "ways": 5, "shots": 1, "queries": 15, "within": False},
        {
            "dataset": test,
            "ways": 5,
            "shots": 5,
            "queries": 15,
            "within": False,
            "settings": ["method.options.eval_batch_size=15"],
        },
    ]


def task_name(task: dict[str, Any]) -> str:
    within = " within-alphabet" if task["within"] else ""
    return f"{task['ways']}-way {task['shots']}-shot{within}"


def evaluate(run: Path, task: dict[str, Any], data: list[str], episodes: int) -> dict[str, Any]:
    """Accuracy and adapted architectures on ``episodes`` fixed test episodes."""
    command = ["evaluate", "--run", str(run), "--dataset", task["dataset"], *data]
    command += ["--ways", str(task["ways"]), "--shots", str(task["shots"])]
    command += ["--queries", str(task["queries"]), "--episodes", str(episodes), "--seed", "0"]
    if task["within"]:
        command.append("--within-alphabet")
    for setting in task.get("settings", []):
        command += ["--set", setting]
    done = metarch(*command, "--json")
    if done.returncode != 0:
        return {"error": done.stderr.strip()}
    result = json.loads(done.stdout)
    found = result.get("architectures") or {}
    shares = found.get("most_frequent") or []
    top = shares[0] if shares else {}
    return {
        "accuracy": result["accuracy"],
        "ci95": result["ci95"],
        "episodes": result["episodes"],
        "checkpoint_step": result["step"],
        "distinct_architectures": found.get("distinct"),
        "most_frequent": shares,
        "meta_architecture": found.get("meta_architecture"),
        "architecture": top.get("architecture"),
        "architecture_tasks": top.get("tasks"),
        "parameters": top.get("parameters"),
        "flops_per_image": top.get("flops"),
    }


def architecture_latency(run: Path, architecture: str, ways: int) -> dict[str, Any]:
    """CPU latency per image of ``architecture``'s discrete network (and of the relaxation)."""
    import torch

    from metarch.engine.evaluate import load_trained_learner
    from metarch.models.cost import measure_latency
    from metarch.nas.methods.metanas import MetaNAS

    model = load_trained_learner(run)
    learner = model.learner
    assert isinstance(learner, MetaNAS)
    shape = model.inputs.shape
    space = learner.space(shape)
    network = space.build(space.decode(architecture), num_classes=ways).eval()
    latency = measure_latency(network, shape, batch=1, threads=1, warmup=20, repeats=200)
    relaxed = measure_latency(learner.model.eval(), shape, batch=1, threads=1, warmup=5, repeats=30)
    torch.set_num_threads(1)
    return {
        "input_shape": list(shape),
        "latency_ms": latency.median_ms,
        "latency_p10_ms": latency.p10_ms,
        "latency_p90_ms": latency.p90_ms,
        "relaxed_latency_ms": relaxed.median_ms,
    }


def device_latencies(
    root: Path, table_path: Path, shares: list[dict[str, Any]], meta_architecture: str | None
) -> dict[str, Any]:
    """Measured latency on every device of the table of the adapted (and meta-) cells.

    Each cell's latency comes with its rank in the space on that device: the share (%) of
    all the table's cells that are faster.
    """
    from metarch.hardware import DeviceLatencyTable

    table = DeviceLatencyTable.from_csv(root / table_path)
    by_device = {d: sorted(table.rows[a][d] for a in table) for d in table.devices}

    def described(architecture: str) -> dict[str, Any]:
        latencies = table.latencies(architecture)
        faster = {
            device: 100.0 * bisect.bisect_left(by_device[device], ms) / len(table)
            for device, ms in latencies.items()
        }
        return {"latency_ms": dict(latencies), "faster_share": faster}

    cells = [
        {"architecture": s["architecture"], "tasks": s["tasks"], "accuracy": s["accuracy"]}
        | described(s["architecture"])
        for s in shares
    ]
    return {
        "table": f"<data root>/{table_path.as_posix()}",
        "devices": list(table.devices),
        "cells": cells,
        "meta_architecture": described(meta_architecture) if meta_architecture else None,
    }


def network_cost(config: Path, ways: int) -> dict[str, Any]:
    """Parameters, FLOPs and CPU latency per image of the network a config builds.

    Cost does not depend on the trained weights, so baselines whose runs are gone are
    measured on a freshly built model of their config.
    """
    import torch

    from metarch.engine.build import build_learner
    from metarch.engine.config import load_config
    from metarch.models.cost import count_parameters, flops_per_image, measure_latency

    settings = load_config(config)
    channels = 1 if settings.data.train_set.startswith("background") else 3
    shape = (channels, settings.data.image_size, settings.data.image_size)
    learner = build_learner(settings, shape)
    network = learner.get_submodule("model")
    latency = measure_latency(network, shape, batch=1, threads=1, warmup=20, repeats=200)
    torch.set_num_threads(1)
    return {
        "parameters": count_parameters(network),
        "flops_per_image": flops_per_image(network, shape),
        "latency_ms": latency.median_ms,
    }


def baseline_rows(stem: str, tasks: list[str]) -> list[dict[str, Any]]:
    """The published manual baselines of ``tasks`` on the config's data set, with their cost."""
    family = next(name for name in BASELINE_TABLES if stem.startswith(name + "-"))
    path = RESULTS / BASELINE_TABLES[family]
    if not path.exists():
        return []
    rows = []
    for row in json.loads(path.read_text())["rows"]:
        if (
            row.get("task") not in tasks
            or "note" in row
            or "error" in row
            or "metanas" in row["config"]
        ):
            continue
        config = ROOT / "configs" / f"{row['config']}.yaml"
        ways = int(row["task"].split("-")[0])
        rows.append(
            {
                "config": row["config"],
                "task": row["task"],
                "accuracy": row["accuracy"],
                "ci95": row["ci95"],
                "steps": row["steps"],
                "train_seconds_total": row.get("train_seconds_total"),
                **network_cost(config, ways),
            }
        )
    return rows


def run_configs(args: argparse.Namespace) -> None:
    from metarch.data.paths import resolve_data_root
    from metarch.engine.config import load_config

    paths = shipped_configs("*-metanas-*.yaml", args.configs)
    data = ["--data-root", args.data_root] if args.data_root else []
    rows: list[dict[str, Any]] = []
    runs = trained_runs(paths, Path(args.runs), data, args.overrides, rows, train=args.train)
    for path, run, seconds in runs:
        for task in tasks_of(path.stem):
            if args.tasks and task_name(task) not in args.tasks:
                continue
            row: dict[str, Any] = {
                "config": path.stem,
                "run": repo_relative(run),
                "task": task_name(task),
                "test_pool": task["dataset"],
                "test_settings": task.get("settings", []),
                "steps": json.loads((run / "last.json").read_text())["step"],
                "config_steps": load_config(path).steps,
                "train_seconds_this_call": seconds,
                "train_seconds_total": total_train_seconds(run),
                "train_cpu_seconds_total": total_train_seconds(run, "cpu_seconds"),
                **evaluate(run, task, data, args.episodes),
            }
            if row.get("architecture"):
                row.update(architecture_latency(run, row["architecture"], task["ways"]))
            table = DEVICE_TABLES.get(load_config(path).model.name)
            if table is not None and row.get("most_frequent"):
                root = resolve_data_root(args.data_root)
                row["devices"] = device_latencies(
                    root, table, row["most_frequent"], row.get("meta_architecture")
                )
            rows.append(row)
            print(f"{path.stem:<36}{row['task']:<28}{row.get('accuracy', float('nan')):6.2f}")
    tasks = sorted({row["task"] for row in rows if "task" in row})
    baselines: dict[str, dict[str, Any]] = {}
    for path in paths:
        for row in baseline_rows(path.stem, tasks):
            baselines[f"{row['config']}|{row['task']}"] = row
    report = {
        "benchmark": "metanas",
        "latency": LATENCY,
        "seed": 0,
        "rows": rows,
        "baselines": list(baselines.values()),
    }
    out = output_path(args, "metanas")
    write_report(report, out, as_json=False)
    if args.merge_into:
        full = json.loads(out.read_text())  # with the machine write_report adds
        table = Path(args.merge_into)
        merge_rows(table, rows, command_line(), template=full)
        merged = json.loads(table.read_text())
        known = {f"{b['config']}|{b['task']}": b for b in merged.get("baselines", [])}
        merged["baselines"] = list({**known, **baselines}.values())
        write_json(merged, table)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", default=None, help="config names (default: all)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "metanas"))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument(
        "--task",
        dest="tasks",
        action="append",
        default=[],
        help="test only this task, e.g. '5-way 1-shot' (repeatable; default: all)",
    )
    parser.add_argument(
        "--no-train",
        dest="train",
        action="store_false",
        help="evaluate the runs as they stand (e.g. stopped at a compute budget)",
    )
    add_output_arguments(parser, "metanas")
    parser.add_argument("--merge-into", default=None, help="an existing table to fold rows into")
    run_configs(parser.parse_args())


if __name__ == "__main__":
    main()
