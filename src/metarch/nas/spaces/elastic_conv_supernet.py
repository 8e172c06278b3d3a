"""The elastic-conv space as one weight-sharing supernet, once-for-all style.

Every layer slot of the largest network holds the widest, largest-kernel weights; a
sub-network uses, in each layer, the first ``out`` filters over its first ``in`` input
channels and the centre ``k x k`` of each kernel (once-for-all also learns a small
transformation of the centre for smaller kernels; we use the centre as it is: ours). A
stage of ``d`` layers uses the stage's first ``d`` slots. Batch norm keeps the widest
affine parameters and uses the first ``out``; the head's weights are sliced to the
sub-network's features (the last map flattened channel-major, so its first features are
the first channels').

Which sub-network runs is read from the forward context
(:func:`~metarch.nas.spaces.supernet.subnet_context`; the largest without one), so
meta-learners call the supernet unchanged. Its slices give, through
:mod:`metarch.nas.spaces.supernet`, the discrete network of an architecture carrying the
supernet's weights and the way its gradients go back.

Batch norm and sub-networks: running statistics are shared between sub-networks of
different widths, so they are only right for the sub-network that last updated them.
Meta-learners should normalise with batch statistics (``norm_policy: batch``, MAML's
transductive setting), which are exactly right for any sub-network.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarch.models.norm import MetaBatchNorm2d
from metarch.nas.spaces.elastic_conv import (
    EXPANSIONS,
    KERNELS,
    RATIOS,
    STAGES,
    Downsample,
    ElasticArchitecture,
    ElasticConvSpace,
    PlannedLayer,
)
from metarch.nas.spaces.supernet import Index, WeightSharingSupernet, current_architecture
from metarch.registry import PositiveInt

__all__ = ["ElasticConv2d", "ElasticConvSupernet"]


class ElasticConv2d(nn.Module):
    """A convolution whose filters, input channels and kernel are cut from the largest.

    Args:
        in_channels: Most input channels.
        out_channels: Most filters.
        kernel: Largest kernel size (odd).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(out_channels))
        # nn.Conv2d's initialisation, for the largest kernel.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_channels * kernel * kernel)
        nn.init.uniform_(self.bias, -bound, bound)

    @staticmethod
    def weight_index(in_channels: int, out_channels: int, kernel: int, largest: int) -> Index:
        """The slice of the weight a ``kernel`` convolution of these widths uses."""
        start = (largest - kernel) // 2
        window = slice(start, start + kernel)
        return (slice(0, out_channels), slice(0, in_channels), window, window)

    def forward(self, x: Tensor, out_channels: int, kernel: int, stride: int = 1) -> Tensor:
        """Convolve ``x`` with ``out_channels`` filters of ``kernel x kernel`` (same padding)."""
        index = self.weight_index(x.shape[1], out_channels, kernel, self.weight.shape[-1])
        weight, bias = self.weight[index], self.bias[:out_channels]
        return F.conv2d(x, weight, bias, stride, padding=kernel // 2)


class ElasticConvSupernet(WeightSharingSupernet):
    """Every network of an :class:`ElasticConvSpace`, sharing one set of weights.

    Args:
        channels: The space's base width.
        max_depth: Layer slots per stage.
        in_channels: Image channels.
        image_size: Side of the square images.
        downsample: ``maxpool`` or ``stride`` (see :mod:`~metarch.nas.spaces.elastic_conv`).
    """

    space: ElasticConvSpace

    def __init__(
        self,
        *,
        channels: PositiveInt = 32,
        max_depth: PositiveInt = 3,
        in_channels: PositiveInt = 3,
        image_size: PositiveInt = 32,
        downsample: Downsample = "maxpool",
    ) -> None:
        super().__init__()
        self.space = ElasticConvSpace(
            channels=channels,
            max_depth=max_depth,
            in_channels=in_channels,
            image_size=image_size,
            downsample=downsample,
        )
        self.widest = max(1, round(channels * max(EXPANSIONS) * max(RATIOS)))
        self.kernel = max(KERNELS)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for slot in range(STAGES * max_depth):
            inputs = in_channels if slot == 0 else self.widest
            self.convs.append(ElasticConv2d(inputs, self.widest, self.kernel))
            self.norms.append(MetaBatchNorm2d(self.widest))
        self.max_depth = max_depth
        _, (_, side, _) = self.space.plan(self.space.largest())
        self.out_features = self.widest * side * side

    def slots(self, architecture: ElasticArchitecture) -> Iterator[tuple[int, PlannedLayer]]:
        """``(slot, layer)`` of every layer ``architecture`` runs."""
        planned, _ = self.space.plan(architecture)
        layers = iter(planned)
        for stage, choices in enumerate(architecture.stages):
            for index in range(len(choices)):
                yield stage * self.max_depth + index, next(layers)

    def default_architecture(self) -> ElasticArchitecture:
        """The largest sub-network."""
        return self.space.largest()

    def anchors(self) -> list[ElasticArchitecture]:
        """The largest and the smallest (the sandwich rule)."""
        return [self.space.largest(), self.space.smallest()]

    def features(self, architecture: ElasticArchitecture) -> int:  # noqa: D102
        _, (width, side, _) = self.space.plan(architecture)
        return width * side * side

    def slices(self, architecture: ElasticArchitecture) -> dict[str, tuple[str, Index]]:
        """The first filters, input channels and centre kernel of each slot it runs."""
        slices: dict[str, tuple[str, Index]] = {}
        every = (slice(None),)
        for position, (slot, layer) in enumerate(self.slots(architecture)):
            conv, norm = f"layers.{position}.0", f"layers.{position}.1"
            width = layer.out
            index = ElasticConv2d.weight_index(
                layer.input_shape[0], width, layer.kernel, self.kernel
            )
            slices[f"{conv}.weight"] = (f"convs.{slot}.weight", index)
            slices[f"{conv}.bias"] = (f"convs.{slot}.bias", (slice(0, width),))
            for name in ("weight", "bias", "running_mean", "running_var"):
                slices[f"{norm}.{name}"] = (f"norms.{slot}.{name}", (*every, slice(0, width)))
        return slices

    def forward(self, x: Tensor) -> Tensor:
        """Features of the sub-network the forward context names (the largest if none)."""
        architecture = current_architecture() or self.space.largest()
        if not isinstance(architecture, ElasticArchitecture):
            raise TypeError(
                f"the forward context's sub-network is not elastic-conv: {architecture!r}"
            )
        for slot, layer in self.slots(architecture):
            x = self.convs[slot](x, layer.out, layer.kernel, layer.stride)
            x = F.relu(self.norms[slot](x))
            if layer.pool:
                x = F.max_pool2d(x, 2)
        return torch.flatten(x, 1)
