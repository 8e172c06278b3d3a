"""The Omniglot results table: train every config in ``configs/`` and test it on held-out alphabets.

Each ``configs/omniglot-<method>-<ways>w<shots>s.yaml`` is meta-trained on
``background:train`` (20 alphabets) from the CLI, timed, and tested on ``background:test``
(5 alphabets never seen in training or validation, listed in
``metarch.data.pools.NAMED_SPLITS``) with ``metarch evaluate`` on 1,000 fixed episodes
(seed 0) of its task; ``omniglot-<method>-lake.yaml`` is tested on within-alphabet 20-way
1-shot episodes and reported as an error, also with test-time augmentation (``--tta``,
reported as separate rows). Way-agnostic models (prototypical networks)
are also tested on 5-way, 20-way and within-alphabet 20-way 1-shot episodes: one model
serves every task; a model with a 20-way classifier head is also tested on within-alphabet
20-way 1-shot episodes. Runs already finished in the runs folder are
evaluated again, not retrained; interrupted ones resume.

Usage::

    python benchmarks/omniglot.py [--configs omniglot-protonet-5w1s ...] [--runs runs/omniglot]
        [--set steps=100] [--episodes 1000] [--tta 8] [--json] [--publish [NAME] | --out FILE]
        [--merge-into benchmarks/results/omniglot.json]

The JSON goes to ``runs/benchmarks/omniglot.json``; ``--publish`` writes the published
``benchmarks/results/omniglot.json`` (``--publish NAME``: ``benchmarks/results/NAME.json``)
instead, from which ``benchmarks/tables.py`` generates BENCHMARKS.md's table. Run folders
are recorded relative to the repository root.

``--merge-into`` folds this call's rows into an existing table (the one BENCHMARKS.md
reports): the rows of the configs run here replace that table's rows of the same configs,
except rows carrying a ``note`` (earlier runs kept for comparison), and the command joins
its ``commands``. Runs of different configs can so go on in parallel processes, each with its
own ``--out``, and meet in one table.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import (  # noqa: E402 (benchmarks are scripts, not a package)
    add_output_arguments,
    command_line,
    output_path,
    repo_relative,
    write_json,
    write_report,
)


def metarch(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "metarch", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def shipped_configs(pattern: str, names: list[str] | None) -> list[Path]:
    """The configs under ``configs/`` matching ``pattern``, only those ``names`` if given."""
    paths = sorted((ROOT / "configs").glob(pattern))
    return [p for p in paths if p.stem in set(names)] if names else paths


def train_or_resume(
    config: Path, run: Path, data: list[str], overrides: list[str]
) -> tuple[float, str | None]:
    """Train ``config`` into ``run`` from the CLI, resuming a run already there.

    Returns:
        ``(seconds, error)``: the time this call took, and the last line of the error
        output if training failed (else ``None``).
    """
    train = ["train", "--config", str(config), "--out", str(run), *data]
    for override in overrides:
        train += ["--set", override]
    if (run / "last.json").exists():
        train.append("--resume")
    started = time.perf_counter()
    trained = metarch(*train)
    seconds = time.perf_counter() - started
    if trained.returncode != 0:
        return seconds, (trained.stderr.strip().splitlines()[-1:] or ["failed"])[0]
    return seconds, None


def trained_runs(
    paths: list[Path],
    runs: Path,
    data: list[str],
    overrides: list[str],
    rows: list[dict[str, Any]],
    *,
    train: bool = True,
) -> Iterator[tuple[Path, Path, float]]:
    """Train (or resume) each config into ``runs/<name>``: ``(config, run, seconds)`` of each.

    A config whose training fails adds an error row to ``rows`` instead. ``train=False``
    takes the runs as they stand (e.g. stopped at a compute budget before their last step).
    """
    for path in paths:
        run = runs / path.stem
        if train:
            seconds, error = train_or_resume(path, run, data, overrides)
        elif (run / "last.json").exists():
            seconds, error = 0.0, None
        else:
            seconds, error = 0.0, f"--no-train: {repo_relative(run)} has no checkpoint"
        if error is not None:
            rows.append({"config": path.stem, "run": repo_relative(run), "error": error})
            continue
        yield path, run, seconds


Task = tuple[int, int, bool]
#: Tasks every way-agnostic model (no classifier head, e.g. prototypical networks) is also
#: tested on: one model serves them all.
EXTRA_TASKS: tuple[Task, ...] = ((5, 1, False), (20, 1, False), (20, 1, True))


def task_of(stem: str) -> Task:
    """``(ways, shots, within_alphabet)`` tested for a config name."""
    if stem.endswith("-lake"):
        return 20, 1, True
    ways, shots = stem.rsplit("-", 1)[1].rstrip("s").split("w")
    return int(ways), int(shots), False


def tasks_of(path: Path) -> list[Task]:
    """The config's own task first, then the extra tasks a way-agnostic model can take."""
    from metarch.engine.config import load_config
    from metarch.meta.base import META_LEARNERS

    own = task_of(path.stem)
    if META_LEARNERS.get(load_config(path).method.name).needs_classifier_head:
        # A classifier head fixes the ways; within-alphabet episodes of those ways still fit.
        return [own] + [task for task in EXTRA_TASKS if task[:2] == own[:2] and task != own]
    return [own, *(task for task in EXTRA_TASKS if task != own)]


