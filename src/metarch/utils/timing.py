"""Timing a call robustly: warm-up, repeats, median and spread, slow outliers rejected.

Every latency metarch reports (a network on a local device, one layer of a search space)
comes from :func:`time_calls`, so they share one definition of "the latency": the median
of the repeats that remain once slow outliers (a preempted thread, a page fault) are
dropped.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Timing", "time_calls"]

#: Repeats slower than the median by more than this many median absolute deviations (and
#: by more than 5 %) are outliers: one-sided, since nothing makes a call faster than it is.
OUTLIER_MADS = 5.0


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call.

    Attributes:
        median_ms: Median of the kept repeats: the latency.
        p10_ms: 10th percentile of the kept repeats.
        p90_ms: 90th percentile of the kept repeats.
        mad_ms: Median absolute deviation of the kept repeats.
        repeats: Timed calls.
        rejected: Of those, slow outliers left out.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    mad_ms: float
    repeats: int
    rejected: int

    def to_json(self) -> dict[str, Any]:
        """A JSON object of the fields."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Timing:
        """Read :meth:`to_json`'s object (``KeyError``/``ValueError`` if malformed)."""
        return cls(
            median_ms=float(value["median_ms"]),
            p10_ms=float(value["p10_ms"]),
            p90_ms=float(value["p90_ms"]),
            mad_ms=float(value["mad_ms"]),
            repeats=int(value["repeats"]),
            rejected=int(value["rejected"]),
        )


def time_calls(
    call: Callable[[], object],
    *,
    warmup: int = 10,
    repeats: int = 50,
    synchronise: Callable[[], object] | None = None,
) -> Timing:
    """Time ``repeats`` calls of ``call`` after ``warmup`` untimed ones.

    Args:
        call: What to time.
        warmup: Calls first, untimed (caches, lazy initialisation, JIT compilation).
        repeats: Timed calls.
        synchronise: Called before and after every timed call (a GPU's queue).
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    sync = synchronise or (lambda: None)
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return summarise(times)


def summarise(times: list[float]) -> Timing:
    """The :class:`Timing` of measured milliseconds (slow outliers rejected)."""
    median = statistics.median(times)
    mad = statistics.median(abs(t - median) for t in times)
    limit = median + max(OUTLIER_MADS * mad, 0.05 * median)
    kept = [t for t in times if t <= limit]
    median = statistics.median(kept)
    deciles = statistics.quantiles(kept, n=10) if len(kept) > 1 else [kept[0]] * 9
    return Timing(
        median_ms=median,
        p10_ms=deciles[0],
        p90_ms=deciles[-1],
        mad_ms=statistics.median(abs(t - median) for t in kept),
        repeats=len(times),
        rejected=len(times) - len(kept),
    )
