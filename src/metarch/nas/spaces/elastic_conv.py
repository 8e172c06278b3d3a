"""An elastic Conv-4-like space: per-layer kernel and width, a depth per stage, a global width.

Our design, in the spirit of H-Meta-NAS (Zhao et al., NeurIPS 2022: "Global Expansion"
and an "Adaptive Number of Layers") and once-for-all (elastic kernel, width and depth
sharing one set of weights). A network is Conv-4's four stages, each halving the image
(``downsample``: 2x2 max pooling after its last layer, as Conv-4 on mini-ImageNet, or
stride 2 in its first layer, as MAML's Omniglot network, four times cheaper); a stage
holds 1 to ``max_depth`` layers of convolution, batch norm and ReLU,
each with its own kernel (3 or 5) and width ratio (0.5, 0.75 or 1 of the stage's width),
and one global expansion (1, 1.5 or 2) scales every width::

    width = round(channels * expansion * ratio)

With the default ``channels=32`` the largest network is Conv-4 with three layers per
stage and 5x5 kernels (64 channels everywhere), the smallest one 3x3 layer of 16 channels
per stage. The canonical string names the expansion, then each stage's layers as
``k<kernel>w<ratio>``, stages joined by ``|``::

    e1.5|k3w0.75,k5w1|k3w1|k3w0.5,k3w0.5,k5w1|k5w1

Features are the last map flattened (Conv-4's convention: 64 on 28x28 Omniglot at the
largest width, ``C x 5 x 5`` on 84x84 images).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from metarch.models.norm import MetaBatchNorm2d
from metarch.nas.spaces.base import SEARCH_SPACES, ArchitectureError, Layer, SearchSpace
from metarch.registry import PositiveInt

__all__ = [
    "EXPANSIONS",
    "KERNELS",
    "RATIOS",
    "ElasticArchitecture",
    "ElasticConvNetwork",
    "ElasticConvSpace",
    "ElasticLayer",
]

#: Kernel sizes a layer may take.
KERNELS: tuple[int, ...] = (3, 5)
#: Width ratios (of the stage's expanded width) a layer may take.
RATIOS: tuple[float, ...] = (0.5, 0.75, 1.0)
#: Global expansions of every width.
EXPANSIONS: tuple[float, ...] = (1.0, 1.5, 2.0)
#: Stages (each halves the image).
STAGES = 4


@dataclass(frozen=True)
class ElasticLayer:
    """One layer's choices: kernel size and width ratio."""

    kernel: int
    ratio: float


@dataclass(frozen=True)
class ElasticArchitecture:
    """A global expansion and each stage's layers (1 to ``max_depth`` per stage)."""

    expansion: float
    stages: tuple[tuple[ElasticLayer, ...], ...]

    def width(self, channels: int, layer: ElasticLayer) -> int:
        """Output channels of ``layer`` for a space of base width ``channels``."""
        return max(1, round(channels * self.expansion * layer.ratio))


Downsample = Literal["maxpool", "stride"]


@dataclass(frozen=True)
class PlannedLayer:
    """One layer of a network as it runs: input shape, filters, kernel, stride, pooling."""

    input_shape: tuple[int, int, int]
    out: int
    kernel: int
    stride: int
    pool: bool


def plan_layers(
    architecture: ElasticArchitecture,
    *,
    channels: int,
    in_channels: int,
    image_size: int,
    downsample: Downsample,
) -> tuple[list[PlannedLayer], tuple[int, int, int]]:
    """Every layer ``architecture``'s network runs, and the shape of its last map."""
    planned = []
    width, side = in_channels, image_size
    for stage in architecture.stages:
        for index, layer in enumerate(stage):
            out = architecture.width(channels, layer)
            stride = 2 if downsample == "stride" and index == 0 else 1
            pool = downsample == "maxpool" and index == len(stage) - 1
            planned.append(PlannedLayer((width, side, side), out, layer.kernel, stride, pool))
            width = out
            side = (side + 1) // 2 if stride == 2 else side
            side = side // 2 if pool else side
    return planned, (width, side, side)


