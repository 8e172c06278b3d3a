"""The NAS-Bench-201 cell space (Dong and Yang, ICLR 2020).

A cell is a DAG of 4 nodes; each of its 6 edges ``j <- i`` (``i < j``) carries one of 5
operations, and node ``j`` is the sum of its incoming edges: 5^6 = 15,625 architectures.
The canonical string lists the edges into nodes 1, 2, 3::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|

The macro network is the benchmark's: a 3x3 stem convolution to ``C`` channels with batch
norm, then three stages of ``N`` cells at ``C``, ``2C`` and ``4C`` channels joined by
residual reduction blocks (stride 2), batch norm and ReLU, global average pooling. The
benchmark's networks are ``C=16, N=5`` on 32x32 images (their real-device latencies are
in ``../shared/data/hardware/help_nasbench201_latency.csv``, keyed by this string);
smaller macros (``channels``, ``cells_per_stage``) train faster and keep the cell.

Convolutions are ReLU -> conv -> batch norm, as in the benchmark; batch norm is
:class:`~metarch.models.norm.MetaBatchNorm2d`, so every meta-learner of ours adapts these
networks, task-batched too.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import Tensor, nn

from metarch.models.norm import MetaBatchNorm2d
from metarch.nas.spaces.base import SEARCH_SPACES, ArchitectureError, Layer, SearchSpace
from metarch.registry import PositiveInt

__all__ = [
    "EDGES",
    "OPERATIONS",
    "Cell201",
    "NASBench201Network",
    "NASBench201Space",
    "create_operation201",
    "macro_body",
    "macro_stem",
]

#: The 5 candidate operations, in the benchmark's order.
OPERATIONS: tuple[str, ...] = (
    "none",
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
)
#: The 6 edges ``(to, from)`` in the order of the canonical string.
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))

#: An architecture: the operation of every edge, in :data:`EDGES` order.
Architecture201 = tuple[str, str, str, str, str, str]


class ReLUConvBN(nn.Sequential):
    """ReLU, convolution (no bias), batch norm: the benchmark's convolution unit."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
            MetaBatchNorm2d(out_channels),
        )


class Zero(nn.Module):
    """The ``none`` operation: an edge that contributes nothing."""

    def forward(self, x: Tensor) -> Tensor:
        return x * 0.0


def create_operation201(name: str, channels: int) -> nn.Module:
    """The NAS-Bench-201 operation ``name`` on ``channels`` channels (stride 1)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ArchitectureError(f"unknown NAS-Bench-201 operation {name!r}")


class Cell201(nn.Module):
    """One cell: node ``j`` is the sum of the operations on its incoming edges."""

    def __init__(self, architecture: Architecture201, channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(create_operation201(op, channels) for op in architecture)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        nodes = [x]
        for target in (1, 2, 3):
            incoming = [
                edge(nodes[source])
                for (to, source), edge in zip(EDGES, self.edges, strict=True)
                if to == target
            ]
            total = incoming[0]
            for term in incoming[1:]:
                total = total + term
            nodes.append(total)
        return nodes[3]


class _Add(nn.Module):
    """A cell's sum of two edges, as a layer alone (the input added to itself)."""

    def forward(self, x: Tensor) -> Tensor:
        return x + x


class ResidualReduction(nn.Module):
    """The benchmark's residual reduction block.

    Two ReLU-conv-BN units (the first with stride 2) plus a shortcut of 2x2 average
    pooling and a 1x1 convolution.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(in_channels, out_channels, 3, 2)
        self.conv_b = ReLUConvBN(out_channels, out_channels, 3, 1)
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2, stride=2), nn.Conv2d(in_channels, out_channels, 1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv_b(self.conv_a(x)) + self.shortcut(x)
        return out


def macro_stem(in_channels: int, channels: int) -> nn.Sequential:
    """The benchmark's stem: a 3x3 convolution to ``channels``, batch norm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), MetaBatchNorm2d(channels)
    )


def macro_body(
    channels: int, cells_per_stage: int, cell: Callable[[int], nn.Module]
) -> tuple[list[nn.Module], int]:
    """The benchmark's body: the layers, and the last stage's width.

    Three stages of ``cells_per_stage`` cells at ``C``, ``2C``, ``4C`` channels joined by
    residual reductions.

    Args:
        channels: ``C``.
        cells_per_stage: ``N``.
        cell: Builds one cell for a width (a discrete cell, or a relaxed one).
    """
    layers: list[nn.Module] = []
    width = channels
    for stage in range(3):
        if stage > 0:
            layers.append(ResidualReduction(width, width * 2))
            width *= 2
        layers.extend(cell(width) for _ in range(cells_per_stage))
    return layers, width


