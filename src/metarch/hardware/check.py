"""How well latency models predict a device: random networks measured end to end.

:func:`check_latency_models` draws networks of a space from a seed, measures each on a
local device, calibrates every model on the first few (``calibration``) and scores it on
the rest: Spearman's and Kendall's rank correlations (what a search needs: which network
is faster), the mean absolute percentage error and the share of networks predicted within
+-10 % (what a budget needs: how fast it is).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from metarch.hardware.devices.base import LocalDevice, Measurement
from metarch.hardware.predictors import LatencyModel
from metarch.nas.spaces.base import SearchSpace

__all__ = ["PredictionScore", "check_latency_models", "distinct_samples", "score_predictions"]


@dataclass(frozen=True)
class PredictionScore:
    """How predicted latencies compare with measured ones.

    Attributes:
        spearman: Spearman's rank correlation.
        kendall: Kendall's tau-b.
        mape: Mean absolute percentage error (percent).
        within_10: Percent of networks predicted within +-10 % of their measured latency.
        networks: Networks scored.
    """

    spearman: float
    kendall: float
    mape: float
    within_10: float
    networks: int

    def to_json(self) -> dict[str, Any]:
        """A JSON object of the fields."""
        return asdict(self)


def score_predictions(predicted: Sequence[float], measured: Sequence[float]) -> PredictionScore:
    """Rank correlations and errors of ``predicted`` against ``measured`` milliseconds."""
    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    if p.shape != m.shape or len(m) < 2:
        raise ValueError(f"need two equal sequences of at least 2, got {len(p)} and {len(m)}")
    relative = np.abs(p - m) / np.maximum(m, 1e-12)
    return PredictionScore(
        spearman=float(stats.spearmanr(p, m).statistic),
        kendall=float(stats.kendalltau(p, m).statistic),
        mape=float(100.0 * relative.mean()),
        within_10=float(100.0 * (relative <= 0.10).mean()),
        networks=len(m),
    )


def distinct_samples(space: SearchSpace[Any], count: int, seed: int) -> list[Any]:
    """``count`` distinct architectures of ``space`` drawn from ``seed`` (all, if fewer)."""
    rng = random.Random(seed)
    size = space.size()
    wanted = count if size is None else min(count, size)
    seen: dict[str, Any] = {}
    attempts = 0
    while len(seen) < wanted:
        architecture = space.sample(rng)
        seen.setdefault(space.encode(architecture), architecture)
        attempts += 1
        if attempts > 100 * wanted + 1000:
            break  # a space whose sampler repeats itself: take what it gave
    return list(seen.values())


def check_latency_models(
    space: SearchSpace[Any],
    device: LocalDevice,
    models: Mapping[str, LatencyModel],
    *,
    samples: int = 200,
    calibration: int = 10,
    seed: int = 0,
    how: Measurement | None = None,
    num_classes: int | None = None,
    on_network: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Measure ``calibration + samples`` random networks; calibrate and score each model.

    The networks are timed together in ``how.rounds`` interleaved rounds (``on_network``
    is called with (timings done, timings in all)).

    Returns:
        A JSON report: the measured networks (string, milliseconds, predictions) and one
        :class:`PredictionScore` per model on the ``samples`` networks it was not
        calibrated on.
    """
    device.check_available()
    how = how or Measurement()
    architectures = distinct_samples(space, calibration + samples, seed)
    timings = device.measure_many(
        [(space.build(a, num_classes=num_classes), space.input_shape) for a in architectures],
        how,
        on_timed=on_network,
    )
    measured = [timing.median_ms for timing in timings]
    fit, test = slice(0, calibration), slice(calibration, None)
    scores: dict[str, Any] = {}
    predictions: dict[str, list[float]] = {}
    for name, model in models.items():
        model.fit(architectures[fit], measured[fit])
        predictions[name] = [model.predict(a) for a in architectures]
        scores[name] = score_predictions(predictions[name][test], measured[test]).to_json()
    return {
        "space": {"name": space.registered_name, "settings": space.settings()},
        "device": device.fingerprint(),
        "measurement": asdict(how),
        "seed": seed,
        "calibration": min(calibration, len(architectures)),
        "samples": max(0, len(architectures) - calibration),
        "scores": scores,
        "networks": [
            {
                "architecture": space.encode(a),
                "measured_ms": measured[i],
                "calibration": i < calibration,
                "predicted_ms": {name: values[i] for name, values in predictions.items()},
            }
            for i, a in enumerate(architectures)
        ],
    }
