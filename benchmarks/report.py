"""What every benchmark script shares: machine facts and writing its JSON report."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["command_line", "machine", "peak_rss_mb", "rss_mb", "write_json", "write_report"]


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
    """The command that runs this script, as BENCHMARKS.md quotes it."""
    return " ".join(["python", *sys.argv])


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
