"""Does torch.compile pay for second-order MAML on the CPU? The meta_step workload, compiled.

The workload of ``benchmarks/meta_step.py`` (Conv-4-64 with batch norm, 28x28, 5-way
1-shot, 15 queries per class, meta-batch 32, one inner step of 0.4, second order, the same
weights and Omniglot episodes), written as one pure function of the parameters with
torch.func, the form torch.compile (TorchDynamo + Inductor) can capture whole: the inner
gradient is ``torch.func.grad``, the meta-gradient ``torch.func.grad`` of the task-averaged
query loss. Variants, each in a fresh process:

* ``eager-loop``: a Python loop over the tasks, eager (the baseline; checked against
  metarch's MAML meta-gradient on the same inputs);
* ``compiled-loop``: the same, compiled; Dynamo unrolls the loop, so compile time grows with
  the tasks: it is measured on ``--compile-tasks`` tasks, next to ``eager-loop`` on the
  same tasks, and per-iteration times are scaled to 32 tasks;
* ``eager-vmap``: ``torch.func.vmap`` over the tasks (batch norm with batch statistics and
  no running buffers, so per-task statistics are exact);
* ``compiled-vmap``: the same, compiled.

Reported: compile time (first call minus a steady call), seconds per meta-iteration (median
of ``--iterations`` calls after the first), peak RSS, and the largest difference of the
meta-gradient from the eager loop's.

Usage::

    python benchmarks/meta_step_compile.py [--threads 2] [--iterations 3]
        [--compile-tasks 4] [--variants ...] [--json] [--publish | --out FILE]

The JSON goes to ``runs/benchmarks/meta_step_compile.json``; ``--publish`` writes the
published ``benchmarks/results/meta_step_compile.json`` instead (BENCHMARKS.md's table is
generated from it by ``benchmarks/tables.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import meta_step  # noqa: E402 (benchmarks are scripts, not a package)
from report import add_output_arguments, output_path, peak_rss_mb, write_report  # noqa: E402

VARIANTS = ("eager-loop", "compiled-loop", "eager-vmap", "compiled-vmap")
Params = dict[str, Tensor]


def forward(params: Params, images: Tensor) -> Tensor:
    """MAML's Omniglot Conv-4 (strided, batch statistics) on canonical parameter names."""
    x = images
    for layer in range(4):
        x = F.conv2d(x, params[f"conv{layer}.weight"], params[f"conv{layer}.bias"], 2, 1)
        x = F.batch_norm(
            x, None, None, params[f"bn{layer}.weight"], params[f"bn{layer}.bias"], training=True
        )
        x = F.relu(x)
    return F.linear(x.mean(dim=(2, 3)), params["head.weight"], params["head.bias"])