def _number(value: float) -> str:
    """``1.0`` -> ``1``, ``0.75`` -> ``0.75``: the shortest exact spelling."""
    return f"{value:g}"


class ConvBNReLU(nn.Sequential):
    """Convolution (same padding, with bias), batch norm, ReLU and optional 2x2 max pool."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, pool: bool, stride: int = 1
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2),
            MetaBatchNorm2d(out_channels),
            nn.ReLU(),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


class ElasticConvNetwork(nn.Module):
    """The discrete network of one architecture: images to flattened features.

    Args:
        architecture: The choices.
        channels: The space's base width.
        in_channels: Image channels.
        image_size: Side of the square images (sets the number of features).
        downsample: ``maxpool`` or ``stride`` (see the module docstring).
    """

    def __init__(
        self,
        architecture: ElasticArchitecture,
        *,
        channels: int,
        in_channels: int,
        image_size: int,
        downsample: Downsample = "maxpool",
    ) -> None:
        super().__init__()
        planned, (width, side, _) = plan_layers(
            architecture,
            channels=channels,
            in_channels=in_channels,
            image_size=image_size,
            downsample=downsample,
        )
        self.layers = nn.Sequential(
            *(ConvBNReLU(p.input_shape[0], p.out, p.kernel, p.pool, p.stride) for p in planned)
        )
        self.flatten = nn.Flatten()
        self.out_features = width * side * side

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, C * H * W)`` of the last stage's map."""
        features: Tensor = self.flatten(self.layers(x))
        return features


_LAYER = re.compile(r"k(\d+)w([0-9.]+)")


