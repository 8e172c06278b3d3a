"""Seconds per MetaNAS meta-iteration: metarch against the reference implementation
(boschresearch/metanas, Elsken et al., CVPR 2020) on the same workload.

The reference is AGPL-3.0 and is not part of this repository. Point ``--reference`` at a
checkout of it (the folder that holds its ``metanas`` package), for instance::

    git clone https://github.com/boschresearch/metanas /tmp/metanas-ref

It pins torch 1.2 and torchmeta 1.1.1; it runs here in the peers' virtual environment
(torch 2.13 CPU, ``benchmarks/peers/setup.sh``) through
``benchmarks/peers/metanas_reference_peer.py``, which imports it from that checkout and
patches it at run time, in its own process, without editing a file of it:

* ``torchmeta``: a stand-in ``torchmeta`` package (torchmeta 1.1.1 does not install on
  torch 2.x) whose meta-batch loader feeds the driver's meta-batch to the reference's own
  task distribution (``OmniglotFewShot``, its task loaders and samplers unchanged);
* ``cpu-drop-path``: ``ops.drop_path_`` draws its mask with the CUDA-only
  ``torch.cuda.FloatTensor``; the same drop-path with the mask on the input's device;
* ``accuracy-reshape``: ``utils.accuracy`` calls ``.view`` on a non-contiguous tensor, which
  torch 2.x refuses; the same top-k precision with ``reshape``;
* ``zero-grad-keeps-tensors``: ``Optimizer.zero_grad()`` frees gradients since torch 2.0,
  which makes the reference's Reptile meta-update a silent no-op; its default is set back
  to torch 1.2's (zeroed tensors).

The peer's docstring gives the files, lines and error messages. ``--probe-patches`` runs
the reference once without each patch (one meta-iteration, untimed) and records what
happens: the error and where it was raised, or, for the last patch, that the meta-weights
do not move.

The workload is ``configs/omniglot-metanas-20w1s.yaml``'s, read from the config and given
to both sides: Omniglot 28x28, 20-way, 15 support shots and 1 query per class, meta-batch 5;
Reptile over first-order DARTS, per task 5 inner mini-batches of 20 images, each an
architecture step then a weight step (inner Adam with betas (0, 0.999), rate 0.005 for both,
weight decay 1e-3 on the architecture); C = 8, 4 cells, reductions at cells 1 and 3, 3 nodes,
pairwise input weights, drop-path 0.2, operations of weight at most 0.01 skipped,
temperature 1.0 -> 0.05; meta step 1.0 (weights) and 0.6 (architecture). The warm-up is off
on both sides (metarch ``warmup_iterations: 0``, the reference's ``warm_up_epochs`` 0), so
every meta-iteration runs the whole DARTS inner loop. Both sides get the same meta-batch at
every meta-iteration (real Omniglot ``background`` episodes with rotations when found, else
random images of the same shape: speed does not depend on pixel values).

Every implementation runs in its own process on ``--threads`` threads (default 1), does
``--warmup`` untimed meta-iterations (default 1), then ``--iterations`` timed ones (default
3); the median is reported. A metarch meta-iteration is ``zero_grad``,
``compute_meta_gradients`` and the SGD step; a reference one runs from its
``sample_meta_train()`` to the end of its ``NAS_Reptile.step`` inside its own ``train`` loop.
metarch runs twice: ``batching: auto`` (the config's; task-batched where the engine traces
the model) and ``batching: loop`` (task after task, as the reference).

Usage::

    python benchmarks/metanas_reference.py --reference DIR [--reference-revision REV]
        [--iterations 3] [--warmup 1] [--rounds 1] [--threads 1] [--probe-patches]
        [--note TEXT] [--json] [--publish | --out FILE]

The JSON goes to ``runs/benchmarks/metanas_reference.json``; ``--publish`` writes
``benchmarks/results/metanas_reference.json``, from which ``benchmarks/tables.py`` generates
BENCHMARKS.md's table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import (
    ROOT,
    add_output_arguments,
    episode_arrays,
    episode_batch,
    output_path,
    peak_rss_mb,
    repo_relative,
    rss_mb,
    write_report,
)

PEERS_PYTHON = Path(os.environ.get("PEERS_VENV", ROOT / ".venv-peers")) / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "metanas_reference_peer.py"
CONFIG = ROOT / "configs" / "omniglot-metanas-20w1s.yaml"
REFERENCE = "reference"
#: metarch's implementations: the inner learner's task batching.
OURS = {"metarch-auto": "auto", "metarch-loop": "loop"}
IMPLS = (REFERENCE, *OURS)
#: The peer's run-time patches of the reference, and why each is needed on torch 2.13 CPU.
PATCHES = {
    "torchmeta": "torchmeta 1.1.1 does not install on torch 2.x; a stand-in package feeds "
    "the driver's meta-batch to the reference's own task distribution",
    "cpu-drop-path": "ops.drop_path_ draws its mask with the CUDA-only torch.cuda.FloatTensor; "
    "the same mask on the input's device",
    "accuracy-reshape": "utils.accuracy calls .view on a non-contiguous tensor (torch 2.x "
    "refuses); the same top-k precision with reshape",
    "zero-grad-keeps-tensors": "zero_grad() frees gradients since torch 2.0, which makes the "
    "Reptile meta-update a silent no-op; its default set back to torch 1.2's (zeroed tensors)",
}


# -- the workload ------------------------------------------------------------------------


def load_settings(config: Path, batching: str = "auto") -> Any:
    """The config, with the warm-up off and the given task batching."""
    from metarch.engine.config import load_config

    overrides = ["method.options.warmup_iterations=0", f"method.options.batching={batching}"]
    return load_config(config, overrides)


def build(settings: Any) -> tuple[Any, torch.optim.Optimizer]:
    """The learner the config describes and its meta-optimizer (as the trainer makes it:
    one group per parameter group, each with its own rate)."""
    from metarch.engine.build import build_learner

    size = settings.data.image_size
    learner = build_learner(settings, (1, size, size))
    optimizer_settings = settings.optimizer
    groups = [
        {
            "params": params,
            "lr": optimizer_settings.for_group(name).lr,
            "weight_decay": optimizer_settings.for_group(name).weight_decay,
        }
        for name, params in learner.parameter_groups().items()
    ]
    if optimizer_settings.name != "sgd":
        raise SystemExit(f"{settings}: the reference's meta-optimizer is SGD")
    return learner, torch.optim.SGD(groups, lr=optimizer_settings.lr)


def workload(config: Path) -> dict[str, Any]:
    """Everything both sides need to run the same meta-iteration, read from the config."""
    settings = load_settings(config)
    learner, _ = build(settings)
    options = settings.method.options
    relaxation = learner.relaxation
    optimizer = settings.optimizer
    inner = options.get("inner_optimizer", {})
    weights_rule = inner.get("weights", {})
    architecture_rule = inner.get("architecture", {})
    if options.get("meta_learner", "reptile") != "reptile":
        raise SystemExit(f"{config}: the reference meta-learns with Reptile only")
    return {
        "config": repo_relative(config),
        "ways": settings.episodes.ways,
        "shots": settings.episodes.shots,
        "queries": settings.episodes.queries,
        "meta_batch": settings.meta_batch,
        "image_size": settings.data.image_size,
        "steps": learner.steps,
        "inner_batch": options.get("inner_batch_size", 20),
        "channels": relaxation.channels,
        "cells": relaxation.num_cells,
        "nodes": len(relaxation.alpha_normal),
        "reductions": [i for i, cell in enumerate(relaxation.cells) if cell.reduction],
        "skip_below": learner.skip_below,
        "prune_below": learner.prune_below,
        "temperature": list(learner.temperature),
        "drop_path": relaxation.drop_path,
        "weights_lr": weights_rule.get("lr", 0.005),
        "architecture_lr": architecture_rule.get("lr", 0.005),
        "architecture_weight_decay": architecture_rule.get("weight_decay", 1e-3),
        "inner_betas": list(architecture_rule.get("betas", (0.0, 0.999))),
        "meta_lr": optimizer.lr,
        "architecture_meta_lr": optimizer.for_group("architecture").lr,
        "warmup_iterations": 0,
    }


def write_batch(folder: Path, load: dict[str, Any], data_root: str | None) -> str:
    """One meta-batch of episodes (random images without Omniglot), as .npz, for every side."""
    arrays, source = episode_arrays(
        load["ways"], load["shots"], load["queries"], load["meta_batch"], data_root
    )
    np.savez(folder / "batch.npz", **arrays)  # type: ignore[arg-type]
    return source


def load_batch(path: Path) -> Any:
    return episode_batch(dict(np.load(path)))


# -- metarch worker ----------------------------------------------------------------------


def run_metarch_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    learner, optimizer = build(load_settings(Path(args.config), OURS[args.worker]))
    learner.train()
    batch = load_batch(Path(args.data))
    setup_rss = rss_mb()
    times = []
    for _ in range(args.warmup + args.iterations):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        learner.compute_meta_gradients(batch)
        optimizer.step()
        times.append(time.perf_counter() - start)
    timed = times[args.warmup :]
    result = {
        "impl": args.worker,
        "batching": OURS[args.worker],
        # ``auto`` stays ``auto`` where tasks were batched, else falls back to ``loop``.
        "ran_as": "loop" if learner.learner.batching == "loop" else "task-batched",
        "parameters": sum(p.numel() for p in learner.parameters()),
        "iterations_done": len(times),
        "iteration_seconds": times,
        "seconds_per_iteration": float(np.median(timed)) if timed else None,
        "setup_rss_mb": setup_rss,
        "peak_rss_mb": peak_rss_mb(),
    }
    print(json.dumps(result))


# -- driver ------------------------------------------------------------------------------


def run_process(
    impl: str,
    folder: Path,
    args: argparse.Namespace,
    *,
    iterations: int,
    warmup: int,
    without: tuple[str, ...] = (),
) -> dict[str, Any]:
    common = ["--data", str(folder / "batch.npz"), "--threads", str(args.threads)]
    common += ["--iterations", str(iterations), "--warmup", str(warmup)]
    if impl == REFERENCE:
        if not PEERS_PYTHON.exists():
            return {"impl": impl, "error": f"{PEERS_PYTHON} missing: run benchmarks/peers/setup.sh"}
        command = [str(PEERS_PYTHON), str(PEER_SCRIPT), "--reference", args.reference]
        command += ["--workload", (folder / "workload.json").read_text(), *common]
        if without:
            command += ["--without", *without]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, *common]
        command += ["--config", str(args.config)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return {"impl": impl, "error": tail[0]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_rounds(folder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every implementation ``--rounds`` times, alternating, each in a fresh process; the
    median over rounds is reported (each round's time kept in ``round_seconds``)."""
    rounds: dict[str, list[dict[str, Any]]] = {impl: [] for impl in args.impls}
    for _ in range(args.rounds):
        for impl in args.impls:
            result = run_process(impl, folder, args, iterations=args.iterations, warmup=args.warmup)
            rounds[impl].append(result)
            took = result.get("seconds_per_iteration")
            outcome = f"{took:.2f} s" if took else f"failed: {result.get('error')}"
            print(f"{impl}: {outcome}", file=sys.stderr)
    rows = []
    for results in rounds.values():
        timed = [r for r in results if r.get("seconds_per_iteration")]
        if not timed:
            rows.append(results[0])
            continue
        seconds = [float(r["seconds_per_iteration"]) for r in timed]
        rows.append(
            {
                **timed[0],
                "seconds_per_iteration": float(np.median(seconds)),
                "round_seconds": seconds,
                "peak_rss_mb": max(float(r["peak_rss_mb"]) for r in timed),
            }
        )
    return rows


