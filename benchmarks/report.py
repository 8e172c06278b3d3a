"""What every benchmark script shares: machine facts and writing its JSON report.

Where a report goes: every script writes its JSON under ``runs/benchmarks/`` by default (a
draft, never committed); ``--publish`` writes the published results under
``benchmarks/results/`` instead, from which ``benchmarks/tables.py`` generates the tables of
BENCHMARKS.md; ``--out FILE`` overrides both. Paths recorded in a report are relative to the
repository root where they lie inside it (:func:`repo_relative`), so a published JSON does
not carry the file system of the machine that ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DRAFTS",
    "RESULTS",
    "ROOT",
    "add_output_arguments",
    "command_line",
    "episode_arrays",
    "episode_batch",
    "figure_axes",
    "machine",
    "output_path",
    "peak_rss_mb",
    "print_worker_result",
    "repo_relative",
    "rss_mb",
    "save_figure",
    "write_json",
    "write_report",
]

#: The repository root.
ROOT = Path(__file__).resolve().parents[1]
#: The published results, from which BENCHMARKS.md's tables are generated (``--publish``).
RESULTS = ROOT / "benchmarks" / "results"
#: Where a benchmark writes its JSON by default (``runs/`` is not committed).
DRAFTS = ROOT / "runs" / "benchmarks"


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository root if it lies inside it, else as given.

    A relative ``path`` is taken relative to the working directory first, so
    ``runs/x`` given from the repository root and ``/abs/repo/runs/x`` both give ``runs/x``.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        return resolved.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def add_output_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out`` and ``--publish``, the same in every benchmark script (see :func:`output_path`)."""
    parser.add_argument(
        "--publish",
        nargs="?",
        const=name,
        default=None,
        metavar="NAME",
        help=f"write the published results benchmarks/results/NAME.json (default NAME: {name}), "
        "from which benchmarks/tables.py generates BENCHMARKS.md's tables",
    )
    parser.add_argument(
        "--out",
        default=None,
        help=f"write the JSON here instead (default: runs/benchmarks/{name}.json)",
    )


def output_path(args: argparse.Namespace, name: str) -> Path:
    """Where a script's JSON goes: ``--out``, else ``--publish``'s published file, else a
    draft under ``runs/benchmarks/``."""
    if args.out:
        return Path(args.out)
    if args.publish:
        return RESULTS / f"{args.publish}.json"
    return DRAFTS / f"{name}.json"


def machine() -> dict[str, Any]:
    """CPU, cores and library versions of this machine."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def write_report(report: dict[str, Any], out: str | Path, *, as_json: bool) -> bool:
    """Add the machine and command, write ``out`` (atomically), print it if ``as_json``.

    Returns:
        Whether the JSON was printed (the caller then prints no table).
    """
    report = {**report, "machine": machine(), "command": command_line()}
    write_json(report, out)
    if as_json:
        print(json.dumps(report))
    return as_json


def command_line() -> str:
    """The command that runs this script, as BENCHMARKS.md quotes it (paths inside the
    repository relative to its root; arguments with spaces quoted for the shell)."""
    return shlex.join(["python", *(_relative_argument(argument) for argument in sys.argv)])


def _relative_argument(argument: str) -> str:
    """An absolute path inside the repository (alone or as ``--option=PATH``), made relative."""
    option, equals, value = argument.rpartition("=") if "=" in argument else ("", "", argument)
    if not value.startswith("/"):
        return argument
    return f"{option}{equals}{repo_relative(value)}"


def write_json(data: dict[str, Any], out: str | Path) -> None:
    """Write ``data`` as indented JSON to ``out`` atomically (a temporary file, then rename)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), in MB: read after set-up, before the
    first meta-iteration, it separates the libraries' footprint from the workload's."""
    return _status_mb("VmRSS:")


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM), in MB.

    ``ru_maxrss`` is not used: Linux carries it across fork+exec, so a worker would report
    at least its parent's peak.
    """
    peak = _status_mb("VmHWM:")
    return peak if peak >= 0 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB (-1 where there is none)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return -1.0


def episode_arrays(
    ways: int, shots: int, queries: int, tasks: int, data_root: str | None
) -> tuple[dict[str, np.ndarray], str]:
    """One meta-batch of Omniglot episodes as arrays (random images without Omniglot).

    Returns:
        ``support_x``, ``support_y``, ``query_x``, ``query_y`` and where they came from.
    """
    try:
        from metarch.data.episodes import EpisodeSampler
        from metarch.data.omniglot import load_omniglot
        from metarch.data.pools import ClassPool

        background = load_omniglot("background", data_root)
        pool = ClassPool.whole(background).with_rotations()
        batch = EpisodeSampler(pool, ways, shots, queries, seed=0).sample(tasks)
        arrays = {
            "support_x": batch.support_images.numpy(),
            "support_y": batch.support_labels.numpy(),
            "query_x": batch.query_images.numpy(),
            "query_y": batch.query_labels.numpy(),
        }
        return arrays, "Omniglot background with rotations, seed 0"
    except Exception:  # the benchmark still runs, on random images
        generator = torch.Generator().manual_seed(0)
        labels = torch.arange(ways)
        arrays = {
            "support_x": torch.rand(tasks, ways * shots, 1, 28, 28, generator=generator).numpy(),
            "support_y": labels.repeat_interleave(shots).expand(tasks, -1).numpy().copy(),
            "query_x": torch.rand(tasks, ways * queries, 1, 28, 28, generator=generator).numpy(),
            "query_y": labels.repeat_interleave(queries).expand(tasks, -1).numpy().copy(),
        }
        return arrays, "random images (Omniglot not found)"


def episode_batch(arrays: dict[str, np.ndarray], dtype: torch.dtype = torch.float32) -> Any:
    """The :class:`~metarch.data.episodes.EpisodeBatch` of :func:`episode_arrays`' arrays."""
    from metarch.data.episodes import EpisodeBatch

    tasks = arrays["support_x"].shape[0]
    zeros = torch.zeros(tasks, 1, dtype=torch.long)
    return EpisodeBatch(
        support_images=torch.from_numpy(arrays["support_x"]).to(dtype),
        support_labels=torch.from_numpy(arrays["support_y"]),
        query_images=torch.from_numpy(arrays["query_x"]).to(dtype),
        query_labels=torch.from_numpy(arrays["query_y"]),
        entries=zeros,
        support_image_ids=zeros,
        query_image_ids=zeros,
        task_indices=torch.arange(tasks),
    )


def print_worker_result(impl: str, times: list[float], setup_rss: float) -> None:
    """A timing worker's one JSON line: median seconds per iteration and its memory."""
    print(
        json.dumps(
            {
                "impl": impl,
                "seconds_per_iteration": float(np.median(times)) if times else None,
                "peak_rss_mb": peak_rss_mb(),
                "setup_rss_mb": setup_rss,
            }
        )
    )


def figure_axes(columns: int = 1, size: tuple[float, float] = (7, 4)) -> tuple[Any, list[Any]]:
    """A matplotlib figure (headless backend) with ``columns`` axes side by side, each
    ``size`` inches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, columns, figsize=(size[0] * columns, size[1]), squeeze=False)
    return figure, list(axes[0])


def save_figure(figure: Any, out: Path) -> None:
    """Write ``figure`` as a PNG to ``out`` atomically, and close it."""
    import io

    import matplotlib.pyplot as plt

    from metarch.utils.io import atomic_write_bytes

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(out, buffer.getvalue())
