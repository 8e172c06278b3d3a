"""The NAS-Bench-201 cell space as a one-shot weight-sharing supernet.

Every edge of every cell holds all 5 operations with weights of their own (as in the
relaxation, :mod:`~metarch.nas.spaces.nasbench201_search`), and a sub-network runs exactly
one operation per edge, the same in every cell (the benchmark's networks repeat one cell):
a single-path one-shot model. The stem, the residual reductions and the last batch norm are
shared by all sub-networks. A sub-network's discrete network is the benchmark's macro
network of its cell (:class:`~metarch.nas.spaces.nasbench201.NASBench201Network`), so with
the benchmark's macro (``C = 16``, ``N = 5``, 32x32 images) every sub-network is looked up
exactly in the real-device latency tables (``../shared/data/hardware/``).

Which sub-network runs is read from the forward context
(:func:`~metarch.nas.spaces.supernet.subnet_context`); without one, the cell of 3x3
convolutions on every edge (the space's largest).
"""

from __future__ import annotations

from torch import Tensor, nn

from metarch.models.norm import MetaBatchNorm2d
from metarch.nas.spaces.nasbench201 import (
    EDGES,
    OPERATIONS,
    Architecture201,
    NASBench201Space,
    macro_body,
    macro_stem,
)
from metarch.nas.spaces.nasbench201_search import SearchCell201
from metarch.nas.spaces.supernet import Index, WeightSharingSupernet, current_architecture
from metarch.registry import PositiveInt

__all__ = ["NASBench201Supernet"]


class NASBench201Supernet(WeightSharingSupernet):
    """Every NAS-Bench-201 network of one macro size, sharing their weights.

    Args:
        channels: ``C``, the first stage's width (the benchmark: 16).
        cells_per_stage: ``N`` (the benchmark: 5).
        in_channels: Image channels.
        image_size: Side of the square images (the benchmark: 32).
    """

    space: NASBench201Space

    def __init__(
        self,
        *,
        channels: PositiveInt = 16,
        cells_per_stage: PositiveInt = 5,
        in_channels: PositiveInt = 3,
        image_size: PositiveInt = 32,
    ) -> None:
        super().__init__()
        self.space = NASBench201Space(
            channels=channels,
            cells_per_stage=cells_per_stage,
            in_channels=in_channels,
            image_size=image_size,
        )
        self.stem = macro_stem(in_channels, channels)
        layers, width = macro_body(channels, cells_per_stage, SearchCell201)
        self.cells = nn.ModuleList(layers)
        self.last = nn.Sequential(MetaBatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.out_features = width

    def default_architecture(self) -> Architecture201:
        """The largest cell: a 3x3 convolution on every edge."""
        return self.space.largest()

    def features(self, architecture: Architecture201) -> int:  # noqa: D102
        return self.out_features

    def slices(self, architecture: Architecture201) -> dict[str, tuple[str, Index]]:
        """Each edge's chosen operation, and the shared stem, reductions and last norm."""
        chosen = [OPERATIONS.index(op) for op in architecture]
        slices: dict[str, tuple[str, Index]] = {}
        for name in self.state_dict():
            parts = name.split(".")
            if len(parts) > 4 and parts[0] == "cells" and parts[2] == "edges":
                edge, op = int(parts[3]), int(parts[4])
                if op != chosen[edge]:
                    continue
                slices[".".join(parts[:4] + parts[5:])] = (name, ())
            else:
                slices[name] = (name, ())
        return slices

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, 4C)`` of the sub-network the forward context names."""
        architecture = current_architecture() or self.space.largest()
        chosen = [OPERATIONS.index(op) for op in self.space.decode(self.space.encode(architecture))]
        h = self.stem(x)
        for layer in self.cells:
            h = self._cell(layer, h, chosen) if isinstance(layer, SearchCell201) else layer(h)
        features: Tensor = self.flatten(self.pool(self.last(h)))
        return features

    @staticmethod
    def _cell(cell: SearchCell201, x: Tensor, chosen: list[int]) -> Tensor:
        # As the discrete cell: node j sums its incoming edges in EDGES order.
        nodes = [x]
        for target in (1, 2, 3):
            incoming = [
                cell.edges[edge][chosen[edge]](nodes[source])  # type: ignore[index]
                for edge, (to, source) in enumerate(EDGES)
                if to == target
            ]
            total = incoming[0]
            for term in incoming[1:]:
                total = total + term
            nodes.append(total)
        return nodes[3]