class NASBench201Network(nn.Module):
    """The macro network of one NAS-Bench-201 architecture: images to ``4C`` features.

    Args:
        architecture: The operation of every edge (:data:`EDGES` order).
        channels: ``C``, the first stage's width (16 in the benchmark).
        cells_per_stage: ``N`` (5 in the benchmark).
        in_channels: Image channels.
    """

    def __init__(
        self,
        architecture: Architecture201,
        *,
        channels: int = 16,
        cells_per_stage: int = 5,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.stem = macro_stem(in_channels, channels)
        layers, width = macro_body(
            channels, cells_per_stage, lambda width: Cell201(architecture, width)
        )
        self.cells = nn.Sequential(*layers)
        self.last = nn.Sequential(MetaBatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.out_features = width

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, 4C)`` of images ``(N, C_in, H, W)``."""
        features: Tensor = self.flatten(self.pool(self.last(self.cells(self.stem(x)))))
        return features


@SEARCH_SPACES.register("nasbench201")
class NASBench201Space(SearchSpace[Architecture201]):
    """The NAS-Bench-201 cell space with a macro network of chosen size.

    Args:
        channels: ``C`` of the macro network (the benchmark: 16).
        cells_per_stage: ``N`` (the benchmark: 5).
        in_channels: Image channels.
        image_size: Side of the square images (the benchmark: 32).
    """

    def __init__(
        self,
        *,
        channels: PositiveInt = 16,
        cells_per_stage: PositiveInt = 5,
        in_channels: PositiveInt = 3,
        image_size: PositiveInt = 32,
    ) -> None:
        self.channels = channels
        self.cells_per_stage = cells_per_stage
        self.in_channels = in_channels
        self.image_size = image_size

    @property
    def input_shape(self) -> tuple[int, int, int]:  # noqa: D102
        return (self.in_channels, self.image_size, self.image_size)

    def benchmark_macro(self) -> bool:
        """Whether these are the benchmark's networks, which the real-device tables measured.

        The benchmark's macro: ``C = 16``, ``N = 5``, 32x32 RGB images.
        """
        macro = (self.channels, self.cells_per_stage, self.in_channels, self.image_size)
        return macro == (16, 5, 3, 32)

    def largest(self) -> Architecture201:
        """The most costly cell: a 3x3 convolution on every edge."""
        return ("nor_conv_3x3",) * len(EDGES)  # type: ignore[return-value]

    def smallest(self) -> Architecture201:
        """The least costly cell by parameters and FLOPs: ``none`` on every edge."""
        return ("none",) * len(EDGES)  # type: ignore[return-value]

    def draw(self, choose: Callable[[str, Sequence[Any]], Any]) -> Architecture201:
        """The operation ``edge{e}`` of each edge (:data:`EDGES` order)."""
        return tuple(choose(f"edge{e}", OPERATIONS) for e in range(len(EDGES)))

    def sample(self, rng: random.Random) -> Architecture201:  # noqa: D102
        ops = tuple(rng.choice(OPERATIONS) for _ in EDGES)
        return ops  # type: ignore[return-value]

    def encode(self, architecture: Architecture201) -> str:  # noqa: D102
        self._check(architecture)
        nodes = []
        for target in (1, 2, 3):
            ops = [
                f"{op}~{source}"
                for (to, source), op in zip(EDGES, architecture, strict=True)
                if to == target
            ]
            nodes.append("|" + "|".join(ops) + "|")
        return "+".join(nodes)

    def decode(self, text: str) -> Architecture201:  # noqa: D102
        example = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|"
        nodes = text.strip().split("+")
        if len(nodes) != 3:
            raise ArchitectureError(
                f"{text!r} is not a NAS-Bench-201 architecture: it needs 3 nodes joined by "
                f"'+', like {example}"
            )
        ops: list[str] = []
        for target, node in enumerate(nodes, start=1):
            if not (node.startswith("|") and node.endswith("|")):
                raise ArchitectureError(f"{text!r}: node {target} must be written |op~i|...|")
            edges = node[1:-1].split("|")
            if len(edges) != target:
                raise ArchitectureError(
                    f"{text!r}: node {target} needs {target} incoming edge(s), got {len(edges)}"
                )
            for source, edge in enumerate(edges):
                op, _, index = edge.partition("~")
                if index != str(source):
                    raise ArchitectureError(
                        f"{text!r}: edge {edge!r} of node {target} must come from node {source}"
                    )
                if op not in OPERATIONS:
                    raise ArchitectureError(
                        f"{text!r}: unknown operation {op!r} (operations: {', '.join(OPERATIONS)})"
                    )
                ops.append(op)
        return tuple(ops)  # type: ignore[return-value]

    def size(self) -> int:  # noqa: D102
        return int(len(OPERATIONS) ** len(EDGES))

    def mutate(  # noqa: D102
        self, architecture: Architecture201, rng: random.Random, rate: float
    ) -> Architecture201:
        self._check(architecture)
        ops = tuple(rng.choice(OPERATIONS) if rng.random() < rate else op for op in architecture)
        return ops  # type: ignore[return-value]

    def crossover(  # noqa: D102
        self, first: Architecture201, second: Architecture201, rng: random.Random
    ) -> Architecture201:
        ops = tuple(a if rng.random() < 0.5 else b for a, b in zip(first, second, strict=True))
        return ops  # type: ignore[return-value]

    def relax(  # noqa: D102
        self, *, num_classes: int | None = None, skip_below: float = 0.0, **options: Any
    ) -> nn.Module:
        from metarch.nas.spaces.nasbench201_search import NASBench201SearchNetwork

        network = NASBench201SearchNetwork(
            channels=self.channels,
            cells_per_stage=self.cells_per_stage,
            in_channels=self.in_channels,
            skip_below=skip_below,
            **options,
        )
        return self.with_head(network, num_classes)

    def enumerate(self) -> Iterator[Architecture201]:  # noqa: D102
        yield from itertools.product(OPERATIONS, repeat=len(EDGES))

    def build(  # noqa: D102
        self, architecture: Architecture201, *, num_classes: int | None = None
    ) -> nn.Module:
        self._check(architecture)
        backbone = NASBench201Network(
            architecture,
            channels=self.channels,
            cells_per_stage=self.cells_per_stage,
            in_channels=self.in_channels,
        )
        return self.with_head(backbone, num_classes)

    def layers(  # noqa: D102
        self, architecture: Architecture201, *, num_classes: int | None = None
    ) -> list[Layer]:
        self._check(architecture)
        cells = [self._cell_layers(architecture, *stage) for stage in self._stages()]
        return self._network_layers(cells, num_classes)

    def layer_catalogue(self, *, num_classes: int | None = None) -> list[Layer]:  # noqa: D102
        cells = [
            [self._edge(op, width, side) for op in OPERATIONS] + [self._add(width, side)]
            for width, side in self._stages()
        ]
        distinct = {layer.key: layer for layer in self._network_layers(cells, num_classes)}
        return list(distinct.values())

    def _stages(self) -> list[tuple[int, int]]:
        """``(channels, side)`` of the three stages."""
        return [(self.channels * 2**s, (self.image_size + 2**s - 1) // 2**s) for s in range(3)]

    def _edge(self, op: str, width: int, side: int) -> Layer:
        kernel = {"nor_conv_1x1": 1, "nor_conv_3x3": 3, "avg_pool_3x3": 3}.get(op)
        shape = (width, side, side)
        return Layer(
            Layer.make_key(op, shape, width, kernel, 1),
            shape,
            lambda: create_operation201(op, width),
        )

    @staticmethod
    def _add(width: int, side: int) -> Layer:
        shape = (width, side, side)
        return Layer(Layer.make_key("add", shape), shape, _Add)

    def _cell_layers(self, architecture: Architecture201, width: int, side: int) -> list[Layer]:
        """One cell: its 6 edges and the 3 sums into nodes 2 and 3, as it runs them."""
        layers = [self._edge(op, width, side) for op in architecture]
        return layers + [self._add(width, side)] * 3

    def _network_layers(self, cells: list[list[Layer]], num_classes: int | None) -> list[Layer]:
        """The network's layers around its cells' (``cells[stage]``, one cell's layers).

        Stem, ``cells_per_stage`` copies of each stage's cell layers with reductions
        between stages, the last batch norm and ReLU, pooling and the head.
        """
        side = self.image_size
        stem_in = (self.in_channels, side, side)
        layers = [
            Layer(
                Layer.make_key("stem_conv_bn", stem_in, self.channels, 3, 1),
                stem_in,
                lambda: macro_stem(self.in_channels, self.channels),
            )
        ]
        stages = self._stages()
        for index, ((width, _), cell) in enumerate(zip(stages, cells, strict=True)):
            if index > 0:
                previous, before = stages[index - 1]
                shape = (previous, before, before)
                layers.append(
                    Layer(
                        Layer.make_key("residual_reduction", shape, width, 3, 2),
                        shape,
                        functools.partial(ResidualReduction, previous, width),
                    )
                )
            layers.extend(cell * self.cells_per_stage)
        width, side = stages[-1]
        last = (width, side, side)
        layers.append(
            Layer(
                Layer.make_key("bn_relu", last),
                last,
                lambda: nn.Sequential(MetaBatchNorm2d(width), nn.ReLU()),
            )
        )
        layers.append(
            Layer(
                Layer.make_key("global_avg_pool", last),
                last,
                lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            )
        )
        if num_classes is not None:
            layers.append(
                Layer(
                    Layer.make_key("linear", (width,), num_classes),
                    (width,),
                    lambda: nn.Linear(width, num_classes),
                )
            )
        return layers

    @staticmethod
    def _check(architecture: Architecture201) -> None:
        if len(architecture) != len(EDGES) or any(op not in OPERATIONS for op in architecture):
            raise ArchitectureError(
                f"a NAS-Bench-201 architecture is 6 operations from {', '.join(OPERATIONS)}; "
                f"got {architecture!r}"
            )
