"""The Tiny-ImageNet few-shot baselines: accuracy and cost of the hand-designed networks.

Every ``configs/tiny-imagenet-fs-<method>-<backbone>-5w<K>s.yaml`` is meta-trained on
``tiny_imagenet_fs_background:train`` (96 classes; validated on the 32 ``val`` classes)
from the CLI, then tested with ``metarch evaluate`` on 5-way K-shot episodes of the 32
``test`` classes (never seen in training or validation; 600 episodes, 15 queries a class,
seed 0; mean and 95% confidence interval). For each model the JSON also holds its cost:
parameters, FLOPs per image (:mod:`metarch.models.cost`) and the measured inference latency
per image on this CPU (batch 1, one thread, median of 200 forward passes), and the run's
validation curve. These are the accuracy-versus-cost points an architecture search must
dominate. Finished runs are evaluated again, not retrained; interrupted ones resume.

Usage::

    python benchmarks/tiny_imagenet_fs.py [--configs NAME ...] [--runs runs/tiny-imagenet-fs]
        [--set steps=100] [--episodes 600] [--publish [NAME] | --out FILE]
        [--merge-into benchmarks/results/tiny_imagenet_fs.json]
    python benchmarks/tiny_imagenet_fs.py --markdown BENCHMARKS.md [--table TABLE]

The JSON goes to ``runs/benchmarks/tiny_imagenet_fs.json``; ``--publish`` writes the
published ``benchmarks/results/tiny_imagenet_fs.json`` (``--publish NAME``:
``benchmarks/results/NAME.json``) instead. Run folders are recorded relative to the
repository root.

``--markdown`` regenerates the section of BENCHMARKS.md between the
``<!-- tiny-imagenet-fs:begin -->`` and ``<!-- tiny-imagenet-fs:end -->`` markers with the
renderer of ``benchmarks/tables.py`` (which regenerates every table of BENCHMARKS.md), and
the validation-curve figure beside the table JSON, from that JSON alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import tables  # noqa: E402
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
    figure_axes,
    output_path,
    repo_relative,
    save_figure,
    write_report,
)

TEST_SET = "tiny_imagenet_fs_background:test"
TABLE = RESULTS / "tiny_imagenet_fs.json"
PROBE = TABLE.with_name("tiny_imagenet_fs_image_size.json")
CURVES = TABLE.with_name("tiny_imagenet_fs_curves.png")
SECTION = "tiny-imagenet-fs"
BEGIN, END = tables.markers(SECTION)


def shots_of(stem: str) -> int:
    """K of a config named ``...-5w<K>s``."""
    return int(stem.rsplit("-", 1)[1].split("w")[1].rstrip("s"))


def model_cost(run: Path) -> dict[str, Any]:
    """Parameters, FLOPs per image and CPU latency per image of a run's inference network."""
    import torch

    from metarch.engine.evaluate import load_trained_learner
    from metarch.models.cost import count_parameters, flops_per_image, measure_latency

    model = load_trained_learner(run)
    network = model.learner.model  # backbone (+ head for MAML-family learners)
    assert isinstance(network, torch.nn.Module)
    shape = model.inputs.shape
    latency = measure_latency(network, shape, batch=1, threads=1, warmup=20, repeats=200)
    torch.set_num_threads(1)
    return {
        "input_shape": list(shape),
        "parameters": count_parameters(network),
        "flops_per_image": flops_per_image(network, shape),
        "latency_ms": latency.median_ms,
        "latency_p10_ms": latency.p10_ms,
        "latency_p90_ms": latency.p90_ms,
    }


