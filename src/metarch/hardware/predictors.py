"""Latency models: a network's latency on a device, predicted without running it there.

Every model predicts milliseconds for an architecture of a search space, behind one
interface (:class:`LatencyModel`), and may be calibrated on a few networks measured on
the device (:meth:`LatencyModel.fit`):

* ``layer-table``: the sum of the network's layers in a layer latency table profiled on
  the device, calibrated on the measured networks by a constant (what the layers alone do
  not see: the framework's per-call overhead) or a line (a runtime whose networks run
  uniformly slower than their layers alone), whichever predicts them better.
* ``device-table``: exact lookup in a table of measured whole networks (HELP's CSV
  devices).
* ``flops`` and ``params``: proxies, scaled to milliseconds by a least-squares line through
  the measured networks.

Models register in :data:`LATENCY_MODELS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from metarch.hardware.lut import LayerLatencyTable
from metarch.hardware.tables import DeviceLatencyTable
from metarch.nas.spaces.base import SearchSpace
from metarch.registry import Registry

__all__ = [
    "LATENCY_MODELS",
    "CostProxyModel",
    "DeviceTableModel",
    "LatencyModel",
    "LayerTableModel",
]


class LatencyModel(ABC):
    """Predicts the milliseconds of a space's networks on one device.

    Args:
        space: The search space whose architectures it predicts.
        num_classes: Classes of the head (None: backbones).
    """

    registered_name: str = ""

    def __init__(self, space: SearchSpace[Any], num_classes: int | None = None) -> None:
        self.space = space
        self.num_classes = num_classes

    def fit(self, architectures: Sequence[Any], latencies_ms: Sequence[float]) -> None:  # noqa: B027
        """Calibrate on networks measured on the device (default: nothing to calibrate)."""

    @abstractmethod
    def predict(self, architecture: Any) -> float:
        """Milliseconds of ``architecture``'s network on the device."""


LATENCY_MODELS: Registry[type[LatencyModel]] = Registry("latency model")


@LATENCY_MODELS.register("layer-table")
class LayerTableModel(LatencyModel):
    """Sum of layer latencies from a table, calibrated on a few measured networks.

    Two calibrations, chosen by leave-one-out error on the measured networks: a constant
    added to the sum (what the layers alone do not see: the network's one call overhead
    against one per layer), or a line ``scale * sum + constant`` (a runtime whose
    networks run uniformly slower or faster than their layers alone: PyTorch eager,
    whose layers timed alone keep their weights and activations in cache). The line needs
    three networks or more; uncalibrated, the model predicts the sum itself.

    Args:
        table: The device's layer latency table (checked against the space).
    """

    def __init__(
        self,
        space: SearchSpace[Any],
        num_classes: int | None = None,
        *,
        table: LayerLatencyTable,
    ) -> None:
        super().__init__(space, num_classes)
        table.check_space(space, num_classes)
        self.table = table
        self.scale = 1.0
        self.offset_ms = 0.0
        #: ``(layer sum, measured ms)`` of the smallest calibration network: a network
        #: smaller still is predicted at least in proportion to it, so a negative
        #: constant never makes a small network's latency vanish.
        self.smallest: tuple[float, float] | None = None

    def layer_sum(self, architecture: Any) -> float:
        """The sum of the network's layer latencies, uncalibrated."""
        layers = self.space.layers(architecture, num_classes=self.num_classes)
        return self.table.network_latency(layers)

    def fit(self, architectures: Sequence[Any], latencies_ms: Sequence[float]) -> None:
        """Pick and fit the calibration with the lower leave-one-out error."""
        sums = np.array([self.layer_sum(a) for a in architectures], dtype=float)
        measured = np.array(latencies_ms, dtype=float)
        if len(sums) == 0:
            self.scale, self.offset_ms, self.smallest = 1.0, 0.0, None
            return
        index = int(np.argmin(sums))
        self.smallest = (float(sums[index]), float(measured[index]))
        fits = [_offset_fit]
        if len(sums) >= 3 and np.ptp(sums) > 0:
            fits.append(_line_fit)
        best = min(fits, key=lambda fit: _leave_one_out_error(fit, sums, measured))
        self.scale, self.offset_ms = best(sums, measured)

    def predict(self, architecture: Any) -> float:  # noqa: D102
        total = self.layer_sum(architecture)
        predicted = self.scale * total + self.offset_ms
        if self.smallest is not None and 0 < total < self.smallest[0]:
            predicted = max(predicted, self.smallest[1] * total / self.smallest[0])
        return predicted


