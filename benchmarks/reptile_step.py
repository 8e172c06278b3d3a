"""Reptile meta-iterations per second: the shared core (loop, task-batched) against the
pre-core implementation (a deep copy and ``torch.optim.Adam`` per task).

The Omniglot workload of ``configs/omniglot-reptile-5w1s.yaml``: Conv-4 (64 filters,
max-pooling, batch statistics), 28x28 images, 5-way, 10 examples per class (1 shot and 9
others, all trained on), meta-batch 5, 5 inner Adam steps (``beta1 = 0``, rate 1e-3) on
mini-batches of 10, the inner Adam state carried from meta-batch to meta-batch, then an
outer SGD step. The query loss and accuracy of every task are measured after adaptation,
as training reports them.

``imperative`` is Reptile as metarch ran it before the shared core: every task trains a
``copy.deepcopy`` of the model with ``torch.optim.Adam`` (its second moment loaded from
the carried state), one task after another, in train mode. It is kept here, not in the
library, as the baseline the core must beat at equal results.

Every implementation runs in its own process from the same weights on the same meta-batch
of real Omniglot episodes with the same mini-batch draws, and reports the median seconds
per meta-iteration and its peak RSS. Equal results: every implementation's first
meta-gradient is compared with the imperative one computed in float64 (relative L2
distance; float32 implementations differ from it by their rounding errors, which a fresh
Adam's first step, ``lr * sign(g)``, amplifies where a gradient is near zero, so the
carried state starts from a fixed warm value).

Usage::

    python benchmarks/reptile_step.py [--iterations 5] [--rounds 3] [--threads 2]
        [--impls imperative metarch-loop metarch-batched] [--json] [--publish | --out FILE]
"""

from __future__ import annotations

import argparse
import copy
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import (
    add_output_arguments,
    episode_arrays,
    episode_batch,
    output_path,
    print_worker_result,
    rss_mb,
    write_report,
)

WAYS, SHOTS, QUERIES, TASKS = 5, 1, 9, 5
INNER_LR, STEPS, INNER_BATCH = 1e-3, 5, 10
#: The warm carried second moment every implementation starts from (see the docstring).
WARM_SECOND_MOMENT, WARM_COUNT = 1e-4, 1000
IMPLS: dict[str, dict[str, Any]] = {
    "imperative": {},
    "metarch-loop": {"batching": "loop"},
    "metarch-batched": {"batching": "batched"},
    # One shard per thread (the last task alone on all threads when one is left over).
    "metarch-batched-shards": {"batching": "batched", "task_threads": None},
}
REFERENCE = "imperative-float64"


def build_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    from metarch.models import FewShotClassifier, create_model

    torch.manual_seed(0)
    return FewShotClassifier(create_model("conv4"), WAYS, (1, 28, 28)).to(dtype)


def write_batch(folder: Path, data_root: str | None) -> str:
    """One meta-batch of Omniglot episodes (random images without Omniglot) as .npz."""
    arrays, source = episode_arrays(WAYS, SHOTS, QUERIES, TASKS, data_root)
    np.savez(folder / "batch.npz", **arrays)  # type: ignore[arg-type]
    return source


def load_batch(folder: Path, dtype: torch.dtype) -> Any:
    return episode_batch(dict(np.load(folder / "batch.npz")), dtype)