def loss(params: Params, images: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(forward(params, images), labels)


def task_loss(params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
    """Query loss after one second-order inner step on the support set."""
    grads = torch.func.grad(loss)(params, sx, sy)
    adapted = {name: p - meta_step.INNER_LR * grads[name] for name, p in params.items()}
    return loss(adapted, qx, qy)


def loop_meta_loss(params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
    total = task_loss(params, sx[0], sy[0], qx[0], qy[0])
    for t in range(1, sx.shape[0]):
        total = total + task_loss(params, sx[t], sy[t], qx[t], qy[t])
    return total / sx.shape[0]


def vmap_meta_loss(params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
    per_task = torch.func.vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(params, sx, sy, qx, qy)
    return per_task.mean()


def metarch_gradient(weights: dict[str, np.ndarray], batch: Any) -> dict[str, np.ndarray]:
    """metarch's MAML meta-gradient (loop) on the same inputs, in canonical names."""
    learner, own = meta_step.metarch_learner("metarch-loop", 1, False, weights)
    learner.compute_meta_gradients(batch)
    return {
        name: own[meta_step.canonical_to_metarch(name)].grad.reshape(value.shape).numpy()
        for name, value in weights.items()
    }


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    weights, batch = meta_step.load_inputs(Path(args.data))
    tasks = args.tasks
    inputs = (
        batch.support_images[:tasks],
        batch.support_labels[:tasks],
        batch.query_images[:tasks],
        batch.query_labels[:tasks],
    )
    params = {name: torch.from_numpy(value) for name, value in weights.items()}
    meta_loss = vmap_meta_loss if args.worker.endswith("vmap") else loop_meta_loss
    meta_gradient: Callable[..., Params] = torch.func.grad(meta_loss)
    if args.worker.startswith("compiled"):
        meta_gradient = torch.compile(meta_gradient)
    times = []
    grads: Params = {}
    for _ in range(args.iterations + 1):
        start = time.perf_counter()
        grads = meta_gradient(params, *inputs)
        times.append(time.perf_counter() - start)
    result: dict[str, Any] = {
        "variant": args.worker,
        "tasks": tasks,
        "first_call_seconds": times[0],
        "seconds_per_iteration": float(np.median(times[1:])),
        "peak_rss_mb": peak_rss_mb(),
    }
    result["compile_seconds"] = max(0.0, times[0] - result["seconds_per_iteration"])
    arrays = {k: v.detach().numpy() for k, v in grads.items()}
    np.savez(Path(args.grad_out), **arrays)  # type: ignore[arg-type]
    if args.check_metarch:
        ours = metarch_gradient(weights, batch)
        result["max_abs_diff_vs_metarch_loop"] = max(
            float(np.abs(ours[k] - grads[k].detach().numpy()).max()) for k in ours
        )
    print(json.dumps(result))


def spawn(
    variant: str, tasks: int, folder: Path, args: argparse.Namespace, check: bool = False
) -> dict[str, Any]:
    grad_out = folder / f"grad-{variant}-{tasks}.npz"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", variant]
    command += ["--data", str(folder), "--tasks", str(tasks), "--threads", str(args.threads)]
    command += ["--iterations", str(args.iterations), "--grad-out", str(grad_out)]
    if check:
        command.append("--check-metarch")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["failed"]
        return {"variant": variant, "tasks": tasks, "error": tail[0]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["grad_file"] = str(grad_out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--compile-tasks", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    add_output_arguments(parser, "meta_step_compile")
    parser.add_argument("--json", action="store_true")
    # Worker mode (internal).
    parser.add_argument("--worker", choices=VARIANTS)
    parser.add_argument("--data")
    parser.add_argument("--tasks", type=int, default=meta_step.TASKS)
    parser.add_argument("--grad-out")
    parser.add_argument("--check-metarch", action="store_true")
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    if not 1 <= args.compile_tasks <= meta_step.TASKS:
        parser.error(f"--compile-tasks must be in 1..{meta_step.TASKS}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = meta_step.write_inputs(folder, args.data_root)
        rows: list[dict[str, Any]] = []
        # The eager loop on all tasks is the reference; on the compiled loop's tasks too.
        reference = spawn("eager-loop", meta_step.TASKS, folder, args, check=True)
        rows.append(reference)
        small_reference: dict[str, Any] | None = None
        for variant in args.variants:
            if variant == "eager-loop":
                continue
            if variant == "compiled-loop":
                small_reference = spawn("eager-loop", args.compile_tasks, folder, args)
                rows.append(small_reference)
                rows.append(spawn(variant, args.compile_tasks, folder, args))
            else:
                rows.append(spawn(variant, meta_step.TASKS, folder, args))
        for row in rows:
            if "error" in row:
                continue
            row["seconds_per_32_tasks"] = (
                row["seconds_per_iteration"] * meta_step.TASKS / row["tasks"]
            )
            base = reference if row["tasks"] == meta_step.TASKS else small_reference
            if base is not None and "grad_file" in base and row is not base:
                row["max_abs_grad_diff"] = meta_step.max_abs_diff(
                    base["grad_file"], row["grad_file"]
                )
        for row in rows:
            row.pop("grad_file", None)
            if "error" not in row and "error" not in reference:
                row["speed_vs_eager_loop"] = (
                    reference["seconds_per_32_tasks"] / row["seconds_per_32_tasks"]
                )
    report = {
        "workload": "second-order MAML, 1 inner step, Conv-4-64 BN, 5-way 1-shot, 15 queries, "
        "meta-batch 32 (benchmarks/meta_step.py), as one torch.func function",
        "inputs": source,
        "threads": args.threads,
        "torch": torch.__version__,
        "rows": rows,
    }
    header = f"{'variant':<15}{'tasks':>6}{'compile s':>11}{'s/iter (32)':>13}{'vs eager':>10}"
    header += f"{'peak MB':>9}{'grad diff':>11}"
    lines = [header]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['variant']:<15}{row['tasks']:>6}  error: {row['error']}")
            continue
        diff = row.get("max_abs_grad_diff", row.get("max_abs_diff_vs_metarch_loop"))
        lines.append(
            f"{row['variant']:<15}{row['tasks']:>6}{row['compile_seconds']:>11.1f}"
            f"{row['seconds_per_32_tasks']:>13.2f}{row['speed_vs_eager_loop']:>9.2f}x"
            f"{row['peak_rss_mb']:>9.0f}{diff if diff is not None else float('nan'):>11.1e}"
        )
    if not write_report(report, output_path(args, "meta_step_compile"), as_json=args.json):
        print("\n".join(lines))


if __name__ == "__main__":
    main()