Calibration = Callable[[np.ndarray, np.ndarray], tuple[float, float]]


def _offset_fit(sums: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """Scale 1, the median residual as the constant (robust to one bad timing)."""
    return 1.0, float(np.median(measured - sums))


def _line_fit(sums: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """Least-squares line (a negative scale, nonsense, falls back to the constant)."""
    scale, offset = np.polyfit(sums, measured, 1)
    if scale <= 0:
        return _offset_fit(sums, measured)
    return float(scale), float(offset)


def _leave_one_out_error(fit: Calibration, sums: np.ndarray, measured: np.ndarray) -> float:
    """Mean relative error of ``fit`` on each network when fitted on the others."""
    if len(sums) < 2:
        return 0.0
    errors = []
    for index in range(len(sums)):
        keep = np.arange(len(sums)) != index
        scale, offset = fit(sums[keep], measured[keep])
        predicted = scale * sums[index] + offset
        errors.append(abs(predicted - measured[index]) / max(measured[index], 1e-12))
    return float(np.mean(errors))


@LATENCY_MODELS.register("device-table")
class DeviceTableModel(LatencyModel):
    """Exact lookup of whole-network latencies measured on a device (HELP's CSV form).

    Args:
        table: The measured table.
        device: Its column.
    """

    def __init__(
        self,
        space: SearchSpace[Any],
        num_classes: int | None = None,
        *,
        table: DeviceLatencyTable,
        device: str,
    ) -> None:
        super().__init__(space, num_classes)
        table.latency(next(iter(table)), device)  # an unknown device fails here, named
        self.table = table
        self.device = device

    def predict(self, architecture: Any) -> float:  # noqa: D102
        return self.table.latency(self.space.encode(architecture), self.device)


class CostProxyModel(LatencyModel):
    """A cost (FLOPs or parameters) mapped to milliseconds by a line through measured nets.

    Uncalibrated, it predicts the cost itself (ranks are right, milliseconds are not).
    """

    #: The :class:`~metarch.nas.spaces.base.ArchitectureCost` field it reads.
    cost_field = "flops"

    def __init__(self, space: SearchSpace[Any], num_classes: int | None = None) -> None:
        super().__init__(space, num_classes)
        self.slope, self.intercept = 1.0, 0.0
        self._costs: dict[str, float] = {}

    def cost(self, architecture: Any) -> float:
        """The proxy's cost of ``architecture`` (cached by its canonical string)."""
        key = self.space.encode(architecture)
        if key not in self._costs:
            cost = self.space.cost(architecture, num_classes=self.num_classes)
            self._costs[key] = float(getattr(cost, self.cost_field))
        return self._costs[key]

    def fit(self, architectures: Sequence[Any], latencies_ms: Sequence[float]) -> None:
        """Least squares ``ms = slope * cost + intercept`` (slope kept >= 0)."""
        costs = np.array([self.cost(a) for a in architectures])
        measured = np.array(latencies_ms, dtype=float)
        if len(costs) < 2 or np.ptp(costs) == 0:
            self.slope, self.intercept = 0.0, float(np.mean(measured)) if len(costs) else 0.0
            return
        slope, intercept = np.polyfit(costs, measured, 1)
        if slope < 0:  # more work is never faster: fall back to the mean
            slope, intercept = 0.0, float(np.mean(measured))
        self.slope, self.intercept = float(slope), float(intercept)

    def predict(self, architecture: Any) -> float:  # noqa: D102
        return self.slope * self.cost(architecture) + self.intercept


@LATENCY_MODELS.register("flops")
class FlopsModel(CostProxyModel):
    """FLOPs per image as a latency proxy."""

    cost_field = "flops"


@LATENCY_MODELS.register("params")
class ParamsModel(CostProxyModel):
    """Parameters as a latency proxy."""

    cost_field = "parameters"
