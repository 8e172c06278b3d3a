"""MetaNAS's few-shot DARTS cell space: its discrete architectures (genotypes) and networks.

A cell has 3 intermediate nodes; node ``i`` takes exactly two of its inputs (``0`` and
``1``: the outputs of the two previous cells, ``2..``: earlier nodes), each through one of
the 7 few-shot operations of :data:`~metarch.nas.ops.FEW_SHOT_OPERATIONS`, and sums them;
the cell outputs its nodes concatenated. Normal and reduction cells have their own
genotype. The canonical string lists the nodes of each cell::

    normal:conv_3x3~0,sep_conv_3x3~1|...|...;reduce:skip_connect~0,dil_conv_3x3~1|...|...

The network is MetaNAS's (``docs/metanas-reference.md``): a 3x3 stem to ``3C`` channels,
4 cells with reductions at cells 1 and 3 and no channel doubling (``C = 28``: every cell
outputs 84 channels), global average pooling. The continuous relaxation used to search
this space (mixed operations, pairwise input weights) builds on the same operations.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from metarch.models.norm import MetaBatchNorm2d
from metarch.nas.ops import FEW_SHOT_OPERATIONS, FactorizedReduce, ReLUConvBN, create_operation
from metarch.nas.spaces.base import SEARCH_SPACES, ArchitectureError, SearchSpace
from metarch.registry import PositiveInt

__all__ = ["CellGenotype", "Genotype", "MetaNASNetwork", "MetaNASSpace"]

NODES = 3
CELL_TYPES = ("normal", "reduce")

#: One node: two ``(operation, input)`` edges with different inputs, in input order.
NodeGenotype = tuple[tuple[str, int], tuple[str, int]]
#: A cell: one :data:`NodeGenotype` per intermediate node.
CellGenotype = tuple[NodeGenotype, ...]


@dataclass(frozen=True)
class Genotype:
    """A discrete architecture: the normal and the reduction cell."""

    normal: CellGenotype
    reduce: CellGenotype


def cell_inputs(
    channels: int,
    previous_previous: int,
    previous: int,
    *,
    reduction_before: bool,
    affine: bool = True,
) -> tuple[nn.Module, nn.Module]:
    """A cell's two input adapters to ``channels`` channels.

    The first takes the output of the cell before the previous one (halved in size if the
    previous cell reduced), the second the previous cell's output.
    """
    first = (
        FactorizedReduce(previous_previous, channels, affine=affine)
        if reduction_before
        else ReLUConvBN(previous_previous, channels, 1, 1, affine=affine)
    )
    return first, ReLUConvBN(previous, channels, 1, 1, affine=affine)


class Cell(nn.Module):
    """A discrete cell: each node sums its two chosen edges; the nodes are concatenated."""

    def __init__(
        self,
        genotype: CellGenotype,
        channels: int,
        previous_previous: int,
        previous: int,
        *,
        reduction: bool,
        reduction_before: bool,
    ) -> None:
        super().__init__()
        self.preprocess0, self.preprocess1 = cell_inputs(
            channels, previous_previous, previous, reduction_before=reduction_before
        )
        self.inputs = [(node[0][1], node[1][1]) for node in genotype]
        self.edges = nn.ModuleList(
            nn.ModuleList(
                create_operation(op, channels, 2 if reduction and source < 2 else 1)
                for op, source in node
            )
            for node in genotype
        )

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node, (a, b) in enumerate(self.inputs):
            edges = self.edges[node]
            assert isinstance(edges, nn.ModuleList)
            states.append(edges[0](states[a]) + edges[1](states[b]))
        return torch.cat(states[2:], dim=1)


class MetaNASNetwork(nn.Module):
    """The discrete network of one genotype: images to ``NODES * C`` features.

    Args:
        genotype: The normal and reduction cells.
        channels: ``C`` per node (MetaNAS: 28 in search, 96 upscaled).
        cells: Number of cells (MetaNAS: 4 in search, 5 upscaled).
        reductions: Indices of the reduction cells (MetaNAS: cells 1 and 3, of 4 or 5).
        in_channels: Image channels.
        stem_multiplier: The stem outputs ``stem_multiplier * C`` channels.
    """

    def __init__(
        self,
        genotype: Genotype,
        *,
        channels: int = 28,
        cells: int = 4,
        reductions: tuple[int, ...] = (1, 3),
        in_channels: int = 1,
        stem_multiplier: int = 3,
    ) -> None:
        super().__init__()
        stem = stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), MetaBatchNorm2d(stem)
        )
        previous_previous, previous = stem, stem
        reduction_before = False
        self.cells = nn.ModuleList()
        for index in range(cells):
            reduction = index in reductions
            cell = Cell(
                genotype.reduce if reduction else genotype.normal,
                channels,
                previous_previous,
                previous,
                reduction=reduction,
                reduction_before=reduction_before,
            )
            self.cells.append(cell)
            previous_previous, previous = previous, NODES * channels
            reduction_before = reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.out_features = previous

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, 3C)`` of images ``(N, C_in, H, W)``."""
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        features: Tensor = self.flatten(self.pool(s1))
        return features