def probe_patches(folder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The reference without each patch in turn: one untimed meta-iteration, and what happens."""
    probes = []
    for patch in PATCHES:
        result = run_process(REFERENCE, folder, args, iterations=1, warmup=0, without=(patch,))
        probe: dict[str, Any] = {"without": patch}
        if "error" in result:
            probe["outcome"] = "fails"
            probe["error"] = result["error"]
            probe["where"] = result.get("where")
        else:
            probe["outcome"] = "runs"
            probe["meta_weights_max_change"] = result.get("meta_weights_max_change")
        probes.append(probe)
        print(f"without {patch}: {probe['outcome']}", file=sys.stderr)
    return probes


def source_digest(reference: Path) -> str:
    """SHA-256 over the reference's Python files (path and content, sorted by path)."""
    digest = hashlib.sha256()
    for path in sorted((reference / "metanas").rglob("*.py")):
        digest.update(path.relative_to(reference).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def reference_revision(reference: Path, given: str | None) -> str | None:
    if given:
        return given
    done = subprocess.run(
        ["git", "-C", str(reference), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", default=None, help="checkout of boschresearch/metanas")
    parser.add_argument("--reference-revision", default=None, help="recorded in the JSON")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--iterations", type=int, default=3, help="timed meta-iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed meta-iterations first")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of every impl")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument(
        "--probe-patches", action="store_true", help="also run the reference without each patch"
    )
    parser.add_argument("--note", default=None, help="recorded in the JSON (machine load, ...)")
    parser.add_argument("--json", action="store_true")
    add_output_arguments(parser, "metanas_reference")
    parser.add_argument("--worker", default=None, choices=list(OURS), help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_metarch_worker(args)
        return
    if REFERENCE in args.impls or args.probe_patches:
        if args.reference is None:
            parser.error("--reference DIR is needed to run the reference")
        reference = Path(args.reference).expanduser().resolve()
        if not (reference / "metanas" / "metanas_main.py").is_file():
            parser.error(f"--reference {reference}: no metanas/metanas_main.py there")
        args.reference = str(reference)

    load = workload(args.config)
    probes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = write_batch(folder, load, args.data_root)
        (folder / "workload.json").write_text(json.dumps(load))
        rows = run_rounds(folder, args)
        if args.probe_patches:
            probes = probe_patches(folder, args)

    speed: dict[str, float] = {
        r["impl"]: float(r["seconds_per_iteration"]) for r in rows if r.get("seconds_per_iteration")
    }
    ratios = {
        f"reference_over_{impl.replace('-', '_')}": speed[REFERENCE] / speed[impl]
        for impl in OURS
        if REFERENCE in speed and impl in speed
    }
    reference_info: dict[str, Any] = {"repository": "boschresearch/metanas"}
    if args.reference:
        reference_info["revision"] = reference_revision(
            Path(args.reference), args.reference_revision
        )
        reference_info["source_sha256"] = source_digest(Path(args.reference))
        reference_info["patches"] = PATCHES
    peer = next((r for r in rows if r["impl"] == REFERENCE), {})
    report = {
        "benchmark": "metanas_reference",
        "workload": {**load, "data": source},
        "reference": {**reference_info, "torch": peer.get("torch")},
        "threads": args.threads,
        "warmup": args.warmup,
        "iterations": args.iterations,
        "rounds": args.rounds,
        "results": rows,
        "ratios": ratios,
        "patch_probe": probes,
        "note": args.note,
    }
    out = output_path(args, "metanas_reference")
    if write_report(report, out, as_json=args.json):
        return
    print(f"workload: {load['config']}, warm-up off; data: {source}; threads: {args.threads}")
    print(f"{'impl':<16}{'s/iter':>9}{'ref/this':>10}{'RSS MB':>8}  iterations (s)")
    for row in rows:
        if "error" in row:
            print(f"{row['impl']:<16}  {row['error']} ({row.get('where')})")
            continue
        took = row["seconds_per_iteration"]
        ratio = speed[REFERENCE] / took if REFERENCE in speed else float("nan")
        each = ", ".join(f"{s:.2f}" for s in row["iteration_seconds"])
        print(f"{row['impl']:<16}{took:>9.2f}{ratio:>10.2f}{row['peak_rss_mb']:>8.0f}  {each}")
    for probe in probes:
        outcome = (
            probe.get("error") or f"runs; meta-weights moved {probe['meta_weights_max_change']}"
        )
        print(f"without {probe['without']}: {outcome} ({probe.get('where')})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