def evaluate_task(
    run: Path, task: Task, data: list[str], episodes: int, tta: tuple[int, float] = (0, 0.5)
) -> dict[str, Any]:
    """Accuracy on ``episodes`` fixed episodes (seed 0) of background:test, or an error.

    ``tta`` is ``(copies, strength)`` of test-time augmentation (0 copies: none).
    """
    ways, shots, within = task
    evaluate = ["evaluate", "--run", str(run), "--dataset", "background:test", *data]
    evaluate += ["--ways", str(ways), "--shots", str(shots)]
    evaluate += ["--queries", "5" if ways > 5 else "15", "--episodes", str(episodes)]
    evaluate += ["--seed", "0", "--json"]
    if within:
        evaluate.append("--within-alphabet")
    copies, strength = tta
    if copies:
        evaluate += ["--tta", str(copies), "--tta-strength", str(strength)]
    done = metarch(*evaluate)
    name = f"{ways}-way {shots}-shot" + (" within-alphabet" if within else "")
    name += f" + TTA x{copies}" if copies else ""
    if done.returncode != 0:
        return {"task": name, "error": done.stderr.strip()}
    result = json.loads(done.stdout)
    return {
        "task": name,
        "accuracy": result["accuracy"],
        "ci95": result["ci95"],
        "error_percent": 100.0 - result["accuracy"] if within else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", default=None, help="config names (default: all)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "omniglot"))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument(
        "--tta",
        type=int,
        default=8,
        help="also test within-alphabet tasks with this many test-time augmented copies "
        "(metarch evaluate --tta; 0: skip)",
    )
    parser.add_argument("--tta-strength", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    add_output_arguments(parser, "omniglot")
    parser.add_argument("--merge-into", default=None, help="an existing table to fold rows into")
    args = parser.parse_args()
    out = output_path(args, "omniglot")

    paths = shipped_configs("omniglot-*.yaml", args.configs)
    data = ["--data-root", args.data_root] if args.data_root else []
    rows: list[dict[str, Any]] = []
    for path, run, seconds in trained_runs(paths, Path(args.runs), data, args.overrides, rows):
        common = {
            "config": path.stem,
            "run": repo_relative(run),
            "steps": json.loads((run / "last.json").read_text())["step"],
            "train_seconds_this_call": seconds,
            "train_seconds_total": total_train_seconds(run),
        }
        for index, task in enumerate(tasks_of(path)):
            result = evaluate_task(run, task, data, args.episodes)
            rows.append({**common, "own_task": index == 0, **result})
            if task[2] and args.tta > 0:
                tta = (args.tta, args.tta_strength)
                result = evaluate_task(run, task, data, args.episodes, tta)
                rows.append({**common, "own_task": index == 0, "tta": list(tta), **result})
    report = {
        "benchmark": "omniglot",
        "test_pool": "background:test",
        "episodes": args.episodes,
        "rows": rows,
    }
    printed = write_report(report, out, as_json=args.json)
    if args.merge_into:
        merge_rows(Path(args.merge_into), rows, command_line())
    if printed:
        return
    print(f"{'config':<28}{'task':<44}{'accuracy':>16}{'steps':>8}{'train h':>9}")
    for row in rows:
        if "error" in row:
            print(f"{row['config']:<28}error: {row['error']}")
            continue
        accuracy = f"{row['accuracy']:.2f} ± {row['ci95']:.2f}"
        hours = (row["train_seconds_total"] or 0) / 3600
        print(f"{row['config']:<28}{row['task']:<44}{accuracy:>16}{row['steps']:>8}{hours:>9.2f}")
    print(f"wrote {out}")


def merge_rows(
    table: Path,
    rows: list[dict[str, Any]],
    command: str,
    template: dict[str, Any] | None = None,
) -> None:
    """Replace ``table``'s rows of the configs in ``rows`` by ``rows``, atomically.

    Rows with a ``note`` (earlier runs of a config kept for comparison) are kept; the new
    rows take the place of the first replaced one, so the table keeps its order. A lock file
    beside the table serialises processes that finish at the same time. A missing table
    starts from ``template`` (this call's report) with no rows.
    """
    with open(table.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _merge_rows_locked(table, rows, command, template)


def _merge_rows_locked(
    table: Path, rows: list[dict[str, Any]], command: str, template: dict[str, Any] | None
) -> None:
    if not table.exists() and template is not None:
        merged = {**template, "rows": [], "commands": []}
        merged.pop("command", None)
    else:
        merged = json.loads(table.read_text())
    configs = {row["config"] for row in rows}
    kept: list[dict[str, Any]] = []
    inserted = False
    for row in merged["rows"]:
        if row["config"] in configs and "note" not in row:
            if not inserted:
                kept.extend(rows)
                inserted = True
            continue
        kept.append(row)
    if not inserted:
        kept.extend(rows)
    merged["rows"] = kept
    commands = merged.setdefault("commands", [])
    if command not in commands:
        commands.append(command)
    write_json(merged, table)


def total_train_seconds(run: Path, key: str = "seconds") -> float | None:
    """Training time over all legs of a run, from its metrics log.

    ``key`` is ``seconds`` (elapsed) or ``cpu_seconds`` (processor time, logged by runs
    trained since compute budgets exist; None for older runs).
    """
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    total, previous = 0.0, 0.0
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("phase") != "train":
            continue
        if key not in record:
            return None
        seconds = float(record[key])
        # A resumed leg restarts its clock: add the previous leg's last reading.
        if seconds < previous:
            total += previous
        previous = seconds
    return total + previous


if __name__ == "__main__":
    main()
