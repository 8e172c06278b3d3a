"""MAML meta-iterations per second: metarch against learn2learn, higher and TorchOpt.

The standard MAML Omniglot workload: Conv-4 (64 filters, stride 2, batch norm with batch
statistics), 28x28 images, 5-way 1-shot, 15 queries per class, meta-batch 32, inner
learning rate 0.4; inner steps 1 and 5; second and first order. Every implementation runs
in its own process (peers in the peers' virtual environment, see
``benchmarks/peers/setup.sh``) from the same initial weights on the same meta-batch of
real Omniglot episodes, and reports the median seconds per meta-iteration (meta-gradient
plus an Adam step) and its peak RSS. The first meta-gradient of every implementation is
compared with learn2learn's. FLOPs of the workload are counted with
``torch.utils.flop_counter`` on metarch's loop, and the float32 GEMM peak of the machine is
measured in the same run, so achieved GFLOP/s can be put against it.

Usage::

    python benchmarks/meta_step.py [--iterations 3] [--steps 1 5] [--orders second first]
        [--impls metarch-loop metarch-vmap learn2learn higher torchopt] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import peak_rss_mb  # noqa: E402 (benchmarks are scripts, not a package)

PEERS_PYTHON = Path(os.environ.get("PEERS_VENV", ROOT / ".venv-peers")) / "bin" / "python"
PEERS = ("learn2learn", "higher", "torchopt")
OURS = ("metarch-loop", "metarch-vmap", "metarch-batched")
WAYS, SHOTS, QUERIES, TASKS, INNER_LR = 5, 1, 15, 32, 0.4


# -- shared inputs -----------------------------------------------------------------------


def canonical_to_metarch(name: str) -> str:
    """Canonical parameter names (shared with the peers' worker) -> metarch's names."""
    if name.startswith("head."):
        return name
    kind, field = name.split(".")
    layer = int(kind[-1])
    return f"backbone.blocks.{layer}.{0 if kind.startswith('conv') else 1}.{field}"


def build_metarch_model(seed: int = 0) -> nn.Module:
    from metarch.models import FewShotClassifier, create_model

    torch.manual_seed(seed)
    return FewShotClassifier(create_model("conv4-strided"), WAYS, (1, 28, 28))


def write_inputs(folder: Path, data_root: str | None) -> str:
    """Initial weights and one meta-batch, as .npz files every worker reads."""
    model = build_metarch_model()
    own = dict(model.named_parameters())
    names = [f"{k}{i}.{f}" for i in range(4) for k in ("conv", "bn") for f in ("weight", "bias")]
    names += ["head.weight", "head.bias"]
    # metarch's batch-norm parameters are (slots=1, C); the canonical form is (C,).
    weights = {
        n: own[canonical_to_metarch(n)]
        .detach()
        .reshape(-1 if n.startswith("bn") else own[canonical_to_metarch(n)].shape)
        .numpy()
        for n in names
    }
    np.savez(folder / "weights.npz", **weights)  # type: ignore[arg-type]
    source = "random images (Omniglot not found)"
    try:
        from metarch.data.episodes import EpisodeSampler
        from metarch.data.omniglot import load_omniglot
        from metarch.data.pools import ClassPool

        background = load_omniglot("background", data_root)
        pool = ClassPool.whole(background).with_rotations()
        batch = EpisodeSampler(pool, WAYS, SHOTS, QUERIES, seed=0).sample(TASKS)
        arrays = {
            "support_x": batch.support_images.numpy(),
            "support_y": batch.support_labels.numpy(),
            "query_x": batch.query_images.numpy(),
            "query_y": batch.query_labels.numpy(),
        }
        source = "Omniglot background with rotations, seed 0"
    except Exception:  # the benchmark still runs, on random images
        generator = torch.Generator().manual_seed(0)
        labels = torch.arange(WAYS)
        arrays = {
            "support_x": torch.rand(TASKS, WAYS * SHOTS, 1, 28, 28, generator=generator).numpy(),
            "support_y": labels.repeat_interleave(SHOTS).expand(TASKS, -1).numpy().copy(),
            "query_x": torch.rand(TASKS, WAYS * QUERIES, 1, 28, 28, generator=generator).numpy(),
            "query_y": labels.repeat_interleave(QUERIES).expand(TASKS, -1).numpy().copy(),
        }
    np.savez(folder / "batch.npz", **arrays)  # type: ignore[arg-type]
    return source


def load_inputs(folder: Path) -> tuple[dict[str, np.ndarray], Any]:
    from metarch.data.episodes import EpisodeBatch

    arrays = dict(np.load(folder / "batch.npz"))
    zeros = torch.zeros(TASKS, 1, dtype=torch.long)
    batch = EpisodeBatch(
        support_images=torch.from_numpy(arrays["support_x"]),
        support_labels=torch.from_numpy(arrays["support_y"]),
        query_images=torch.from_numpy(arrays["query_x"]),
        query_labels=torch.from_numpy(arrays["query_y"]),
        entries=zeros,
        support_image_ids=zeros,
        query_image_ids=zeros,
        task_indices=torch.arange(TASKS),
    )
    return dict(np.load(folder / "weights.npz")), batch


# -- metarch worker ----------------------------------------------------------------------


def metarch_learner(
    impl: str, steps: int, first_order: bool, weights: dict[str, np.ndarray]
) -> Any:
    from metarch.meta import MAML

    model = build_metarch_model()
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            target = own[canonical_to_metarch(name)]
            target.copy_(torch.from_numpy(value).reshape(target.shape))
    batching = {"metarch-loop": "loop", "metarch-vmap": "vmap", "metarch-batched": "batched"}[impl]
    learner = MAML(
        model,
        inner_lr=INNER_LR,
        steps=steps,
        first_order=first_order,
        batching=batching,  # type: ignore[arg-type]
    )
    return learner, own


def run_metarch_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    weights, batch = load_inputs(Path(args.data))
    learner, own = metarch_learner(args.impl, args.steps, args.first_order, weights)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    times = []
    for iteration in range(args.iterations + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        learner.compute_meta_gradients(batch)
        if iteration == 0 and args.grad_out:
            grads = {}
            for name, value in weights.items():
                grad = own[canonical_to_metarch(name)].grad
                grads[name] = grad.detach().reshape(value.shape).numpy()
            np.savez(Path(args.grad_out), **grads)
        optimizer.step()
        if iteration > 0:
            times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "impl": args.impl,
                "seconds_per_iteration": float(np.median(times)),
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


# -- machine and workload facts ----------------------------------------------------------


def gemm_peak_gflops(threads: int, size: int = 2048, repeats: int = 10) -> float:
    """Best float32 matrix-multiply rate of this machine, in GFLOP/s."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def count_flops(folder: Path, steps: int, first_order: bool) -> int:
    """FLOPs of one meta-gradient of the workload (metarch's loop; same maths as the peers)."""
    from torch.utils.flop_counter import FlopCounterMode

    weights, batch = load_inputs(folder)
    learner, _ = metarch_learner("metarch-loop", steps, first_order, weights)
    with FlopCounterMode(display=False) as counter:
        learner.compute_meta_gradients(batch)
    return int(counter.get_total_flops())


# -- driver ------------------------------------------------------------------------------


def run_worker(
    impl: str, folder: Path, steps: int, first_order: bool, args: argparse.Namespace
) -> dict[str, Any]:
    grad_out = folder / f"grad-{impl}-{steps}-{int(first_order)}.npz"
    common = ["--data", str(folder), "--steps", str(steps), "--iterations", str(args.iterations)]
    common += ["--threads", str(args.threads), "--grad-out", str(grad_out)]
    if first_order:
        common.append("--first-order")
    if impl in PEERS:
        if not PEERS_PYTHON.exists():
            return {"impl": impl, "error": f"{PEERS_PYTHON} missing: run benchmarks/peers/setup.sh"}
        script = ROOT / "benchmarks" / "peers" / "meta_step_peer.py"
        command = [str(PEERS_PYTHON), str(script), "--impl", impl, *common]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, *common]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["failed"]
        return {"impl": impl, "error": tail[0]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if grad_out.exists():
        result["grad_file"] = str(grad_out)
    return result


def max_abs_diff(file_a: str, file_b: str) -> float | None:
    """Largest difference between two saved meta-gradients (None if either saved none)."""
    a, b = np.load(file_a), np.load(file_b)
    common = [k for k in a.files if k in b.files]
    if not common or len(common) != len(a.files) or len(common) != len(b.files):
        return None
    return max(float(np.abs(a[k] - b[k]).max()) for k in common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument(
        "--iterations", type=int, default=3, help="timed iterations (after 1 warm-up)"
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument(
        "--orders", nargs="+", default=["second", "first"], choices=["second", "first"]
    )
    parser.add_argument("--impls", nargs="+", default=[*OURS, *PEERS])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "meta_step.json"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--first-order", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--grad-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.impl = args.worker
        args.steps = args.steps[0]
        run_metarch_worker(args)
        return

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = write_inputs(folder, args.data_root)
        peak = gemm_peak_gflops(args.threads)
        for steps in args.steps:
            for order in args.orders:
                first_order = order == "first"
                flops = count_flops(folder, steps, first_order)
                runs = {
                    impl: run_worker(impl, folder, steps, first_order, args) for impl in args.impls
                }
                reference = runs.get("learn2learn", {}).get("grad_file")
                for impl, run in runs.items():
                    row: dict[str, Any] = {
                        "impl": impl,
                        "steps": steps,
                        "order": order,
                        "gflop": flops / 1e9,
                    }
                    row.update({k: v for k, v in run.items() if k not in ("impl", "grad_file")})
                    took = run.get("seconds_per_iteration")
                    if took:
                        row["iterations_per_s"] = 1.0 / took
                        row["gflops_per_s"] = flops / took / 1e9
                        row["fraction_of_gemm_peak"] = flops / took / 1e9 / peak
                    if reference and run.get("grad_file"):
                        row["max_abs_grad_diff_vs_learn2learn"] = max_abs_diff(
                            run["grad_file"], reference
                        )
                    results.append(row)

    def seconds(impl: str, steps: int = 1, order: str = "second") -> float | None:
        for row in results:
            if (row["impl"], row["steps"], row["order"]) == (impl, steps, order):
                value = row.get("seconds_per_iteration")
                return float(value) if value else None
        return None

    peer_times = [t for t in (seconds(p) for p in PEERS) if t]
    ours_times = {impl: seconds(impl) for impl in args.impls if impl.startswith("metarch")}
    best_ours = min((t for t in ours_times.values() if t), default=None)
    fastest_peer = min(peer_times, default=None)
    report = {
        "benchmark": "meta_step",
        "workload": {
            "model": "Conv-4 64 filters stride 2, batch statistics, 28x28",
            "ways": WAYS,
            "shots": SHOTS,
            "queries": QUERIES,
            "meta_batch": TASKS,
            "inner_lr": INNER_LR,
            "data": source,
        },
        "results": results,
        "ratio_vs_fastest_peer": (fastest_peer / best_ours)
        if (fastest_peer and best_ours)
        else None,
        "max_abs_grad_diff": next(
            (
                r.get("max_abs_grad_diff_vs_learn2learn")
                for r in results
                if r["impl"].startswith("metarch") and r["steps"] == 1 and r["order"] == "second"
            ),
            None,
        ),
        "peak_rss_mb": {
            f"{r['impl']}/{r['steps']}/{r['order']}": r.get("peak_rss_mb") for r in results
        },
        "gemm_peak_gflops": peak,
        "threads": args.threads,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "command": "python benchmarks/meta_step.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
        return
    print(f"GEMM peak: {peak:.0f} GFLOP/s ({args.threads} threads); data: {source}")
    columns = [("impl", "<16"), ("steps", ">6"), ("order", ">8"), ("s/iter", ">9")]
    columns += [("it/s", ">7"), ("GFLOP/s", ">9"), ("%peak", ">7"), ("RSS MB", ">8")]
    columns += [("|dg| vs l2l", ">13")]
    print("".join(f"{name:{spec}}" for name, spec in columns))
    for r in results:
        if "error" in r or "unsupported" in r:
            reason = r.get("error") or r.get("unsupported")
            print(f"{r['impl']:<16}{r['steps']:>6}{r['order']:>8}  {reason}")
            continue
        diff = r.get("max_abs_grad_diff_vs_learn2learn")
        print(
            f"{r['impl']:<16}{r['steps']:>6}{r['order']:>8}{r['seconds_per_iteration']:>9.3f}"
            f"{r['iterations_per_s']:>7.2f}{r['gflops_per_s']:>9.1f}"
            f"{100 * r['fraction_of_gemm_peak']:>6.1f}%"
            f"{r['peak_rss_mb']:>8.0f}{'' if diff is None else f'{diff:>13.2e}'}"
        )
    print(f"ratio vs fastest peer (second order, 1 step): {report['ratio_vs_fastest_peer']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
