"""The results tables of BENCHMARKS.md, generated from the published JSON in benchmarks/results/.

Every table whose numbers come from a results JSON sits in BENCHMARKS.md between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` markers, under a comment saying which
command regenerates it from which JSON; the prose around the tables stays hand-written.
:data:`SECTIONS` maps each section name to its JSON file(s) and its renderer, a pure
function of the loaded JSON that returns the section's markdown lines. A section whose
begin marker is indented (a table inside a list item) is indented alike.

The benchmark scripts publish into ``benchmarks/results/`` only with ``--publish`` (see
``benchmarks/report.py``); regenerate the tables after publishing, and
``tests/benchmarks/test_tables.py`` fails while BENCHMARKS.md and the JSON disagree.

Usage::

    python benchmarks/tables.py [BENCHMARKS.md]          # rewrite every section (atomically)
    python benchmarks/tables.py --check [BENCHMARKS.md]  # exit 1 listing the stale sections
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENT = ROOT / "BENCHMARKS.md"
COMMAND = "python benchmarks/tables.py"

Table = dict[str, Any]
Renderer = Callable[..., list[str]]


# -- formatting ------------------------------------------------------------------------


def sci(value: float | None, missing: str = "n/a") -> str:
    """``2.5e-5`` (two significant digits, no padded exponent); ``0`` for an exact zero."""
    if value is None:
        return missing
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def impl_name(impl: str) -> str:
    """``metarch-batched-small`` -> ``metarch batched-small``; ``torchopt`` -> ``TorchOpt``."""
    if impl.startswith("metarch-"):
        return "metarch " + impl.removeprefix("metarch-")
    return {"torchopt": "TorchOpt"}.get(impl, impl)


def short_name(impl: str) -> str:
    """An implementation as a ratio names it: ``batched-small``, ``learn2learn``."""
    return impl_name(impl).removeprefix("metarch ")


def bold(text: str, on: bool = True) -> str:
    return f"**{text}**" if on else text


# -- episode sampling ------------------------------------------------------------------


def episodes_table(report: Table) -> list[str]:
    """Episodes per second, metarch (meta-batch and one per call) against learn2learn."""
    batch = report["meta_batch"]
    lines = [
        f"| episode shape | metarch, meta-batch of {batch} | metarch, 1 per call | learn2learn "
        "| ratio (meta-batch) | ratio (1 per call) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for shape, rates in report["episodes_per_s"].items():
        ways, shots, queries = re.fullmatch(r"(\d+)w(\d+)s(\d+)q", shape).groups()  # type: ignore[union-attr]
        ratio = report["ratios"].get(shape)
        l2l = rates.get("learn2learn")
        peer = "n/a" if l2l is None else f"{l2l:,.0f} /s"
        batched = bold(f"{ratio['meta_batch']:.1f}x") if ratio else "n/a"
        single = f"{ratio['per_call']:.1f}x" if ratio else "n/a"
        lines.append(
            f"| {ways}-way {shots}-shot {queries}-query | {rates['metarch_meta_batch']:,.0f} /s "
            f"| {rates['metarch_per_call']:,.0f} /s | {peer} | {batched} | {single} |"
        )
    return lines


# -- Reptile meta-iterations -----------------------------------------------------------


def reptile_step_table(report: Table) -> list[str]:
    """Seconds per Reptile meta-iteration: the shared core against the imperative Reptile."""
    lines = [
        "| implementation | s / meta-iteration | speed-up vs imperative | peak RSS | "
        "rounds (s) | meta-gradient vs float64 (relative L2) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for row in report["results"]:
        if "error" in row:
            lines.append(f"| {impl_name(row['impl'])} | {row['error']} | | | | |")
            continue
        rounds = ", ".join(f"{s:.3f}" for s in row["round_seconds"])
        speedup = row.get("speedup_vs_imperative")
        lines.append(
            f"| {bold(impl_name(row['impl']), row['impl'] == 'metarch-batched')} "
            f"| {row['seconds_per_iteration']:.3f} "
            f"| {'n/a' if speedup is None else bold(f'{speedup:.2f}x', speedup >= 2)} "
            f"| {row['peak_rss_mb']:.0f} MB | {rounds} "
            f"| {sci(row.get('relative_grad_distance_vs_float64'))} |"
        )
    return lines


# -- MAML meta-iterations --------------------------------------------------------------

#: The implementation the full-run table puts in bold.
HEADLINE = "metarch-batched"
#: Footnote markers of BENCHMARKS.md under the full-run table: (1) no meta-gradient to
#: compare, (2) no such mode in that library.
NO_GRADIENT, UNSUPPORTED = "n/a (1)", "n/a (2)"


def meta_step_full(report: Table) -> list[str]:
    """Every implementation, inner steps and order of one ``meta_step.py`` run."""
    lines = [
        "| implementation | steps | order | s / iteration | GFLOP/s | % of GEMM peak "
        "| peak RSS MB | set-up MB | max abs diff vs learn2learn | max abs diff vs float64 |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        head = impl_name(row["impl"])
        headline = row["impl"] == HEADLINE
        if "seconds_per_iteration" not in row:
            reason = UNSUPPORTED if "unsupported" in row else f"error: {row.get('error')}"
            lines.append(f"| {head} | {row['steps']} | {row['order']} | {reason} | | | | | | |")
            continue
        diffs = [
            sci(row.get(f"max_abs_grad_diff_vs_{k}"), NO_GRADIENT)
            for k in ("learn2learn", "float64")
        ]
        seconds = bold(f"{row['seconds_per_iteration']:.3f}", headline)
        lines.append(
            f"| {bold(head, headline)} | {row['steps']} | {row['order']} | {seconds} "
            f"| {row['gflops_per_s']:.1f} | {100 * row['fraction_of_gemm_peak']:.1f} "
            f"| {row['peak_rss_mb']:,.0f} | {row['setup_rss_mb']:,.0f} | {diffs[0]} | {diffs[1]} |"
        )
    return lines


#: How the alternating-rounds table qualifies metarch's batched implementations.
ROUNDS_NOTES = {
    "metarch-batched": "task threads",
    "metarch-batched-small": "task threads",
    "metarch-batched-lean": "task threads",
    "metarch-batched-intraop": "before",
}
#: The pair the last row of the alternating-rounds table compares (speed and memory).
LEAN_PAIR = ("metarch-batched-lean", "learn2learn")


def meta_step_rounds(*runs: Table) -> list[str]:
    """Alternating rounds of the same implementations under several allocators, side by side."""
    allocators = [run["allocator"] for run in runs]
    by_impl = [{r["impl"]: r for r in run["results"]} for run in runs]
    impls = list(dict.fromkeys(impl for rows in by_impl for impl in rows))
    fastest = [run["fastest_metarch"] for run in runs]
    header = "| implementation |"
    for allocator in allocators:
        header += f" {allocator} s / iteration | {allocator} peak RSS MB |"
    lines = [header, "|---|" + "---:|---:|" * len(runs)]
    for impl in impls:
        name = impl_name(impl) + (f" ({ROUNDS_NOTES[impl]})" if impl in ROUNDS_NOTES else "")
        cells = [bold(name, impl == fastest[0])]
        for rows, best in zip(by_impl, fastest, strict=True):
            row = rows.get(impl, {})
            took = row.get("seconds_per_iteration")
            if took is None:
                cells += [row.get("error") or row.get("unsupported") or "-", ""]
                continue
            cells += [bold(f"{took:.3f}", impl == best), f"{row['peak_rss_mb']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")

    ratios, frugal, lean = [], [], []
    for run, rows in zip(runs, by_impl, strict=True):
        peer = rows.get(run["fastest_peer"], {})
        ratio = run.get("ratio_vs_fastest_peer")
        ratios.append(
            bold(f"{ratio:.2f}x")
            + f" ({short_name(run['fastest_metarch'])} vs {impl_name(run['fastest_peer'])})"
            if ratio
            else "-"
        )
        within = run.get("fastest_metarch_within_peer_memory")
        if within:
            frugal.append(
                f"{run['ratio_vs_fastest_peer_within_its_memory']:.2f}x ({short_name(within)}, "
                f"{rows[within]['peak_rss_mb']:,.0f} vs {peer['peak_rss_mb']:,.0f} MB)"
            )
        else:
            frugal.append(f"none ({impl_name(run['fastest_peer'])} {peer['peak_rss_mb']:,.0f} MB)")
        ours, theirs = (rows.get(impl, {}) for impl in LEAN_PAIR)
        if ours.get("seconds_per_iteration") and theirs.get("seconds_per_iteration"):
            lean.append(
                f"{theirs['seconds_per_iteration'] / ours['seconds_per_iteration']:.2f}x "
                f"({ours['peak_rss_mb']:,.0f} vs {theirs['peak_rss_mb']:,.0f} MB)"
            )
        else:
            lean.append("-")
    lines.append("| **fastest metarch vs fastest peer** | " + " | | ".join(ratios) + " | |")
    lines.append(
        "| fastest metarch within the fastest peer's memory | " + " | | ".join(frugal) + " | |"
    )
    ours_name, theirs_name = (short_name(impl) for impl in LEAN_PAIR)
    lines.append(
        f"| {ours_name} vs {theirs_name} (speed, peak RSS) | " + " | | ".join(lean) + " | |"
    )
    return lines


def meta_step_compile(report: Table) -> list[str]:
    """Eager against compiled, loop against vmap (``meta_step_compile.py``).

    The eager loop on the compiled loop's few tasks (the reference of its gradient) is left
    out: it only serves that comparison.
    """
    tasks = max(row["tasks"] for row in report["rows"])
    lines = [
        "| variant | compile s | s / iteration | vs eager loop | peak RSS MB | max abs grad diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        variant = row["variant"]
        eager = variant.startswith("eager")
        if eager and row["tasks"] != tasks:
            continue
        name = variant.replace("-", " ")
        if variant.endswith("loop"):
            name += f" ({row['tasks']} tasks{', scaled' if row['tasks'] != tasks else ''})"
        if "error" in row:
            lines.append(f"| {name} | error: {row['error']} | | | | |")
            continue
        if "max_abs_diff_vs_metarch_loop" in row:
            diff = f"{sci(row['max_abs_diff_vs_metarch_loop'])} (vs metarch)"
        else:
            diff = sci(row.get("max_abs_grad_diff"))
        compile_seconds = "-" if eager else f"{row['compile_seconds']:.1f}"
        lines.append(
            f"| {name} | {compile_seconds} | {row['seconds_per_32_tasks']:.2f} "
            f"| {row['speed_vs_eager_loop']:.2f}x | {row['peak_rss_mb']:,.0f} | {diff} |"
        )
    return lines


# -- Omniglot --------------------------------------------------------------------------

#: Order of the methods in the Omniglot table (by the config name's second part).
OMNIGLOT_METHODS = ("protonet", "maml", "fomaml", "reptile")


def omniglot_table(report: Table) -> list[str]:
    """Accuracy on held-out alphabets of every Omniglot run, its steps and training time.

    Rows are grouped by method, then by config in order of first appearance; a config's own
    task comes first (in bold, except in rows kept for comparison) and rows kept for
    comparison (with a ``note``) follow the config's current rows, their notes listed under
    the table.
    """
    rows = report["rows"]
    first: dict[str, int] = {}
    for index, row in enumerate(rows):
        first.setdefault(row["config"], index)

    def key(item: tuple[int, Table]) -> tuple[int, int, bool, int]:
        index, row = item
        method = row["config"].split("-")[1]
        rank = OMNIGLOT_METHODS.index(method) if method in OMNIGLOT_METHODS else len(rows)
        return rank, first[row["config"]], "note" in row, index

    lines = [
        "| config | task (held-out alphabets) | accuracy (95 % CI) | steps | training time |",
        "|---|---|---:|---:|---:|",
    ]
    notes: list[str] = []
    # Earlier runs of one config are told apart by their notes (one group each).
    earlier: dict[str, list[str]] = {}
    for row in rows:
        if "note" in row and row["note"] not in earlier.setdefault(row["config"], []):
            earlier[row["config"]].append(row["note"])
    previous: tuple[str, str | None] | None = None
    for _, row in sorted(enumerate(rows), key=key):
        group = (row["config"], row.get("note"))
        new_group = group != previous
        previous = group
        config = row["config"]
        if "note" in row:
            runs = earlier[config]
            number = f" {runs.index(row['note']) + 1}" if len(runs) > 1 else ""
            config = f"{config}, earlier run{number}"
        if "note" in row and new_group:
            notes.append(f"* {config}: {row['note']}.")
        if "error" in row:
            lines.append(f"| {config} | error: {row['error']} | | | |")
            continue
        task = row["task"].replace("within-alphabet", "within alphabet")
        accuracy = f"{row['accuracy']:.2f} ± {row['ci95']:.2f} %"
        if row.get("error_percent") is not None:
            accuracy += f" (error {row['error_percent']:.2f} %)"
        own = bool(row.get("own_task")) and "note" not in row
        seconds = row.get("train_seconds_total")
        minutes = f"{seconds / 60:.0f} min" if seconds is not None else "-"
        steps = f"{row['steps']:,}" if new_group else ""
        lines.append(
            f"| {config if new_group else ''} | {bold(task, own)} | {bold(accuracy, own)} "
            f"| {steps} | {minutes if new_group else ''} |"
        )
    if notes:
        lines += ["", "Earlier runs kept for comparison:", "", *notes]
    return lines


# -- Tiny-ImageNet ---------------------------------------------------------------------

CURVES_FIGURE = "benchmarks/results/tiny_imagenet_fs_curves.png"


def tiny_imagenet_fs(table: Table, probe: Table | None = None) -> list[str]:
    """Accuracy and cost of every Tiny-ImageNet baseline, their validation curves, the
    image-size probe and the commands that produced the rows."""
    machine = table.get("machine", {})
    lines = [
        f"Test classes `{table['test_pool']}` (32 classes never used in training or "
        f"validation), 5-way, {table['queries']} queries a class, {table['episodes']} episodes "
        "(seed 0), mean accuracy ± 95% CI. Cost of the inference network on this machine "
        f"({machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, torch "
        f"{machine.get('torch', '?')}): {table['latency']}. FLOPs per image count convolutions "
        "and matrix products, 2 per multiply-add.",
        "",
        "| config | task | accuracy % | input | params | MFLOPs/image | latency ms/image "
        "| steps | train h | best val % (step) | last val % | val gain, last quarter |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(table["rows"], key=lambda r: (r["config"].rsplit("-", 1)[1], r["config"]))
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['config']} | error: {row['error']} |||||||||||")
            continue
        curve = row.get("validation") or []
        best = max(curve, key=lambda r: r["accuracy"]) if curve else None
        best_text = f"{best['accuracy']:.2f} ({best['step']:,})" if best else "-"
        last_text = f"{curve[-1]['accuracy']:.2f}" if curve else "-"
        shape = "x".join(str(v) for v in row["input_shape"])
        hours = (row.get("train_seconds_total") or 0.0) / 3600
        lines.append(
            f"| {row['config']} | {row['task']} | {row['accuracy']:.2f} ± {row['ci95']:.2f} "
            f"| {shape} | {row['parameters']:,} | {row['flops_per_image'] / 1e6:,.1f} "
            f"| {row['latency_ms']:.2f} | {row['steps']:,} | {hours:.2f} | {best_text} "
            f"| {last_text} | {last_quarter_gain(curve)} |"
        )
    lines += [
        "",
        "Validation curves (5-way episodes of the `val` classes, as each config validates):",
        "",
        f"![validation curves]({CURVES_FIGURE})",
        "",
        "| config | validation accuracy % by step |",
        "|---|---|",
    ]
    for row in rows:
        curve = row.get("validation") or []
        points = ", ".join(f"{r['step']:,}: {r['accuracy']:.1f}" for r in curve) or "-"
        lines.append(f"| {row['config']} | {points} |")
    if probe is not None:
        lines += probe_table(probe)
    commands = table.get("commands") or [table.get("command", "")]
    lines += [
        "",
        "Commands recorded in the JSON (each with `OMP_NUM_THREADS=1`, two at a time on the "
        "two cores):",
        "",
        "```bash",
        *commands,
        "```",
    ]
    return lines


def last_quarter_gain(curve: list[dict[str, float]]) -> str:
    """Validation gain over the last quarter of training: whether a run had converged.

    ``+2.1 (rising)`` when the gain exceeds the last validation's 95% CI, else ``flat``.
    """
    if len(curve) < 2:
        return "-"
    last = curve[-1]
    threshold = 0.75 * last["step"]
    earlier = [r for r in curve if r["step"] <= threshold] or curve[:1]
    gain = last["accuracy"] - earlier[-1]["accuracy"]
    verdict = "rising" if gain > last["ci95"] else "flat"
    return f"{gain:+.1f} ({verdict})"


def probe_table(probe: Table) -> list[str]:
    """The image-size probe's table (the choice of 32x32 was made on validation classes)."""
    lines = [
        "",
        f"Image size, chosen on validation classes: {probe['config']}; {probe['note']}.",
        "",
        "| image size | steps | seconds | validation accuracy % (5-way 1-shot) |",
        "|---|---|---|---|",
    ]
    for row in probe["rows"]:
        lines.append(
            f"| {row['image_size']}x{row['image_size']} | {row['steps']} "
            f"| {row['train_seconds']:.0f} | {row['val_accuracy']:.2f} ± {row['val_ci95']:.2f} |"
        )
    return lines