class ImperativeReptile:
    """The pre-core Reptile: a deep copy and torch.optim.Adam per task (carried state)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        size = sum(p.numel() for p in model.parameters())
        dtype = next(model.parameters()).dtype
        self.second_moment = torch.full((size,), WARM_SECOND_MOMENT, dtype=dtype)
        self.count = WARM_COUNT

    def compute_meta_gradients(self, batch: Any) -> None:
        from metarch.meta.reptile import _draw_mini_batches

        x = torch.cat([batch.support_images, batch.query_images], dim=1)
        y = torch.cat([batch.support_labels, batch.query_labels], dim=1)
        batches = _draw_mini_batches(TASKS, x.shape[1], INNER_BATCH, STEPS, x.device)
        assert batches is not None
        meta = list(self.model.parameters())
        differences = [torch.zeros_like(p) for p in meta]
        moments = torch.zeros_like(self.second_moment)
        for t in range(TASKS):
            learner = copy.deepcopy(self.model).train()
            optimizer = torch.optim.Adam(learner.parameters(), lr=INNER_LR, betas=(0.0, 0.999))
            offset = 0
            for parameter in learner.parameters():
                size = parameter.numel()
                optimizer.state[parameter] = {
                    "step": torch.tensor(float(self.count)),
                    "exp_avg": torch.zeros_like(parameter),
                    "exp_avg_sq": self.second_moment[offset : offset + size]
                    .view_as(parameter)
                    .clone(),
                }
                offset += size
            for step in range(STEPS):
                index = batches[step][t]
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(learner(x[t][index]), y[t][index]).backward()
                optimizer.step()
            moments += torch.cat(
                [optimizer.state[p]["exp_avg_sq"].flatten() for p in learner.parameters()]
            )
            with torch.no_grad():
                for difference, theta, adapted in zip(
                    differences, meta, learner.parameters(), strict=True
                ):
                    difference.add_(theta - adapted, alpha=1.0 / TASKS)
                outputs = learner(batch.query_images[t])
                float(nn.functional.cross_entropy(outputs, batch.query_labels[t]))
        self.second_moment = moments / TASKS
        self.count += STEPS
        for theta, difference in zip(meta, differences, strict=True):
            theta.grad = difference if theta.grad is None else theta.grad + difference


def make_learner(impl: str, model: nn.Module) -> Any:
    if impl in ("imperative", REFERENCE):
        return ImperativeReptile(model)
    from metarch.meta import Reptile

    learner = Reptile(
        model, inner_lr=INNER_LR, steps=STEPS, inner_batch_size=INNER_BATCH, **IMPLS[impl]
    )
    learner.get_buffer("inner_adam_second_moment").fill_(WARM_SECOND_MOMENT)
    learner.get_buffer("inner_adam_step").fill_(WARM_COUNT)
    return learner


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.worker == REFERENCE else torch.float32
    model = build_model(dtype)
    batch = load_batch(Path(args.data), dtype)
    learner = make_learner(args.worker, model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    setup_rss = rss_mb()
    times = []
    for iteration in range(args.iterations + 1):
        torch.manual_seed(1 + iteration)  # the same mini-batch draws in every implementation
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        learner.compute_meta_gradients(batch)
        if iteration == 0 and args.grad_out:
            grads = [
                p.grad.detach().double().flatten() for p in model.parameters() if p.grad is not None
            ]
            np.save(args.grad_out, torch.cat(grads).numpy())
        optimizer.step()
        if iteration > 0:
            times.append(time.perf_counter() - start)
    print_worker_result(args.worker, times, setup_rss)


def run_process(impl: str, folder: Path, iterations: int, threads: int) -> dict[str, Any]:
    grad_out = folder / f"grad-{impl}.npy"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", impl]
    command += ["--data", str(folder), "--iterations", str(iterations)]
    command += ["--threads", str(threads), "--grad-out", str(grad_out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["failed"]
        return {"impl": impl, "error": tail[0]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["grad"] = np.load(grad_out)
    return result


def relative_distance(grad: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(grad - reference) / np.linalg.norm(reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--iterations", type=int, default=5, help="timed, after one warm-up")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of every impl")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    parser.add_argument("--json", action="store_true")
    add_output_arguments(parser, "reptile_step")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--grad-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = write_batch(folder, args.data_root)
        reference = run_process(REFERENCE, folder, 0, args.threads)
        rounds: dict[str, list[dict[str, Any]]] = {impl: [] for impl in args.impls}
        # Alternating rounds expose every implementation to the same drift of the machine.
        for _ in range(args.rounds):
            for impl in args.impls:
                rounds[impl].append(run_process(impl, folder, args.iterations, args.threads))
    rows: list[dict[str, Any]] = []
    for impl, results in rounds.items():
        timed = [r for r in results if r.get("seconds_per_iteration")]
        if not timed:
            rows.append({"impl": impl, "error": results[0].get("error", "no timing")})
            continue
        seconds = [float(r["seconds_per_iteration"]) for r in timed]
        row: dict[str, Any] = {
            "impl": impl,
            "seconds_per_iteration": float(np.median(seconds)),
            "round_seconds": seconds,
            "peak_rss_mb": max(float(r["peak_rss_mb"]) for r in timed),
            "setup_rss_mb": float(timed[0]["setup_rss_mb"]),
        }
        if "grad" in reference:
            row["relative_grad_distance_vs_float64"] = relative_distance(
                timed[0]["grad"], reference["grad"]
            )
        rows.append(row)
    speed = {r["impl"]: r["seconds_per_iteration"] for r in rows if "seconds_per_iteration" in r}
    base = speed.get("imperative")
    for row in rows:
        if base and "seconds_per_iteration" in row:
            row["speedup_vs_imperative"] = base / row["seconds_per_iteration"]
    report = {
        "benchmark": "reptile_step",
        "workload": {
            "model": "Conv-4 64 filters, max-pooling, batch statistics, 28x28",
            "ways": WAYS,
            "examples_per_class": SHOTS + QUERIES,
            "meta_batch": TASKS,
            "inner_steps": STEPS,
            "inner_batch": INNER_BATCH,
            "inner_lr": INNER_LR,
            "data": source,
        },
        "threads": args.threads,
        "results": rows,
    }
    out = output_path(args, "reptile_step")
    if write_report(report, out, as_json=args.json):
        return
    print(f"threads: {args.threads}; data: {source}")
    print(f"{'impl':<18}{'s/iter':>9}{'x imperative':>14}{'RSS MB':>8}{'|dg|/|g| vs f64':>17}")
    for r in rows:
        if "error" in r:
            print(f"{r['impl']:<18}  {r['error']}")
            continue
        print(
            f"{r['impl']:<18}{r['seconds_per_iteration']:>9.3f}"
            f"{r.get('speedup_vs_imperative', float('nan')):>14.2f}{r['peak_rss_mb']:>8.0f}"
            f"{r.get('relative_grad_distance_vs_float64', float('nan')):>17.2e}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