def validation_curve(run: Path) -> list[dict[str, float]]:
    """``[{"step", "accuracy", "ci95"}]`` of every validation in the run's metrics log."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {"step": r["step"], "accuracy": r["accuracy"], "ci95": r["ci95"]}
        for r in records
        if r.get("phase") == "val"
    ]


def evaluate(run: Path, shots: int, data: list[str], episodes: int) -> dict[str, Any]:
    """Accuracy on ``episodes`` fixed 5-way ``shots``-shot 15-query test episodes."""
    command = ["evaluate", "--run", str(run), "--dataset", TEST_SET, *data, "--ways", "5"]
    command += ["--shots", str(shots), "--queries", "15", "--episodes", str(episodes)]
    done = metarch(*command, "--seed", "0", "--json")
    if done.returncode != 0:
        return {"error": done.stderr.strip()}
    result = json.loads(done.stdout)
    return {
        "accuracy": result["accuracy"],
        "ci95": result["ci95"],
        "checkpoint_step": result["step"],
    }


def run_configs(args: argparse.Namespace) -> None:
    paths = shipped_configs("tiny-imagenet-fs-*.yaml", args.configs)
    data = ["--data-root", args.data_root] if args.data_root else []
    rows: list[dict[str, Any]] = []
    for path, run, seconds in trained_runs(paths, Path(args.runs), data, args.overrides, rows):
        shots = shots_of(path.stem)
        rows.append(
            {
                "config": path.stem,
                "run": repo_relative(run),
                "task": f"5-way {shots}-shot",
                "steps": json.loads((run / "last.json").read_text())["step"],
                "train_seconds_this_call": seconds,
                "train_seconds_total": total_train_seconds(run),
                **evaluate(run, shots, data, args.episodes),
                **model_cost(run),
                "validation": validation_curve(run),
            }
        )
    report = {
        "benchmark": "tiny_imagenet_fs",
        "test_pool": TEST_SET,
        "episodes": args.episodes,
        "queries": 15,
        "latency": "batch 1, 1 thread, median of 200 forward passes after 20 warm-up",
        "rows": rows,
    }
    out = output_path(args, "tiny_imagenet_fs")
    write_report(report, out, as_json=False)
    if args.merge_into:
        full = json.loads(out.read_text())  # with the machine write_report adds
        merge_rows(Path(args.merge_into), rows, command_line(), template=full)
    for row in rows:
        if "error" in row:
            print(f"{row['config']:<44}error: {row['error']}")
        else:
            print(f"{row['config']:<44}{row['accuracy']:6.2f} ± {row['ci95']:.2f}")
    print(f"wrote {out}")


def plot_curves(table: dict[str, Any], out: Path) -> None:
    figure, (axis,) = figure_axes()
    for row in table["rows"]:
        curve = row.get("validation") or []
        if curve:
            label = row["config"].removeprefix("tiny-imagenet-fs-")
            steps = [r["step"] for r in curve]
            axis.plot(steps, [r["accuracy"] for r in curve], marker=".", label=label)
    axis.set_xlabel("meta-training step")
    axis.set_ylabel("validation accuracy %")
    axis.set_title("Tiny-ImageNet few-shot: validation during meta-training")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    save_figure(figure, out)


def write_markdown(target: Path, table_path: Path) -> None:
    """Regenerate ``target``'s tiny-imagenet-fs section (``benchmarks/tables.py``'s renderer)
    from ``table_path`` (and the image-size probe beside it), and the curves figure."""
    table = json.loads(table_path.read_text())
    probe_path = table_path.with_name(PROBE.name)
    probe = json.loads(probe_path.read_text()) if probe_path.exists() else None
    lines = tables.tiny_imagenet_fs(table, probe)
    text = target.read_text()
    if BEGIN in text and END in text:
        text = tables.replace_section(text, SECTION, lines)
    else:
        text = text.rstrip("\n") + "\n\n" + tables.section_text(SECTION, lines) + "\n"
    tables.write_text_atomically(target, text)
    plot_curves(table, table_path.with_name(CURVES.name))
    print(f"updated {target} and {table_path.with_name(CURVES.name)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", default=None, help="config names (default: all)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "tiny-imagenet-fs"))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--episodes", type=int, default=600)
    add_output_arguments(parser, "tiny_imagenet_fs")
    parser.add_argument("--merge-into", default=None, help="an existing table to fold rows into")
    parser.add_argument("--markdown", default=None, help="regenerate this file's section")
    parser.add_argument("--table", default=str(TABLE), help="the JSON --markdown reads")
    args = parser.parse_args()
    if args.markdown:
        write_markdown(Path(args.markdown), Path(args.table))
    else:
        run_configs(args)


if __name__ == "__main__":
    main()
