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

Every meta-gradient is also compared with a float64 one (metarch's loop in float64): two
float32 implementations that sum in different orders differ by their rounding errors, so
agreement with learn2learn is judged against learn2learn's own distance to float64.

Memory depends on the C allocator as much as on the implementation (glibc keeps freed
heap memory fragmented; fresh ``mmap`` blocks cost page faults): ``--allocator`` runs every
worker, peers included, under glibc, jemalloc or tcmalloc (``LD_PRELOAD``; Debian packages
``libjemalloc2`` and ``libtcmalloc-minimal4``). ``setup_rss_mb`` (resident memory before the
first iteration) separates the libraries' footprint from the workload's.

Usage::

    python benchmarks/meta_step.py [--iterations 3] [--steps 1 5] [--orders second first]
        [--impls metarch-loop metarch-batched learn2learn higher torchopt]
        [--allocator glibc|jemalloc|tcmalloc] [--rounds 1] [--json]
        [--publish [NAME] | --out FILE]

The JSON goes to ``runs/benchmarks/meta_step.json``; ``--publish`` writes the published
``benchmarks/results/meta_step.json`` (``--publish NAME``: ``benchmarks/results/NAME.json``)
instead, from which ``benchmarks/tables.py`` generates BENCHMARKS.md's tables.
"""

from __future__ import annotations

import argparse
import dataclasses
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import (  # noqa: E402 (benchmarks are scripts, not a package)
    add_output_arguments,
    episode_arrays,
    episode_batch,
    output_path,
    print_worker_result,
    rss_mb,
    write_report,
)

PEERS_PYTHON = Path(os.environ.get("PEERS_VENV", ROOT / ".venv-peers")) / "bin" / "python"
PEERS = ("learn2learn", "higher", "torchopt")
#: metarch's implementations: how MAML runs the tasks of a meta-batch.
OURS: dict[str, dict[str, Any]] = {
    "metarch-loop": {"batching": "loop"},
    "metarch-vmap": {"batching": "vmap"},
    "metarch-batched": {"batching": "batched"},
    # Fewer tasks whose inner-loop graphs are held at once: less memory, a little slower.
    "metarch-batched-small": {"batching": "batched", "support_group": 4, "query_chunk": 1},
    # Two tasks per inner-loop group and one per query pass, in every task thread: the least
    # memory of the batched path.
    "metarch-batched-lean": {"batching": "batched", "support_group": 2, "query_chunk": 1},
    # The batched path before task threads: one shard, every --threads thread inside each op.
    "metarch-batched-intraop": {"batching": "batched", "task_threads": 1},
}
#: The float64 reference meta-gradient (metarch's loop in float64).
REFERENCE = "float64"
#: Shared libraries of the allocators ``--allocator`` can preload (Debian/Ubuntu paths).
ALLOCATORS: dict[str, tuple[str, ...]] = {
    "glibc": (),
    "jemalloc": ("libjemalloc.so.2",),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
}
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
    arrays, source = episode_arrays(WAYS, SHOTS, QUERIES, TASKS, data_root)
    np.savez(folder / "batch.npz", **arrays)  # type: ignore[arg-type]
    return source


def load_inputs(folder: Path) -> tuple[dict[str, np.ndarray], Any]:
    batch = episode_batch(dict(np.load(folder / "batch.npz")))
    return dict(np.load(folder / "weights.npz")), batch


# -- metarch worker ----------------------------------------------------------------------


def metarch_learner(
    impl: str, steps: int, first_order: bool, weights: dict[str, np.ndarray]
) -> Any:
    from metarch.meta import MAML

    model = build_metarch_model()
    if impl == REFERENCE:
        model = model.double()
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            target = own[canonical_to_metarch(name)]
            target.copy_(torch.from_numpy(value).reshape(target.shape))
    options = OURS["metarch-loop" if impl == REFERENCE else impl]
    learner = MAML(model, inner_lr=INNER_LR, steps=steps, first_order=first_order, **options)
    return learner, own


def run_metarch_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    weights, batch = load_inputs(Path(args.data))
    if args.impl == REFERENCE:
        batch = dataclasses.replace(
            batch,
            support_images=batch.support_images.double(),
            query_images=batch.query_images.double(),
        )
    learner, own = metarch_learner(args.impl, args.steps, args.first_order, weights)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    setup_rss = rss_mb()
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
    print_worker_result(args.impl, times, setup_rss)


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
    impl: str,
    folder: Path,
    steps: int,
    first_order: bool,
    args: argparse.Namespace,
    iterations: int | None = None,
) -> dict[str, Any]:
    grad_out = folder / f"grad-{impl}-{steps}-{int(first_order)}.npz"
    timed = args.iterations if iterations is None else iterations
    common = ["--data", str(folder), "--steps", str(steps), "--iterations", str(timed)]
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
    env = dict(os.environ)
    if args.preload:
        env["LD_PRELOAD"] = args.preload
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["failed"]
        return {"impl": impl, "error": tail[0]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if grad_out.exists():
        result["grad_file"] = str(grad_out)
    return result


def run_rounds(
    impls: list[str], folder: Path, steps: int, first_order: bool, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Run every implementation ``args.rounds`` times, alternating, in fresh processes.

    Speed on a shared or virtual machine drifts within minutes, so one process per
    implementation can favour whichever ran in a quiet moment. Alternating rounds expose
    each implementation to the same drift; the reported time is the median over rounds
    (every round's time is kept under ``round_seconds``).
    """
    rounds: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for _ in range(args.rounds):
        for impl in impls:
            rounds[impl].append(run_worker(impl, folder, steps, first_order, args))
    runs: dict[str, dict[str, Any]] = {}
    for impl, results in rounds.items():
        timed = [r for r in results if r.get("seconds_per_iteration")]
        if not timed:
            runs[impl] = results[0]
            continue
        seconds = [float(r["seconds_per_iteration"]) for r in timed]
        runs[impl] = {
            **timed[0],
            "seconds_per_iteration": float(np.median(seconds)),
            "round_seconds": seconds,
            "peak_rss_mb": max(float(r["peak_rss_mb"]) for r in timed),
        }
    return runs


def find_allocator(name: str) -> str:
    """Path of the shared library ``--allocator NAME`` preloads ("" for glibc's own)."""
    if not ALLOCATORS[name]:
        return ""
    folders = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"]
    for folder in folders:
        for library in ALLOCATORS[name]:
            if (Path(folder) / library).exists():
                return str(Path(folder) / library)
    raise SystemExit(
        f"error: --allocator {name}: none of {', '.join(ALLOCATORS[name])} found in "
        f"{', '.join(folders)}; install it (Debian: apt-get install "
        f"{'libjemalloc2' if name == 'jemalloc' else 'libtcmalloc-minimal4'})"
    )


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
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternating runs of every implementation"
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument(
        "--orders", nargs="+", default=["second", "first"], choices=["second", "first"]
    )
    parser.add_argument("--impls", nargs="+", default=[*OURS, *PEERS], choices=[*OURS, *PEERS])
    parser.add_argument("--allocator", choices=sorted(ALLOCATORS), default="glibc")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true")
    add_output_arguments(parser, "meta_step")
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

    out = output_path(args, "meta_step")
    args.preload = find_allocator(args.allocator)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = write_inputs(folder, args.data_root)
        peak = gemm_peak_gflops(args.threads)
        for steps in args.steps:
            for order in args.orders:
                first_order = order == "first"
                flops = count_flops(folder, steps, first_order)
                runs = run_rounds(args.impls, folder, steps, first_order, args)
                reference = runs.get("learn2learn", {}).get("grad_file")
                exact = run_worker(REFERENCE, folder, steps, first_order, args, 0).get("grad_file")
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
                    if exact and run.get("grad_file"):
                        row["max_abs_grad_diff_vs_float64"] = max_abs_diff(run["grad_file"], exact)
                    results.append(row)

    headline = [r for r in results if (r["steps"], r["order"]) == (1, "second")]
    timed = [r for r in headline if r.get("seconds_per_iteration")]
    peers = [r for r in timed if r["impl"] in PEERS]
    ours = [r for r in timed if r["impl"] in OURS]
    fastest_peer = min(peers, key=lambda r: r["seconds_per_iteration"], default=None)
    fastest_ours = min(ours, key=lambda r: r["seconds_per_iteration"], default=None)
    # The fastest of ours whose peak memory is no more than the fastest peer's.
    frugal = [r for r in ours if fastest_peer and r["peak_rss_mb"] <= fastest_peer["peak_rss_mb"]]
    fastest_frugal = min(frugal, key=lambda r: r["seconds_per_iteration"], default=None)

    def ratio(row: dict[str, Any] | None) -> float | None:
        if row is None or fastest_peer is None:
            return None
        return float(fastest_peer["seconds_per_iteration"] / row["seconds_per_iteration"])

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
        "allocator": args.allocator,
        "results": results,
        "fastest_peer": fastest_peer and fastest_peer["impl"],
        "fastest_metarch": fastest_ours and fastest_ours["impl"],
        "ratio_vs_fastest_peer": ratio(fastest_ours),
        "max_abs_grad_diff": fastest_ours and fastest_ours.get("max_abs_grad_diff_vs_learn2learn"),
        "max_abs_grad_diff_vs_float64": {
            r["impl"]: r.get("max_abs_grad_diff_vs_float64") for r in headline
        },
        "fastest_metarch_within_peer_memory": fastest_frugal and fastest_frugal["impl"],
        "ratio_vs_fastest_peer_within_its_memory": ratio(fastest_frugal),
        "peak_rss_mb": {
            f"{r['impl']}/{r['steps']}/{r['order']}": r.get("peak_rss_mb") for r in results
        },
        "gemm_peak_gflops": peak,
        "threads": args.threads,
    }
    if write_report(report, out, as_json=args.json):
        return
    print(f"GEMM peak: {peak:.0f} GFLOP/s ({args.threads} threads); data: {source}")
    columns = [("impl", "<22"), ("steps", ">6"), ("order", ">8"), ("s/iter", ">9")]
    columns += [("it/s", ">7"), ("GFLOP/s", ">9"), ("%peak", ">7"), ("RSS MB", ">8")]
    columns += [("setup MB", ">9"), ("|dg| vs l2l", ">13"), ("|dg| vs f64", ">13")]
    print("".join(f"{name:{spec}}" for name, spec in columns))
    for r in results:
        if "error" in r or "unsupported" in r:
            reason = r.get("error") or r.get("unsupported")
            print(f"{r['impl']:<22}{r['steps']:>6}{r['order']:>8}  {reason}")
            continue
        diffs = [r.get(f"max_abs_grad_diff_vs_{k}") for k in ("learn2learn", "float64")]
        print(
            f"{r['impl']:<22}{r['steps']:>6}{r['order']:>8}{r['seconds_per_iteration']:>9.3f}"
            f"{r['iterations_per_s']:>7.2f}{r['gflops_per_s']:>9.1f}"
            f"{100 * r['fraction_of_gemm_peak']:>6.1f}%"
            f"{r['peak_rss_mb']:>8.0f}{r['setup_rss_mb']:>9.0f}"
            + "".join(f"{'-' if d is None else f'{d:.2e}':>13}" for d in diffs)
        )
    frugal_name = report["fastest_metarch_within_peer_memory"]
    print(
        f"second order, 1 step: {report['fastest_metarch']} is "
        f"{report['ratio_vs_fastest_peer'] or 0:.2f}x {report['fastest_peer']}; within "
        f"{report['fastest_peer']}'s peak memory: "
        + (
            f"{frugal_name} at {report['ratio_vs_fastest_peer_within_its_memory']:.2f}x"
            if frugal_name
            else "none of metarch's implementations"
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