# -- the registry and the document ------------------------------------------------------

#: Section name -> (JSON files under benchmarks/results/, renderer called with them loaded).
# -- MetaNAS -------------------------------------------------------------------------------


def ablation_of(config: str) -> str | None:
    """What a MetaNAS ablation config fixes, from its name (``None`` for MetaNAS itself)."""
    if "-metanas-uniform-" in config:
        return "ablation: uniform architecture, never adapted"
    if "-cell-" in config:
        return "ablation: one fixed cell"
    return None


def metanas_table(report: Table) -> list[str]:
    """MetaNAS next to the manual baselines of the same tasks: accuracy, cost, training time.

    MetaNAS's cost is that of the discrete network of the cell most tasks adapted to; the
    adapted cells themselves are listed under the table.
    """
    lines = [
        "| model | task (held-out classes) | accuracy (95 % CI) | meta-training "
        "| parameters | MFLOPs / image | CPU latency / image | distinct adapted cells |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    cells: list[str] = []
    tasks = list(dict.fromkeys(row["task"] for row in report["rows"] if "task" in row))
    for task in tasks:
        entries = [(row, True) for row in report["rows"] if row.get("task") == task]
        entries += [(row, False) for row in report.get("baselines", []) if row["task"] == task]
        for row, searched in entries:
            if "error" in row:
                lines.append(f"| {row['config']} | {task} | error: {row['error']} | | | | | |")
                continue
            seconds = row.get("train_seconds_total")
            minutes = f"{seconds / 60:.0f} min, {row['steps']:,} steps" if seconds else "-"
            ablation = ablation_of(row["config"]) if searched else None
            name = (
                row["config"]
                if not searched
                else f"{row['config']} ({ablation})"
                if ablation
                else f"**{row['config']}**"
            )
            latency = row.get("latency_ms")
            distinct = f"{row['distinct_architectures']} of {row['episodes']}" if searched else ""
            parameters = f"{row['parameters']:,}"
            flops = f"{row['flops_per_image'] / 1e6:.2f}"
            if ablation and "uniform" in ablation:
                # Every operation of the relaxation runs: no one cell's cost applies.
                parameters = flops = "whole relaxation"
                latency = row.get("relaxed_latency_ms")
            lines.append(
                f"| {name} | {task} | {row['accuracy']:.2f} ± {row['ci95']:.2f} % | {minutes} "
                f"| {parameters} | {flops} "
                f"| {f'{latency:.2f} ms' if latency is not None else '-'} | {distinct} |"
            )
            if searched and not ablation:
                shares = ", ".join(
                    f"{share['tasks']} task{'' if share['tasks'] == 1 else 's'} "
                    f"({share['accuracy']:.1f} %)"
                    for share in row.get("most_frequent", [])
                )
                cells.append(
                    f"* {row['config']}, {task}: most frequent `{row['architecture']}`; "
                    f"the five most frequent cells: {shares}; meta-architecture "
                    f"`{row['meta_architecture']}`; the whole relaxed network (every "
                    f"operation) takes {row['relaxed_latency_ms']:.2f} ms per image."
                )
    return [*lines, "", "Adapted cells:", "", *cells, *device_latency_lines(report)]


#: Devices of HELP's tables shown (all are in the JSON): GPUs, server CPUs and phones.
SHOWN_DEVICES = ("titan_rtx_1", "2080ti_1", "gold_6240", "silver_4114", "pixel3", "samsung_s7")


def device_latency_lines(report: Table) -> list[str]:
    """The measured real-device latency of the adapted cells of spaces that have a table."""
    rows = [row for row in report["rows"] if row.get("devices")]
    if not rows:
        return []
    devices = [d for d in SHOWN_DEVICES if d in rows[0]["devices"]["devices"]]
    lines = [
        "",
        "Real-device latency of the adapted cells (ms per forward pass of the benchmark's "
        "network, C = 16, N = 5, 32x32; in brackets the share of all cells of the space "
        f"that are faster on that device), from `{rows[0]['devices']['table']}`:",
        "",
        "| run, task | cell | tasks | accuracy | " + " | ".join(devices) + " |",
        "|---|---|---:|---:|" + "---:|" * len(devices),
    ]
    for row in rows:
        found = row["devices"]
        entries = [(cell["architecture"], cell) for cell in found["cells"]]
        if found.get("meta_architecture"):
            entries.append((f"meta: {row['meta_architecture']}", found["meta_architecture"]))
        for name, cell in entries:
            tasks = cell.get("tasks", "")
            accuracy = f"{cell['accuracy']:.1f} %" if "accuracy" in cell else ""
            latency = " | ".join(
                f"{cell['latency_ms'][d]:.1f} ({cell['faster_share'][d]:.0f} %)" for d in devices
            )
            cell_name = _cell(name)
            lines.append(
                f"| {row['config']}, {row['task']} | `{cell_name}` | {tasks} | {accuracy} "
                f"| {latency} |"
            )
    return lines


# -- MetaNAS against the reference implementation ---------------------------------------


def metanas_reference_table(report: Table) -> list[str]:
    """Seconds per MetaNAS meta-iteration: the patched reference against metarch.

    Lists the run-time patches of the reference, what happens without each (when probed),
    the machine, the load it was under and the command.
    """
    load = report["workload"]
    reference = report["reference"]
    warmup = report["warmup"]
    revision = (reference.get("revision") or "unknown revision")[:7]
    patches = ", ".join(f"`{name}`" for name in reference.get("patches", {}))
    lines = [
        f"Reference `{reference['repository']}` at `{revision}`, on torch "
        f"{reference.get('torch') or '?'} (peers' venv), patched at run time: "
        f"{patches or 'none'}. Workload `{load['config']}` with the warm-up off: "
        f"{load['ways']}-way, {load['shots']} shots and {load['queries']} query a class, "
        f"meta-batch {load['meta_batch']}, {load['steps']} inner mini-batches of "
        f"{load['inner_batch']} (an architecture step, then a weight step), C = "
        f"{load['channels']}, {load['cells']} cells; data: {load['data']}. One process per "
        f"implementation on {report['threads']} thread{'' if report['threads'] == 1 else 's'}, "
        f"{warmup} warm-up and "
        f"{report['iterations']} timed meta-iterations, median"
        + (f" over {report['rounds']} rounds" if report["rounds"] > 1 else "")
        + ".",
        "",
        "| implementation | s / meta-iteration | reference / this | timed iterations (s) "
        "| peak RSS |",
        "|---|---:|---:|---|---:|",
    ]
    speed = {
        row["impl"]: row["seconds_per_iteration"]
        for row in report["results"]
        if row.get("seconds_per_iteration")
    }
    for row in report["results"]:
        impl = row["impl"]
        if impl == "reference":
            name = "reference (patched)"
        else:
            ran_as = row.get("ran_as")
            shown = ran_as and not impl.endswith(ran_as)  # what ``auto`` resolved to
            name = impl_name(impl) + (f" ({ran_as})" if shown else "")
        if "error" in row:
            where = f" (`{row['where']}`)" if row.get("where") else ""
            lines.append(f"| {name} | error: {row['error']}{where} | | | |")
            continue
        took = row["seconds_per_iteration"]
        ratio = speed["reference"] / took if "reference" in speed else None
        timed = ", ".join(f"{s:.2f}" for s in row["iteration_seconds"][warmup:])
        fastest = impl != "reference" and took == min(speed.values())
        lines.append(
            f"| {bold(name, fastest)} | {took:.2f} "
            f"| {'n/a' if ratio is None else bold(f'{ratio:.2f}x', fastest)} | {timed} "
            f"| {row['peak_rss_mb']:,.0f} MB |"
        )
    if report.get("patch_probe"):
        lines += [
            "",
            "The reference without each patch (one meta-iteration):",
            "",
            "| patch left out | outcome |",
            "|---|---|",
        ]
        for probe in report["patch_probe"]:
            if probe["outcome"] == "fails":
                where = f" at `{probe['where']}`" if probe.get("where") else ""
                outcome = f"fails{where}: {probe['error']}"
            else:
                change = probe.get("meta_weights_max_change")
                moved = "n/a" if change is None else sci(change)
                outcome = f"runs; largest change of a meta-weight after the meta-step: {moved}"
            lines.append(f"| `{probe['without']}` | {outcome} |")
    machine = report.get("machine", {})
    lines += [
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; metarch on "
        f"torch {machine.get('torch', '?')}, Python {machine.get('python', '?')}."
        + (f" Note: {report['note'].rstrip('.')}." if report.get("note") else ""),
        "",
        "```bash",
        report.get("command", ""),
        "```",
    ]
    return lines


# -- hardware ----------------------------------------------------------------------------


def _mean_std(value: dict[str, float]) -> str:
    return f"{value['mean']:.3f} ± {value['std']:.3f}"


def hardware_fewshot_table(report: Table) -> list[str]:
    """Few-shot latency prediction on the table devices (HELP's protocol), per space."""
    lines: list[str] = []
    for space, part in report["fewshot"].items():
        summary = part["summary"]
        flops = "flops_spearman" in summary["overall"]
        seeds = ", ".join(str(r["seed"]) for r in part["runs"])
        cpu = statistics.fmean(r["meta_train_cpu_seconds"] for r in part["runs"])
        anchors = "; ".join(f"{name} {value:.3f}" for name, value in part["anchors"].items())
        lines += [
            f"**{space}** ({part['networks']:,} networks; meta-trained on "
            f"{', '.join(part['train_devices'])}; validated on "
            f"{', '.join(part['validation_devices'])}; {part['samples']} networks of each "
            f"test device; seeds {seeds}; {part['iterations']} meta-iterations, "
            f"{cpu:.0f} CPU s each). Mean ± spread over seeds:",
            "",
            "| test device | metarch Spearman | metarch Kendall | ridge on 10, no meta-learning "
            + ("| FLOPs |" if flops else "|"),
            "|---|---:|---:|---:" + ("|---:|" if flops else "|"),
        ]
        rows = [*summary["devices"].items(), ("**mean over devices**", summary["overall"])]
        for device, scores in rows:
            line = (
                f"| {device} | {_mean_std(scores['spearman'])} | {_mean_std(scores['kendall'])} "
                f"| {_mean_std(scores['ridge_spearman'])} |"
            )
            if flops:
                line += f" {scores['flops_spearman']['mean']:.3f} |"
            lines.append(line)
        lines += [
            "",
            f"Anchors (HELP's paper, mean Spearman on its own unseen devices): {anchors}.",
            "",
        ]
    lines += ["```bash", report["commands"]["fewshot"], "```"]
    return lines


def _seconds(value: float) -> str:
    """Seconds, in years where they run to many."""
    year = 365.25 * 24 * 3600
    return f"{value:,.0f}" if value < year else f"{value / year:,.0f} years"


def hardware_layers_table(report: Table) -> list[str]:
    """Latency models against networks measured end to end on local runtimes."""
    layers = report["layers"]
    how = layers["measurement"]
    lines = [
        f"{layers['samples']} random networks of each space measured end to end on each "
        f"runtime (one thread, batch 1; {how['rounds']} interleaved rounds of "
        f"{how['repeats']} runs, each network's fastest round), models calibrated on "
        f"{layers['calibration']} more. *retest*: the same networks measured again, scored "
        "against the first measurement (a ceiling for any model on this machine).",
    ]
    for space, result in layers["spaces"].items():
        lines += [
            "",
            f"**{space}** ({', '.join(f'{k}={v}' for k, v in result['settings'].items())})",
            "",
            "| runtime | model | Spearman | Kendall | MAPE | within ±10 % | layers | "
            "profile (s) | measure all (s, est.) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for runtime, outcome in result["runtimes"].items():
            if "error" in outcome:
                lines.append(f"| {runtime} | {outcome['error']} | | | | | | | |")
                continue
            rows = [*outcome["scores"].items(), ("*retest*", outcome["retest"])]
            for index, (model, score) in enumerate(rows):
                cost = (
                    f"{outcome['layers']} | {outcome['profile_seconds']:.1f} | "
                    f"{_seconds(outcome['measure_all_seconds_estimate'])}"
                    if index == 0
                    else " | | "
                )
                kendall = bold(f"{score['kendall']:.3f}", score["kendall"] >= 0.9)
                within = bold(f"{score['within_10']:.1f} %", score["within_10"] >= 90)
                lines.append(
                    f"| {runtime if index == 0 else ''} | {model} | {score['spearman']:.3f} "
                    f"| {kendall} | {score['mape']:.1f} % | {within} | {cost} |"
                )
    machine = report.get("machine", {})
    lines += [
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores.",
        "",
        "```bash",
        report["commands"]["layers"],
        "```",
    ]
    return lines


# -- H-Meta-NAS --------------------------------------------------------------------------


def hmetanas_table(
    report: Table,
    baselines: Table,
    metanas: Table | None = None,
    pretraining: Table | None = None,
) -> list[str]:
    """Sub-networks chosen per device and budget, tested, against the manual baselines of
    the same task (``baselines``: the published JSON holding them), MetaNAS on the same
    task (``metanas``) and the same supernet without meta-learning (``pretraining``: the
    benchmark run on a ``supernet-pretraining`` run)."""
    spec = report["baseline"]
    label = spec["label"]
    baseline, best = _manual_baselines(report, baselines)
    references = report["references"]
    lines = [
        f"H-Meta-NAS run `{report['run']}` ({report['steps']} meta-training steps"
        + (f", {report['train_seconds'] / 60:.0f} min" if report.get("train_seconds") else "")
        + f"), {label}, tested on `{report['test_pool']}` (held-out classes), "
        f"{report['episodes']} episodes (the same seeded episodes as the baselines), mean "
        f"accuracy ± 95% CI. Search: {report['search']['evaluations']} sub-networks evaluated "
        f"on {report['search']['tasks']} validation tasks each (validation classes only"
        + (", within one alphabet" if report["search"].get("within_alphabet") else "")
        + f"), seed {report['search']['seed']}. Manual baseline: `{spec['config']}` "
        f"({spec['model']}, the same meta-learner) "
        + (_percent(baseline) if baseline else "not measured")
        + (
            f"; the best manual baseline of this task: `{best['config']}` {_percent(best)}"
            if best is not None and best is not baseline
            else ""
        )
        + ". Reference networks: "
        + ", ".join(f"{name} {_percent(result)}" for name, result in references.items())
        + ".",
    ]
    if report["devices"]:
        lines += ["", *hmetanas_local_devices(report, baseline)]
    if report.get("table_devices"):
        lines += ["", *hmetanas_table_devices(report)]
    if pretraining is not None or metanas is not None:
        lines += ["", *hmetanas_comparison(report, label, metanas, pretraining)]
    if baseline is not None and report["devices"]:
        lines += ["", *hmetanas_targets(report, baseline, best)]
    if "ablation" in report:
        lines += ["", *hmetanas_ablation(report["ablation"])]
    if baseline is not None and baseline.get("train_seconds_total") and _searched(report):
        lines += ["", hmetanas_cost(report, baseline)]
    if report.get("adapt_command"):
        lines += ["", *hmetanas_adapt_command(report["adapt_command"])]
    machine = report.get("machine", {})
    lines += [
        "",
        f"![accuracy against latency](benchmarks/results/{report['figure']})",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores.",
        "",
        "```bash",
        report["command"],
        "```",
    ]
    return lines


def _manual_baselines(report: Table, baselines: Table) -> tuple[Table | None, Table | None]:
    """The report's manual baseline (same learner) and the best manual network of its task,
    from the published JSON ``baselines`` holds."""
    spec = report["baseline"]
    rows = [r for r in baselines["rows"] if r.get("task") == spec["label"] and "note" not in r]
    baseline = next((r for r in rows if r["config"] == spec["config"]), None)
    return baseline, max(rows, key=lambda r: r["accuracy"], default=None)


def hmetanas_local_devices(report: Table, baseline: Table | None) -> list[str]:
    """Searches on local devices, budgets as fractions of the baseline's measured latency."""
    remeasured = next(
        (d["remeasured"] for d in report["devices"].values() if "remeasured" in d), ""
    )
    lines = [
        "Local devices: budgets are fractions of the manual baseline's latency measured on "
        "each device when searching; **bold**: above the baseline beyond both CIs."
        + (
            f" Measured latencies re-timed after the searches ({remeasured}); the searches "
            "themselves ran beside training jobs."
            if remeasured
            else ""
        ),
        "",
        "| device | budget (x baseline) | search | sub-network | validation | test | "
        "predicted ms | measured ms | search s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for device, result in report["devices"].items():
        refs = ", ".join(f"{name} {ms:.3f}" for name, ms in result["references_ms"].items())
        then = result.get("baseline_ms_at_search")
        searched = f" ({then:.3f} at search)" if then is not None else ""
        lines.append(
            f"| {device} | baseline {result['baseline_ms']:.3f} ms{searched}; {refs} ms "
            "| | | | | | | |"
        )
        for row in result["rows"]:
            budget = f"{row['fraction']:g} ({row['budget_ms']:.3f} ms)"
            if "unreachable" in row:
                lines.append(f"| | {budget} | {row['sampler']} | {_unreachable(row)} | | | | | |")
                continue
            better = baseline is not None and _above(row, baseline)
            architecture = _cell(row["architecture"])
            lines.append(
                f"| | {budget} | {row['sampler']} | `{architecture}` | "
                f"{row['validation_accuracy']:.1f} % | {bold(_percent(row), better)} | "
                f"{row['predicted_ms']:.3f} | {row['measured_ms']:.3f} | "
                f"{row['search_seconds']:.0f} |"
            )
    return lines


def hmetanas_comparison(
    report: Table, label: str, metanas: Table | None, pretraining: Table | None
) -> list[str]:
    """H-Meta-NAS against the same supernet pre-trained without meta-learning (searched
    and tested alike, per device and budget), and MetaNAS on the same task."""
    lines = ["Against the same supernet without meta-learning and against MetaNAS:", ""]
    if pretraining is not None:
        lines += [
            f"Supervised pre-training (`{pretraining['run']}`, {pretraining['steps']} steps"
            + (
                f", on the images of {pretraining['trained_shots']}-shot episodes"
                if pretraining.get("trained_shots", pretraining.get("shots"))
                != pretraining.get("shots")
                else ""
            )
            + "), then fine-tuning per task, searched the same way and tested on "
            f"{pretraining['episodes']} episodes of the same seeded stream; largest sub-network "
            f"{_percent(pretraining['references']['largest'])}:",
            "",
            "| device | budget | H-Meta-NAS (evolution) | H-Meta-NAS (random) | "
            "pre-trained + fine-tuned (evolution) |",
            "|---|---|---:|---:|---:|",
        ]
        for kind in ("devices", "table_devices"):
            for device, theirs in pretraining.get(kind, {}).items():
                ours = report.get(kind, {}).get(device)
                if ours is None:
                    continue
                for fraction in sorted({r["fraction"] for r in theirs["rows"]}):
                    cells = [
                        _tested(ours["rows"], fraction, "evolution"),
                        _tested(ours["rows"], fraction, "random"),
                        _tested(theirs["rows"], fraction, "evolution"),
                    ]
                    lines.append(f"| {device} | {fraction:g}x | " + " | ".join(cells) + " |")
        lines.append("")
    if metanas is not None:
        for row in metanas["rows"]:
            if row.get("task") == label and "note" not in row:
                lines.append(
                    f"- MetaNAS `{row['config']}`: {_percent(row)} ({row['episodes']} "
                    f"episodes), its adapted network {row['latency_ms']:.2f} ms on torch-cpu "
                    "as published."
                )
    return lines


def _tested(rows: list[Table], fraction: float, sampler: str) -> str:
    """The test accuracy of the search at ``fraction`` by ``sampler`` (with its latency)."""
    for row in rows:
        if row["fraction"] == fraction and row["sampler"] == sampler:
            if "accuracy" not in row:
                return _unreachable(row)
            ms = row["measured_ms"] if row.get("measured_ms") is not None else row["predicted_ms"]
            return f"{_percent(row)} ({ms:.3f} ms)"
    return "not run"


def hmetanas_table_devices(report: Table) -> list[str]:
    """Searches on the devices of a whole-network table (the table's latencies)."""
    devices = report["table_devices"]
    proxy = next((d["proxy"] for d in devices.values() if d.get("proxy")), None)
    names = list(report["references"])
    lines = [
        f"Devices of `{report['table']}` (budgets: fractions of the largest cell's latency "
        "on each device; latencies are the table's measurements"
        + (f"; proxy: {proxy}" if proxy else "")
        + "). Reference networks, tested: "
        + ", ".join(f"{name} `{report['references'][name]['architecture']}` "
                    f"{_percent(report['references'][name])}" for name in names)
        + ".",
        "",
        "| device | budget (x largest) | search | cell | validation | test | table ms | "
        + " | ".join(f"{name} ms" for name in names)
        + " |",
        "|---|---|---|---|---:|---:|---:|" + "---:|" * len(names),
    ]  # fmt: skip
    for device, result in devices.items():
        refs = " | ".join(f"{result['references_ms'][name]:.2f}" for name in names)
        for row in result["rows"]:
            budget = f"{row['fraction']:g} ({row['budget_ms']:.2f} ms)"
            if "unreachable" in row:
                lines.append(
                    f"| {device} | {budget} | {row['sampler']} | unreachable | | | | {refs} |"
                )
                continue
            cell = _cell(row["architecture"])
            lines.append(
                f"| {device} | {budget} | {row['sampler']} | `{cell}` | "
                f"{row['validation_accuracy']:.1f} % | {_percent(row)} | "
                f"{row['predicted_ms']:.2f} | {refs} |"
            )
    return lines


def _unreachable(row: Table) -> str:
    """Why a search returned nothing: the budget, or the sampler's draws."""
    if "smallest network" in row["unreachable"]:
        return "none: even the smallest sub-network is over budget by the latency model"
    return "none: no sub-network within budget in the sampler's random draws"


def _searched(report: Table) -> bool:
    """Whether any search of the report found a network (and was tested)."""
    devices = [*report["devices"].values(), *report.get("table_devices", {}).values()]
    return any("accuracy" in row for result in devices for row in result["rows"])


def _percent(result: Table) -> str:
    return f"{result['accuracy']:.2f} ± {result['ci95']:.2f} %"


def _above(row: Table, baseline: Table) -> bool:
    """Above the baseline beyond both confidence intervals."""
    return bool(row["accuracy"] - row["ci95"] > baseline["accuracy"] + baseline["ci95"])


def hmetanas_targets(report: Table, baseline: Table, best: Table | None = None) -> list[str]:
    """The issue's target per device, from the evolution rows: a sub-network at least as
    accurate as the baseline within 40 % of its measured latency, and one strictly more
    accurate (beyond both CIs) within its latency; and how far the best manual baseline of
    the task (``best``, another learner's) is from every network tested."""
    lines = [
        "Target per device (evolution search; latency as measured): at least as accurate "
        "as the baseline at <= 0.4x its latency, and more accurate at <= 1x.",
        "",
        "| device | best at <= 0.4x (test) | met | best at <= 1x (test) | met |",
        "|---|---|---|---|---|",
    ]
    for device, result in report["devices"].items():
        lines.append(f"| {device} | " + " | ".join(_target_cells(result, baseline)) + " |")
    if best is not None and best is not baseline:
        tested = [r for d in report["devices"].values() for r in d["rows"] if "accuracy" in r]
        tested += [{"architecture": name} | r for name, r in report["references"].items()]
        top = max(tested, key=lambda r: r["accuracy"])
        verdict = "below it" if top["accuracy"] < best["accuracy"] else "level with or above it"
        lines += [
            "",
            f"Against the best manual baseline of the task, as the issue's target names it "
            f"(`{best['config']}`, {_percent(best)}): the most accurate network tested here, "
            f"`{_cell(top['architecture'])}` ({_percent(top)}), is {verdict}, at any latency.",
        ]
    return lines


def _target_cells(result: Table, baseline: Table) -> list[str]:
    """One device's target cells: the most accurate evolution choice measured within 0.4x
    the baseline's latency and whether it is at least as accurate, then within 1x and
    whether it is more accurate beyond both CIs."""
    cells = []
    for fraction, check in ((0.4, _at_least), (1.0, _above)):
        rows = [
            r
            for r in result["rows"]
            if r["sampler"] == "evolution"
            and "accuracy" in r
            and r["measured_ms"] <= fraction * result["baseline_ms"]
        ]
        chosen = max(rows, key=lambda r: r["accuracy"], default=None)
        if chosen is None:
            cells += ["none measured within", "no"]
        else:
            ratio = chosen["measured_ms"] / result["baseline_ms"]
            met = "yes" if check(chosen, baseline) else "no"
            cells += [f"{_percent(chosen)} at {ratio:.2f}x", met]
    return cells


def hmetanas_summary(omniglot: Table, tiny: Table, *reports: Table) -> list[str]:
    """The issue's target over every data set and local device in one table, with the
    space's latency floor (its smallest sub-network, measured) that bounds the 0.4x half."""
    published = {"omniglot.json": omniglot, "tiny_imagenet_fs.json": tiny}
    lines = [
        "The target over every data set and local device (evolution search; test accuracy, "
        "latency as measured on a quiet machine, as fractions of the manual baseline's on "
        "the same device). The smallest sub-network column is the space's latency floor: "
        "where it is above 0.4x, no sub-network can meet the first half.",
        "",
        "| task | run | manual baseline | device | smallest sub-network | best at <= 0.4x "
        "| met | best at <= 1x | met |",
        "|---|---|---|---|---:|---|---|---|---|",
    ]
    for report in reports:
        baseline, _ = _manual_baselines(report, published[report["baseline"]["results"]])
        if baseline is None:
            continue
        for device, result in report["devices"].items():
            smallest = result["references_ms"].get("smallest")
            floor = "" if smallest is None else f"{smallest / result['baseline_ms']:.2f}x"
            lines.append(
                f"| {report['task']} | `{report['run']}` | {_percent(baseline)} | {device} | "
                f"{floor} | " + " | ".join(_target_cells(result, baseline)) + " |"
            )
    return lines


def _at_least(row: Table, baseline: Table) -> bool:
    """At least as accurate: not below the baseline beyond both confidence intervals."""
    return bool(row["accuracy"] + row["ci95"] >= baseline["accuracy"] - baseline["ci95"])


def hmetanas_ablation(ablation: Table) -> list[str]:
    """How the population (pool) size and the number of evaluations change the search."""
    lines = [
        f"Search ablation on {ablation['device']} at {ablation['fraction']:g}x the baseline's "
        "latency: the genetic algorithm's population (the pool of parents, also the first "
        "random generation) and evaluations (generations = evaluations / population).",
        "",
        "| population | evaluations | validation | test | measured ms | search s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in ablation["rows"]:
        if "accuracy" not in row:
            continue
        lines.append(
            f"| {row['population']} | {row['evaluations']} | "
            f"{row['validation_accuracy']:.1f} % | {_percent(row)} | "
            f"{row['measured_ms']:.3f} | {row['search_seconds']:.0f} |"
        )
    return lines


def hmetanas_cost(report: Table, baseline: Table) -> str:
    """Seconds per (task, device, budget): search plus adaptation against retraining."""
    devices = [*report["devices"].values(), *report.get("table_devices", {}).values()]
    rows = [
        r
        for result in devices
        for r in result["rows"]
        if r["sampler"] == "evolution" and "accuracy" in r
    ]
    search = statistics.mean(r["search_seconds"] for r in rows)
    adapt = statistics.mean(r["adapt_seconds_per_task"] for r in rows)
    retrain = baseline["train_seconds_total"]
    trained = report.get("train_seconds")
    return (
        f"Cost per (task, device, budget): search {search:.0f} s on average plus {adapt:.2f} s "
        f"to adapt to one task, against {retrain / 60:.0f} min to meta-train one baseline "
        f"network ({retrain / (search + adapt):.0f}x), which a network per device and budget "
        "would need each time; the supernet's own meta-training"
        + (f" ({trained / 60:.0f} min)" if trained else "")
        + " is paid once for all tasks, devices and budgets."
    )


def _cell(text: str) -> str:
    """``text`` as one markdown table cell (architecture strings hold ``|``)."""
    return text.replace("|", "\\|")


def hmetanas_adapt_command(records: list[Table]) -> list[str]:
    """``metarch adapt`` end to end per device: the issue's 30 s bound, stage by stage."""
    lines = [
        "`metarch adapt` end to end on one test task's support folder (the CLI's defaults: "
        "a search of up to 24 sub-networks on 8 validation tasks"
        + (
            ", stopped early enough to end within the default --time-limit (sub-networks "
            "evaluated in brackets)"
            if any(r.get("evaluated") for r in records)
            else ""
        )
        + "), seconds; stages and totals of "
        "a call that finds the device's layer table cached, and of the first call on the "
        "device, which profiles it (once per device and supernet):",
        "",
        "| device | budget | chosen | stages | total | with start-up | first call |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for record in records:
        budget = f"{record['fraction']:g}x ({record['budget_ms']:.3f} ms)"
        if "error" in record:
            lines.append(f"| {record['device']} | {budget} | failed: {record['error']} | | | | |")
            continue
        stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in record["stages"].items())
        first = record.get("first_call")
        first_cell = (
            f"{first['wall_seconds']:.1f} (table {first['stages'].get('latency model', 0):.1f})"
            if first
            else ""
        )
        evaluated = f" ({record['evaluated']})" if record.get("evaluated") else ""
        lines.append(
            f"| {record['device']} | {budget} | `{_cell(record['architecture'])}`{evaluated} | "
            f"{stages} | "
            f"{record['total_seconds']:.1f} | {record['wall_seconds']:.1f} | {first_cell} |"
        )
    return lines


SECTIONS: dict[str, tuple[tuple[str, ...], Renderer]] = {
    "episodes": (("episodes.json",), episodes_table),
    "meta-step-full": (("meta_step.json",), meta_step_full),
    "meta-step-rounds": (
        ("meta_step_rounds_glibc.json", "meta_step_rounds_tcmalloc.json"),
        meta_step_rounds,
    ),
    "meta-step-compile": (("meta_step_compile.json",), meta_step_compile),
    "reptile-step": (("reptile_step.json",), reptile_step_table),
    "omniglot": (("omniglot.json",), omniglot_table),
    "tiny-imagenet-fs": (
        ("tiny_imagenet_fs.json", "tiny_imagenet_fs_image_size.json"),
        tiny_imagenet_fs,
    ),
    "metanas": (("metanas.json",), metanas_table),
    "metanas-reference": (("metanas_reference.json",), metanas_reference_table),
    "hardware-fewshot": (("hardware.json",), hardware_fewshot_table),
    "hardware-layers": (("hardware.json",), hardware_layers_table),
    "hmetanas-tiny-5w1s": (
        (
            "hmetanas-tiny-5w1s.json",
            "tiny_imagenet_fs.json",
            "metanas.json",
            "hmetanas-tiny-5w1s-pretraining.json",
        ),
        hmetanas_table,
    ),
    "hmetanas-tiny-5w1s-strided": (
        (
            "hmetanas-tiny-5w1s-strided.json",
            "tiny_imagenet_fs.json",
            "metanas.json",
        ),
        hmetanas_table,
    ),
    "hmetanas-tiny-5w1s-pretrained": (
        (
            "hmetanas-tiny-5w1s-pretrained.json",
            "tiny_imagenet_fs.json",
            "metanas.json",
            "hmetanas-tiny-5w1s-pretraining.json",
        ),
        hmetanas_table,
    ),
    "hmetanas-tiny-5w5s": (
        (
            "hmetanas-tiny-5w5s.json",
            "tiny_imagenet_fs.json",
            "metanas.json",
            "hmetanas-tiny-5w5s-pretraining.json",
        ),
        hmetanas_table,
    ),
    "hmetanas-tiny-5w5s-pretrained": (
        (
            "hmetanas-tiny-5w5s-pretrained.json",
            "tiny_imagenet_fs.json",
            "metanas.json",
            "hmetanas-tiny-5w5s-pretraining.json",
        ),
        hmetanas_table,
    ),
    "hmetanas-tiny-5w1s-nb201": (
        (
            "hmetanas-tiny-5w1s-nb201.json",
            "tiny_imagenet_fs.json",
            "metanas.json",
        ),
        hmetanas_table,
    ),
    "hmetanas-omniglot-20w1s": (
        (
            "hmetanas-omniglot-20w1s.json",
            "omniglot.json",
            "metanas.json",
            "hmetanas-omniglot-20w1s-pretraining.json",
        ),
        hmetanas_table,
    ),
    "hmetanas-omniglot-within-20w1s": (
        (
            "hmetanas-omniglot-within-20w1s.json",
            "omniglot.json",
            "metanas.json",
            "hmetanas-omniglot-within-20w1s-pretraining.json",
        ),
        hmetanas_table,
    ),
    "hmetanas-omniglot-20w1s-pretrained": (
        (
            "hmetanas-omniglot-20w1s-pretrained.json",
            "omniglot.json",
            "metanas.json",
            "hmetanas-omniglot-20w1s-pretraining.json",
        ),
        hmetanas_table,
    ),
    "hmetanas-omniglot-within-20w1s-pretrained": (
        (
            "hmetanas-omniglot-within-20w1s-pretrained.json",
            "omniglot.json",
            "metanas.json",
            "hmetanas-omniglot-within-20w1s-pretraining.json",
        ),
        hmetanas_table,
    ),
    "hmetanas-summary": (
        (
            "omniglot.json",
            "tiny_imagenet_fs.json",
            "hmetanas-omniglot-20w1s.json",
            "hmetanas-omniglot-20w1s-pretrained.json",
            "hmetanas-omniglot-within-20w1s.json",
            "hmetanas-omniglot-within-20w1s-pretrained.json",
            "hmetanas-tiny-5w1s.json",
            "hmetanas-tiny-5w1s-strided.json",
            "hmetanas-tiny-5w1s-pretrained.json",
            "hmetanas-tiny-5w5s.json",
            "hmetanas-tiny-5w5s-pretrained.json",
        ),
        hmetanas_summary,
    ),
}


class SectionError(ValueError):
    """A section's markers are missing, repeated or out of order."""


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of section ``name``."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def render(name: str, results: Path = RESULTS) -> list[str]:
    """Section ``name``'s markdown lines, from its JSON under ``results``."""
    files, renderer = SECTIONS[name]
    return renderer(*(json.loads((results / file).read_text()) for file in files))


def section_text(name: str, lines: list[str], indent: str = "") -> str:
    """The whole section, markers and provenance comment included."""
    begin, end = markers(name)
    sources = ", ".join(f"benchmarks/results/{file}" for file in SECTIONS[name][0])
    comment = f"<!-- generated by `{COMMAND}` from {sources}; do not edit by hand -->"
    body = [begin, comment, "", *lines, "", end]
    return "\n".join(f"{indent}{line}" if line else line for line in body)


def replace_section(text: str, name: str, lines: list[str]) -> str:
    """``text`` with section ``name`` (found by its markers) holding ``lines``."""
    begin, end = markers(name)
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SectionError(f"{name}: expected one {begin} and one {end}")
    start, stop = text.index(begin), text.index(end) + len(end)
    if stop < start:
        raise SectionError(f"{name}: {end} before {begin}")
    line_start = text.rfind("\n", 0, start) + 1
    indent = text[line_start:start]
    if indent.strip():
        raise SectionError(f"{name}: {begin} must start its line")
    return text[:line_start] + section_text(name, lines, indent) + text[stop:]


def regenerate(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """Every section of ``text`` regenerated, and the names of those that changed.

    Raises:
        SectionError: a section's markers are missing or malformed.
    """
    changed = []
    for name in SECTIONS:
        updated = replace_section(text, name, render(name, results))
        if updated != text:
            changed.append(name)
        text = updated
    return text, changed


def stale_sections(document: Path = DOCUMENT, results: Path = RESULTS) -> list[str]:
    """Sections of ``document`` that differ from what their JSON generates (or are missing)."""
    text = document.read_text()
    stale = []
    for name in SECTIONS:
        try:
            if replace_section(text, name, render(name, results)) != text:
                stale.append(name)
        except SectionError:
            stale.append(f"{name} (markers missing)")
    return stale


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("document", nargs="?", type=Path, default=DOCUMENT)
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a section is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_sections(args.document)
        for name in stale:
            print(f"{args.document}: section {name} differs from its JSON; run {COMMAND}")
        return 1 if stale else 0
    try:
        text, changed = regenerate(args.document.read_text())
    except SectionError as error:
        print(f"{args.document}: {error}", file=sys.stderr)
        return 1
    if changed:
        write_text_atomically(args.document, text)
    print(f"{args.document}: regenerated {', '.join(changed) or 'nothing (up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
