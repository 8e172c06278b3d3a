"""Episodes per second: metarch's sampler against learn2learn's task sampler, in one run.

Both libraries sample from the same decoded Omniglot background set (964 classes, 28x28,
held in memory), so only task sampling is measured, never PNG decoding. learn2learn runs in
its own virtual environment (``benchmarks/peers/setup.sh``) in a subprocess, through
``benchmarks/peers/l2l_episodes.py``, with its documented pipeline: ``MetaDataset`` +
``TaskDataset`` with ``NWays``, ``KShots``, ``LoadData``, ``RemapLabels`` and
``ConsecutiveLabels``, then the support/query split of its MAML example.

metarch is measured two ways: one episode per call (``tasks=1``), and a meta-batch of 32
per call (how training uses it). ``ratio_vs_learn2learn`` is the smallest, over episode
shapes, of metarch's meta-batch rate divided by learn2learn's rate; the one-per-call ratio
is reported beside it.

Usage::

    python benchmarks/episodes.py [--data-root DIR] [--seconds 3] [--json]
        [--publish | --out FILE]

The JSON goes to ``runs/benchmarks/episodes.json``; ``--publish`` writes the published
``benchmarks/results/episodes.json`` instead (BENCHMARKS.md's table is generated from it by
``benchmarks/tables.py``).
"""

from __future__ import annotations

import argparse
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

from metarch.data.episodes import EpisodeSampler
from metarch.data.omniglot import load_omniglot
from metarch.data.pools import ClassPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import add_output_arguments, output_path, write_report

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = Path(os.environ.get("PEERS_VENV", ROOT / ".venv-peers")) / "bin" / "python"
SHAPES = [(5, 1, 15), (20, 1, 5)]
META_BATCH = 32


def shape_name(ways: int, shots: int, queries: int) -> str:
    return f"{ways}w{shots}s{queries}q"


def rate(sample: Any, episodes_per_call: int, seconds: float, repeats: int = 3) -> float:
    """Best of ``repeats`` windows of ``seconds``: episodes per second."""
    sample(0)  # warm-up
    best = 0.0
    call = 1
    for _ in range(repeats):
        calls = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            sample(call)
            call += 1
            calls += 1
        best = max(best, calls * episodes_per_call / elapsed)
    return best


def measure_metarch(pool: ClassPool, seconds: float) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for ways, shots, queries in SHAPES:
        sampler = EpisodeSampler(pool, ways, shots, queries, seed=0)
        results[shape_name(ways, shots, queries)] = {
            "per_call": rate(lambda i, s=sampler: s.sample(1, i), 1, seconds),
            "meta_batch": rate(lambda i, s=sampler: s.sample(META_BATCH, i), META_BATCH, seconds),
        }
    return results


def measure_learn2learn(images: np.ndarray, offsets: np.ndarray, seconds: float) -> dict[str, Any]:
    if not PEERS_PYTHON.exists():
        return {"error": f"{PEERS_PYTHON} not found; run benchmarks/peers/setup.sh"}
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "images.npy", images)
        np.save(Path(folder) / "offsets.npy", offsets)
        command = [
            str(PEERS_PYTHON),
            str(ROOT / "benchmarks" / "peers" / "l2l_episodes.py"),
            "--data",
            folder,
            "--seconds",
            str(seconds),
            "--shapes",
            ",".join(shape_name(*s) for s in SHAPES),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one timing window")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_output_arguments(parser, "episodes")
    args = parser.parse_args()
    out = output_path(args, "episodes")

    torch.set_num_threads(1)
    background = load_omniglot("background", args.data_root)
    pool = ClassPool.whole(background)
    ours = measure_metarch(pool, args.seconds)
    ours_rotated = measure_metarch(pool.with_rotations(), args.seconds)
    peer = measure_learn2learn(background.images, background.class_offsets, args.seconds)

    episodes_per_s: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float]] = {}
    for shape, ours_rates in ours.items():
        episodes_per_s[shape] = {
            "metarch_meta_batch": ours_rates["meta_batch"],
            "metarch_per_call": ours_rates["per_call"],
            "metarch_rotations_meta_batch": ours_rotated[shape]["meta_batch"],
        }
        if "rates" in peer:
            l2l = float(peer["rates"][shape])
            episodes_per_s[shape]["learn2learn"] = l2l
            ratios[shape] = {
                "meta_batch": ours_rates["meta_batch"] / l2l,
                "per_call": ours_rates["per_call"] / l2l,
            }
    report: dict[str, Any] = {
        "benchmark": "episodes",
        "episodes_per_s": episodes_per_s,
        "ratio_vs_learn2learn": min((r["meta_batch"] for r in ratios.values()), default=None),
        "ratio_vs_learn2learn_per_call": min(
            (r["per_call"] for r in ratios.values()), default=None
        ),
        "ratios": ratios,
        "learn2learn": {k: v for k, v in peer.items() if k != "rates"},
        "meta_batch": META_BATCH,
        "image_size": 28,
        "classes": background.num_classes,
    }
    if write_report(report, out, as_json=args.json):
        return
    print(f"{'shape':<12}{'metarch x32':>14}{'metarch x1':>13}{'learn2learn':>13}{'ratio x32':>11}")
    for shape, rates in episodes_per_s.items():
        l2l = rates.get("learn2learn", float("nan"))
        ratio = ratios.get(shape, {}).get("meta_batch", float("nan"))
        print(
            f"{shape:<12}{rates['metarch_meta_batch']:>14.0f}{rates['metarch_per_call']:>13.0f}"
            f"{l2l:>13.0f}{ratio:>11.1f}"
        )
    if "error" in peer:
        print(f"learn2learn not measured: {peer['error']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