@SEARCH_SPACES.register("metanas")
class MetaNASSpace(SearchSpace[Genotype]):
    """MetaNAS's few-shot cell space with its macro network.

    Args:
        channels: ``C`` per node (28 as in MetaNAS's search; 96 for its upscaled networks).
        cells: Number of cells (4 in search, 5 upscaled).
        in_channels: Image channels (1 for Omniglot, 3 for natural images).
        image_size: Side of the square images (28 Omniglot, 84 mini-ImageNet).
    """

    def __init__(
        self,
        *,
        channels: PositiveInt = 28,
        cells: PositiveInt = 4,
        in_channels: PositiveInt = 1,
        image_size: PositiveInt = 28,
    ) -> None:
        if channels % 2:
            raise ArchitectureError(
                f"channels must be even (factorized reductions), got {channels}"
            )
        self.channels = channels
        self.cells = cells
        self.in_channels = in_channels
        self.image_size = image_size

    @property
    def input_shape(self) -> tuple[int, int, int]:  # noqa: D102
        return (self.in_channels, self.image_size, self.image_size)

    def sample(self, rng: random.Random) -> Genotype:  # noqa: D102
        def cell() -> CellGenotype:
            nodes = []
            for node in range(NODES):
                first, second = sorted(rng.sample(range(node + 2), 2))
                ops = (rng.choice(FEW_SHOT_OPERATIONS), rng.choice(FEW_SHOT_OPERATIONS))
                nodes.append(((ops[0], first), (ops[1], second)))
            return tuple(nodes)

        return Genotype(cell(), cell())

    def encode(self, architecture: Genotype) -> str:  # noqa: D102
        self._check(architecture)
        cells = []
        for kind in CELL_TYPES:
            genotype: CellGenotype = getattr(architecture, kind)
            nodes = ",".join(f"{op}~{source}" for op, source in genotype[0])
            rest = [",".join(f"{op}~{source}" for op, source in node) for node in genotype[1:]]
            cells.append(f"{kind}:" + "|".join([nodes, *rest]))
        return ";".join(cells)

    def decode(self, text: str) -> Genotype:  # noqa: D102
        example = (
            "normal:conv_3x3~0,sep_conv_3x3~1|conv_3x3~0,sep_conv_3x3~2|dil_conv_3x3~1,conv_1x5_5x1~3;"
            "reduce:sep_conv_3x3~0,conv_3x3~1|conv_3x3~0,sep_conv_3x3~2|conv_3x3~0,dil_conv_3x3~1"
        )
        parts = dict(part.partition(":")[::2] for part in text.strip().split(";"))
        if sorted(parts) != sorted(CELL_TYPES):
            raise ArchitectureError(
                f"{text!r} is not a MetaNAS genotype: it needs a normal and a reduce cell, like "
                f"{example}"
            )
        cells: dict[str, CellGenotype] = {}
        for kind in CELL_TYPES:
            nodes = parts[kind].split("|")
            if len(nodes) != NODES:
                raise ArchitectureError(
                    f"{text!r}: the {kind} cell needs {NODES} nodes, got {len(nodes)}"
                )
            parsed: list[NodeGenotype] = []
            for index, node in enumerate(nodes):
                edges = node.split(",")
                if len(edges) != 2:
                    raise ArchitectureError(
                        f"{text!r}: node {index} of the {kind} cell needs 2 edges, got {len(edges)}"
                    )
                pair: list[tuple[str, int]] = []
                for edge in edges:
                    op, _, source = edge.partition("~")
                    if not source.isdigit():
                        raise ArchitectureError(f"{text!r}: edge {edge!r} must be written op~input")
                    pair.append((op, int(source)))
                parsed.append((pair[0], pair[1]))
            cells[kind] = tuple(parsed)
        genotype = Genotype(cells["normal"], cells["reduce"])
        self._check(genotype)
        return genotype

    def to_json(self, architecture: Genotype) -> dict[str, list[list[list[object]]]]:  # noqa: D102
        self._check(architecture)
        return {
            kind: [[[op, source] for op, source in node] for node in getattr(architecture, kind)]
            for kind in CELL_TYPES
        }

    def from_json(self, value: object) -> Genotype:  # noqa: D102
        if isinstance(value, str):
            return self.decode(value)
        if not isinstance(value, dict) or sorted(value) != sorted(CELL_TYPES):
            raise ArchitectureError(f"expected {{'normal': ..., 'reduce': ...}}, got {value!r}")
        try:
            cells = {
                kind: tuple(
                    tuple((str(op), int(source)) for op, source in node) for node in value[kind]
                )
                for kind in CELL_TYPES
            }
        except (TypeError, ValueError) as exc:
            raise ArchitectureError(f"not a MetaNAS genotype in JSON form: {exc}") from None
        genotype = Genotype(cells["normal"], cells["reduce"])  # type: ignore[arg-type]
        self._check(genotype)
        return genotype

    def size(self) -> int:  # noqa: D102
        per_cell = math.prod(
            math.comb(node + 2, 2) * len(FEW_SHOT_OPERATIONS) ** 2 for node in range(NODES)
        )
        return per_cell**2

    def build(self, architecture: Genotype, *, num_classes: int | None = None) -> nn.Module:  # noqa: D102
        self._check(architecture)
        backbone = MetaNASNetwork(
            architecture, channels=self.channels, cells=self.cells, in_channels=self.in_channels
        )
        return self.with_head(backbone, num_classes)

    def relax(  # noqa: D102
        self, *, num_classes: int | None = None, skip_below: float = 0.0, **options: Any
    ) -> nn.Module:
        from metarch.nas.spaces.metanas_search import MetaNASSearchNetwork

        network = MetaNASSearchNetwork(
            channels=self.channels,
            cells=self.cells,
            in_channels=self.in_channels,
            skip_below=skip_below,
            **options,
        )
        return self.with_head(network, num_classes)

    @staticmethod
    def _check(architecture: Genotype) -> None:
        for kind in CELL_TYPES:
            cell = getattr(architecture, kind)
            if len(cell) != NODES:
                raise ArchitectureError(f"the {kind} cell needs {NODES} nodes, got {len(cell)}")
            for index, node in enumerate(cell):
                if len(node) != 2:
                    raise ArchitectureError(f"node {index} of the {kind} cell needs 2 edges")
                (op_a, a), (op_b, b) = node
                for op in (op_a, op_b):
                    if op not in FEW_SHOT_OPERATIONS:
                        raise ArchitectureError(
                            f"unknown operation {op!r} in node {index} of the {kind} cell "
                            f"(operations: {', '.join(FEW_SHOT_OPERATIONS)})"
                        )
                if not (0 <= a < b <= index + 1):
                    raise ArchitectureError(
                        f"node {index} of the {kind} cell takes inputs {a} and {b}; it needs two "
                        f"different inputs from 0..{index + 1}, in increasing order"
                    )
