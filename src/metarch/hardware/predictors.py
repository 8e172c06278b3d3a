"""Latency models: a network's latency on a device, predicted without running it there.

Every model predicts milliseconds for an architecture of a search space, behind one
interface (:class:`LatencyModel`), and may be calibrated on a few networks measured on
the device (:meth:`LatencyModel.fit`):

* ``layer-table``: the sum of the network's layers in a layer latency table profiled on
  the device, plus a per-network constant (what the layers alone do not see: the
  framework's per-call overhead, fusion across layers) fitted on the measured networks.
* ``device-table``: exact lookup in a table of measured whole networks (HELP's CSV
  devices).
* ``flops`` and ``params``: proxies, scaled to milliseconds by a least-squares line through
  the measured networks.

Models register in :data:`LATENCY_MODELS`.
"""

from __future__ import annotations

import statistics
from abc import ABC, abstractmethod
from collections.abc import Sequence
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
    """Sum of layer latencies from a table, plus a constant fitted on measured networks.

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
        self.offset_ms = 0.0

    def layer_sum(self, architecture: Any) -> float:
        """The sum of the network's layer latencies, without the constant."""
        layers = self.space.layers(architecture, num_classes=self.num_classes)
        return self.table.network_latency(layers)

    def fit(self, architectures: Sequence[Any], latencies_ms: Sequence[float]) -> None:
        """The constant: the median of measured minus summed (robust to one bad timing)."""
        residuals = [
            measured - self.layer_sum(architecture)
            for architecture, measured in zip(architectures, latencies_ms, strict=True)
        ]
        self.offset_ms = statistics.median(residuals) if residuals else 0.0

    def predict(self, architecture: Any) -> float:  # noqa: D102
        return self.layer_sum(architecture) + self.offset_ms


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