@SEARCH_SPACES.register("elastic-conv")
class ElasticConvSpace(SearchSpace[ElasticArchitecture]):
    """Conv-4-like networks with elastic kernels, widths, depths and a global expansion.

    Args:
        channels: Base width of every stage (the largest network has ``2 x channels``).
        max_depth: Most layers per stage (each stage has 1 to ``max_depth``).
        in_channels: Image channels.
        image_size: Side of the square images (at least 16: four halvings).
        downsample: ``maxpool`` (after each stage's last layer) or ``stride`` (2 in each
            stage's first layer).
    """

    def __init__(
        self,
        *,
        channels: PositiveInt = 32,
        max_depth: PositiveInt = 3,
        in_channels: PositiveInt = 3,
        image_size: PositiveInt = 32,
        downsample: Downsample = "maxpool",
    ) -> None:
        if image_size < 2**STAGES:
            raise ArchitectureError(
                f"image_size {image_size} is too small for {STAGES} poolings; use at least "
                f"{2**STAGES}"
            )
        self.channels = channels
        self.max_depth = max_depth
        self.in_channels = in_channels
        self.image_size = image_size
        self.downsample: Downsample = downsample

    @property
    def input_shape(self) -> tuple[int, int, int]:  # noqa: D102
        return (self.in_channels, self.image_size, self.image_size)

    # -- architectures -------------------------------------------------------------------

    def sample(self, rng: random.Random) -> ElasticArchitecture:  # noqa: D102
        expansion = rng.choice(EXPANSIONS)
        stages = tuple(
            tuple(
                ElasticLayer(rng.choice(KERNELS), rng.choice(RATIOS))
                for _ in range(rng.randint(1, self.max_depth))
            )
            for _ in range(STAGES)
        )
        return ElasticArchitecture(expansion, stages)

    def draw(self, choose: Callable[[str, Sequence[Any]], Any]) -> ElasticArchitecture:
        """Choices ``expansion``, per stage ``depth{s}``, ``kernel{s}.{i}``, ``ratio{s}.{i}``."""
        expansion = choose("expansion", EXPANSIONS)
        stages = []
        for stage in range(STAGES):
            depth = choose(f"depth{stage}", tuple(range(1, self.max_depth + 1)))
            stages.append(
                tuple(
                    ElasticLayer(
                        choose(f"kernel{stage}.{i}", KERNELS), choose(f"ratio{stage}.{i}", RATIOS)
                    )
                    for i in range(depth)
                )
            )
        return ElasticArchitecture(expansion, tuple(stages))

    def mutate(  # noqa: D102
        self, architecture: ElasticArchitecture, rng: random.Random, rate: float
    ) -> ElasticArchitecture:
        self._check(architecture)
        expansion = rng.choice(EXPANSIONS) if rng.random() < rate else architecture.expansion
        stages = []
        for stage in architecture.stages:
            layers = [
                ElasticLayer(
                    rng.choice(KERNELS) if rng.random() < rate else layer.kernel,
                    rng.choice(RATIOS) if rng.random() < rate else layer.ratio,
                )
                for layer in stage
            ]
            if rng.random() < rate:  # one layer more or fewer
                depth = min(self.max_depth, max(1, len(layers) + rng.choice((-1, 1))))
                while len(layers) < depth:
                    layers.append(ElasticLayer(rng.choice(KERNELS), rng.choice(RATIOS)))
                layers = layers[:depth]
            stages.append(tuple(layers))
        return ElasticArchitecture(expansion, tuple(stages))

    def crossover(  # noqa: D102
        self, first: ElasticArchitecture, second: ElasticArchitecture, rng: random.Random
    ) -> ElasticArchitecture:
        stages = tuple(
            a if rng.random() < 0.5 else b for a, b in zip(first.stages, second.stages, strict=True)
        )
        expansion = first.expansion if rng.random() < 0.5 else second.expansion
        return ElasticArchitecture(expansion, stages)

    def largest(self) -> ElasticArchitecture:
        """The largest network: deepest, widest, largest kernels."""
        layer = ElasticLayer(max(KERNELS), max(RATIOS))
        return ElasticArchitecture(max(EXPANSIONS), ((layer,) * self.max_depth,) * STAGES)

    def smallest(self) -> ElasticArchitecture:
        """The smallest network: one narrowest 3x3 layer per stage."""
        layer = ElasticLayer(min(KERNELS), min(RATIOS))
        return ElasticArchitecture(min(EXPANSIONS), ((layer,),) * STAGES)

    def size(self) -> int:  # noqa: D102
        per_layer = len(KERNELS) * len(RATIOS)
        per_stage = sum(per_layer**depth for depth in range(1, self.max_depth + 1))
        return int(len(EXPANSIONS) * per_stage**STAGES)

    def encode(self, architecture: ElasticArchitecture) -> str:  # noqa: D102
        self._check(architecture)
        stages = [
            ",".join(f"k{layer.kernel}w{_number(layer.ratio)}" for layer in stage)
            for stage in architecture.stages
        ]
        return "|".join([f"e{_number(architecture.expansion)}", *stages])

    def decode(self, text: str) -> ElasticArchitecture:  # noqa: D102
        example = "e1.5|k3w0.75,k5w1|k3w1|k3w0.5,k5w1|k5w1"
        parts = text.strip().split("|")
        if len(parts) != STAGES + 1 or not parts[0].startswith("e"):
            raise ArchitectureError(
                f"{text!r} is not an elastic-conv architecture: it needs an expansion and "
                f"{STAGES} stages joined by '|', like {example}"
            )
        expansion = _parse_choice(text, "expansion", parts[0][1:], EXPANSIONS)
        stages = []
        for number, stage in enumerate(parts[1:], start=1):
            layers = []
            for item in stage.split(","):
                match = _LAYER.fullmatch(item)
                if match is None:
                    raise ArchitectureError(
                        f"{text!r}: stage {number} layer {item!r} must be k<kernel>w<ratio>, "
                        "like k3w0.75"
                    )
                kernel = int(_parse_choice(text, "kernel", match[1], KERNELS))
                layers.append(ElasticLayer(kernel, _parse_choice(text, "ratio", match[2], RATIOS)))
            stages.append(tuple(layers))
        architecture = ElasticArchitecture(expansion, tuple(stages))
        self._check(architecture)
        return architecture

    def _check(self, architecture: ElasticArchitecture) -> None:
        if not isinstance(architecture, ElasticArchitecture):
            raise ArchitectureError(f"not an elastic-conv architecture: {architecture!r}")
        if architecture.expansion not in EXPANSIONS:
            raise ArchitectureError(
                f"expansion {architecture.expansion} is not one of {EXPANSIONS}"
            )
        if len(architecture.stages) != STAGES:
            raise ArchitectureError(
                f"an elastic-conv architecture has {STAGES} stages, got {len(architecture.stages)}"
            )
        for number, stage in enumerate(architecture.stages, start=1):
            if not 1 <= len(stage) <= self.max_depth:
                raise ArchitectureError(
                    f"stage {number} has {len(stage)} layers; this space allows 1 to "
                    f"{self.max_depth} (max_depth)"
                )
            for layer in stage:
                if layer.kernel not in KERNELS or layer.ratio not in RATIOS:
                    raise ArchitectureError(
                        f"stage {number}: kernel {layer.kernel} / ratio {layer.ratio} not in "
                        f"kernels {KERNELS} / ratios {RATIOS}"
                    )

    # -- networks ------------------------------------------------------------------------

    def build(  # noqa: D102
        self, architecture: ElasticArchitecture, *, num_classes: int | None = None
    ) -> nn.Module:
        self._check(architecture)
        backbone = ElasticConvNetwork(
            architecture,
            channels=self.channels,
            in_channels=self.in_channels,
            image_size=self.image_size,
            downsample=self.downsample,
        )
        return self.with_head(backbone, num_classes)

    def layers(  # noqa: D102
        self, architecture: ElasticArchitecture, *, num_classes: int | None = None
    ) -> list[Layer]:
        self._check(architecture)
        planned, last = self.plan(architecture)
        layers = [self._conv(p.input_shape, p.out, p.kernel, p.pool, p.stride) for p in planned]
        if num_classes is not None:
            layers.append(self._head(last, num_classes))
        return layers

    def plan(
        self, architecture: ElasticArchitecture
    ) -> tuple[list[PlannedLayer], tuple[int, int, int]]:
        """The layers ``architecture``'s network runs, and its last map's shape."""
        return plan_layers(
            architecture,
            channels=self.channels,
            in_channels=self.in_channels,
            image_size=self.image_size,
            downsample=self.downsample,
        )

    def layer_catalogue(self, *, num_classes: int | None = None) -> list[Layer]:  # noqa: D102
        strided = self.downsample == "stride"
        distinct: dict[str, Layer] = {}
        for expansion in EXPANSIONS:
            widths = sorted({max(1, round(self.channels * expansion * r)) for r in RATIOS})
            side = self.image_size
            inputs = [self.in_channels]
            for _ in range(STAGES):
                # A stage's first layer takes the previous stage's width (and, strided,
                # halves the image); later ones take its own width.
                firsts = [(w, side, 2 if strided else 1) for w in inputs]
                side = (side + 1) // 2 if strided else side
                later = [(w, side, 1) for w in widths]
                for width, at, stride in firsts + later:
                    for out in widths:
                        for kernel in KERNELS:
                            for pool in (False,) if strided else (False, True):
                                layer = self._conv((width, at, at), out, kernel, pool, stride)
                                distinct.setdefault(layer.key, layer)
                inputs = widths
                side = side if strided else side // 2
            if num_classes is not None:
                for width in widths:
                    layer = self._head((width, side, side), num_classes)
                    distinct.setdefault(layer.key, layer)
        return list(distinct.values())

    @staticmethod
    def _conv(
        shape: tuple[int, int, int], out: int, kernel: int, pool: bool, stride: int = 1
    ) -> Layer:
        name = "conv_bn_relu_maxpool" if pool else "conv_bn_relu"
        return Layer(
            Layer.make_key(name, shape, out, kernel, stride),
            shape,
            functools.partial(ConvBNReLU, shape[0], out, kernel, pool, stride),
        )

    @staticmethod
    def _head(shape: tuple[int, int, int], num_classes: int) -> Layer:
        features = shape[0] * shape[1] * shape[2]
        return Layer(
            Layer.make_key("flatten_linear", shape, num_classes),
            shape,
            lambda: nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes)),
        )


def _parse_choice(text: str, what: str, value: str, choices: tuple[float, ...]) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number not in choices:
        raise ArchitectureError(
            f"{text!r}: {what} {value!r} is not one of {', '.join(_number(c) for c in choices)}"
        )
    return number
