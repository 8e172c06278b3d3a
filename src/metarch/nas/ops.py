"""Candidate operations of cell search spaces, by name (an ops registry, as timm's layers).

Every entry builds ``op(channels, stride, affine)``: a module mapping ``(N, C, H, W)`` to
``(N, C, H / stride, W / stride)``. ``affine`` is the batch norms' affine flag (DARTS-style
search networks normalise without it, their discrete networks with it). Batch norm is
:class:`~metarch.models.norm.MetaBatchNorm2d`, so meta-learners adapt these operations in
their inner loops, task-batched too.

The few-shot operations are MetaNAS's (Elsken et al., 2020; see
``docs/metanas-reference.md``): note that its ``conv_3x3`` is ReLU, depthwise 3x3,
pointwise 1x1 and batch norm, not a dense convolution, and that pooling is followed by
batch norm.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from metarch.meta.batched import (
    BatchedNormContext,
    Params,
    concat_channels,
    register_batched_module,
)
from metarch.models.norm import MetaBatchNorm2d
from metarch.registry import Registry

__all__ = [
    "FEW_SHOT_OPERATIONS",
    "OPERATIONS",
    "FactorizedReduce",
    "ReLUConvBN",
    "create_operation",
]

OperationBuilder = Callable[[int, int, bool], nn.Module]

#: Operations by name: ``OPERATIONS.get(name)(channels, stride, affine)``.
OPERATIONS: Registry[OperationBuilder] = Registry("operation")


def _norm(channels: int, affine: bool) -> MetaBatchNorm2d:
    norm = MetaBatchNorm2d(channels)
    if not affine:
        # A non-affine batch norm: the scale and shift stay 1 and 0.
        norm.weight.requires_grad_(False)
        norm.bias.requires_grad_(False)
    return norm


class ReLUConvBN(nn.Sequential):
    """ReLU, a convolution without bias, batch norm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        *,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
            _norm(out_channels, affine),
        )


class DepthwiseSeparable(nn.Sequential):
    """ReLU, depthwise ``kernel`` convolution (dilated if asked), pointwise 1x1, batch norm."""

    def __init__(
        self, channels: int, kernel: int, stride: int, dilation: int, *, affine: bool
    ) -> None:
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(
                channels,
                channels,
                kernel,
                stride,
                padding,
                dilation=dilation,
                groups=channels,
                bias=False,
            ),
            nn.Conv2d(channels, channels, 1, bias=False),
            _norm(channels, affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution with two 1x1 stride-2 convolutions on offset grids.

    ReLU; one convolution sees the input, the other the input shifted by one pixel (for
    even sizes), each giving half the output channels; concatenated, then batch norm.
    """

    def __init__(self, in_channels: int, out_channels: int, *, affine: bool = True) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {out_channels}")
        self.relu = nn.ReLU()
        self.conv_a = nn.Conv2d(in_channels, out_channels // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(in_channels, out_channels // 2, 1, stride=2, bias=False)
        self.norm = _norm(out_channels, affine)

    @staticmethod
    def shifted(x: Tensor) -> Tensor:
        """The input of the second convolution: shifted by one pixel where sizes are even."""
        return x[:, :, 1:, 1:] if x.shape[-1] % 2 == 0 else x

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.relu(x)
        out = torch.cat([self.conv_a(x), self.conv_b(self.shifted(x))], dim=1)
        normed: Tensor = self.norm(out)
        return normed


def _run_factorized_reduce(
    module: nn.Module, name: str, x: Tensor, params: Params, context: BatchedNormContext
) -> Tensor:
    """FactorizedReduce on the task-grouped layout: each task concatenates its own halves."""
    assert isinstance(module, FactorizedReduce) and context.engine is not None
    engine = context.engine
    x = x.relu()
    halves = [
        engine.run_module(f"{name}.conv_a", x, params, context),
        engine.run_module(f"{name}.conv_b", FactorizedReduce.shifted(x), params, context),
    ]
    return engine.run_module(
        f"{name}.norm", concat_channels(halves, context.tasks), params, context
    )


register_batched_module(FactorizedReduce, run=_run_factorized_reduce)


def _pool_then_norm(pool: nn.Module, channels: int, affine: bool) -> nn.Module:
    return nn.Sequential(pool, _norm(channels, affine))


OPERATIONS.add(
    "max_pool_3x3",
    lambda c, stride, affine: _pool_then_norm(nn.MaxPool2d(3, stride, 1), c, affine),
)
OPERATIONS.add(
    "avg_pool_3x3",
    lambda c, stride, affine: _pool_then_norm(
        nn.AvgPool2d(3, stride, 1, count_include_pad=False), c, affine
    ),
)
OPERATIONS.add(
    "skip_connect",
    lambda c, stride, affine: (
        nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine=affine)
    ),
)
OPERATIONS.add(
    "conv_1x5_5x1",
    lambda c, stride, affine: nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(c, c, (1, 5), stride, (0, 2), bias=False),
        nn.Conv2d(c, c, (5, 1), 1, (2, 0), bias=False),
        _norm(c, affine),
    ),
)
OPERATIONS.add(
    "conv_3x3",
    lambda c, stride, affine: DepthwiseSeparable(c, 3, stride, 1, affine=affine),
)
OPERATIONS.add(
    "sep_conv_3x3",
    lambda c, stride, affine: nn.Sequential(
        DepthwiseSeparable(c, 3, stride, 1, affine=affine),
        DepthwiseSeparable(c, 3, 1, 1, affine=affine),
    ),
)
OPERATIONS.add(
    "dil_conv_3x3",
    lambda c, stride, affine: DepthwiseSeparable(c, 3, stride, 2, affine=affine),
)

#: MetaNAS's 7 few-shot operations, in its order (there is no ``none``).
FEW_SHOT_OPERATIONS: tuple[str, ...] = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "conv_1x5_5x1",
    "conv_3x3",
    "sep_conv_3x3",
    "dil_conv_3x3",
)


def create_operation(name: str, channels: int, stride: int = 1, affine: bool = True) -> nn.Module:
    """The operation registered as ``name``."""
    return OPERATIONS.get(name)(channels, stride, affine)
