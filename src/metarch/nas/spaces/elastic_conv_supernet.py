"""The elastic-conv space as one weight-sharing supernet, once-for-all style.

Every layer slot of the largest network holds the widest, largest-kernel weights; a
sub-network uses, in each layer, the first ``out`` filters over its first ``in`` input
channels and the centre ``k x k`` of each kernel (once-for-all also learns a small
transformation of the centre for smaller kernels; we use the centre as it is: ours). A
stage of ``d`` layers uses the stage's first ``d`` slots. Batch norm keeps the widest
affine parameters and uses the first ``out``; the head's weights are sliced to the
sub-network's features (the last map flattened channel-major, so its first features are
the first channels').

Which sub-network runs is read from the forward context (:func:`subnet_context`; the
largest without one), so meta-learners call the supernet unchanged. The same slices give
:func:`extract_subnet` (the discrete network of an architecture, carrying the supernet's
weights: it computes what the supernet computes for that architecture) and
:func:`add_subnet_gradients` (the gradient of a loss of the extracted network, put back
on the supernet's weights it was sliced from).

Batch norm and sub-networks: running statistics are shared between sub-networks of
different widths, so they are only right for the sub-network that last updated them.
Meta-learners should normalise with batch statistics (``norm_policy: batch``, MAML's
transductive setting), which are exactly right for any sub-network.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarch.models.context import current_context, forward_context
from metarch.models.norm import MetaBatchNorm2d
from metarch.nas.spaces.base import Classifier
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
from metarch.registry import PositiveInt

__all__ = [
    "ElasticConv2d",
    "ElasticConvSupernet",
    "add_subnet_gradients",
    "extract_subnet",
    "subnet_context",
    "subnet_slices",
]

Index = tuple[slice, ...]


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


class ElasticConvSupernet(nn.Module):
    """Every network of an :class:`ElasticConvSpace`, sharing one set of weights.

    Args:
        channels: The space's base width.
        max_depth: Layer slots per stage.
        in_channels: Image channels.
        image_size: Side of the square images.
        downsample: ``maxpool`` or ``stride`` (see :mod:`~metarch.nas.spaces.elastic_conv`).
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

    def forward(self, x: Tensor) -> Tensor:
        """Features of the sub-network the forward context names (the largest if none)."""
        architecture = current_architecture() or self.space.largest()
        for slot, layer in self.slots(architecture):
            x = self.convs[slot](x, layer.out, layer.kernel, layer.stride)
            x = F.relu(self.norms[slot](x))
            if layer.pool:
                x = F.max_pool2d(x, 2)
        return torch.flatten(x, 1)


class SubnetLinear(nn.Linear):
    """A linear head that reads only as many features as the running sub-network has."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight[:, : x.shape[1]], self.bias)


def supernet_classifier(supernet: ElasticConvSupernet, num_classes: int) -> Classifier:
    """``supernet`` under a head of ``num_classes`` that follows the sub-network's width."""
    classifier = Classifier(supernet, supernet.out_features, num_classes)
    head = SubnetLinear(supernet.out_features, num_classes)
    classifier.head = head
    return classifier


def current_architecture() -> ElasticArchitecture | None:
    """The sub-network the forward context names, if any."""
    subnet = current_context().subnet
    if subnet is None:
        return None
    architecture = subnet.get("architecture")
    if not isinstance(architecture, ElasticArchitecture):
        raise TypeError(f"the forward context's sub-network is not elastic-conv: {subnet!r}")
    return architecture


@contextlib.contextmanager
def subnet_context(architecture: ElasticArchitecture) -> Iterator[None]:
    """Run supernets in the enclosed block as ``architecture``'s sub-network."""
    with forward_context(subnet={"architecture": architecture}):
        yield


def _supernet_of(model: nn.Module) -> tuple[ElasticConvSupernet, str]:
    """The supernet inside ``model`` and the prefix of its parameter names."""
    for name, module in model.named_modules():
        if isinstance(module, ElasticConvSupernet):
            return module, f"{name}." if name else ""
    raise TypeError(f"{type(model).__name__} holds no elastic-conv supernet")


def subnet_slices(
    model: nn.Module, architecture: ElasticArchitecture
) -> dict[str, tuple[str, Index]]:
    """Where every tensor of the extracted network comes from in ``model``'s state.

    Returns:
        ``{name in the discrete network: (name in model, index into it)}`` for parameters
        and buffers (the discrete network is :meth:`ElasticConvSpace.build`'s, with a head
        if ``model`` has one).
    """
    supernet, prefix = _supernet_of(model)
    backbone = "backbone." if prefix else ""
    slices: dict[str, tuple[str, Index]] = {}
    every = (slice(None),)
    for position, (slot, layer) in enumerate(supernet.slots(architecture)):
        conv, norm = f"{backbone}layers.{position}.0", f"{backbone}layers.{position}.1"
        width = layer.out
        index = ElasticConv2d.weight_index(
            layer.input_shape[0], width, layer.kernel, supernet.kernel
        )
        slices[f"{conv}.weight"] = (f"{prefix}convs.{slot}.weight", index)
        slices[f"{conv}.bias"] = (f"{prefix}convs.{slot}.bias", (slice(0, width),))
        for name in ("weight", "bias", "running_mean", "running_var"):
            slices[f"{norm}.{name}"] = (f"{prefix}norms.{slot}.{name}", (*every, slice(0, width)))
    if prefix:
        _, (width, side, _) = supernet.space.plan(architecture)
        features = width * side * side
        slices["head.weight"] = ("head.weight", (*every, slice(0, features)))
        slices["head.bias"] = ("head.bias", every)
    return slices


def extract_subnet(model: nn.Module, architecture: ElasticArchitecture) -> nn.Module:
    """The discrete network of ``architecture`` with ``model``'s (supernet's) weights."""
    supernet, prefix = _supernet_of(model)
    head = getattr(model, "head", None) if prefix else None
    classes = head.out_features if isinstance(head, nn.Linear) else None
    reference = next(supernet.parameters())
    # Built without initialising (every tensor is loaded next): fast, and the global
    # random stream is left alone, so runs that extract more often still resume exactly.
    with torch.device("meta"):
        network = supernet.space.build(architecture, num_classes=classes)
    network.to_empty(device=reference.device).to(dtype=reference.dtype)
    state = model.state_dict()
    network.load_state_dict(
        {
            name: state[source][index].clone()
            for name, (source, index) in subnet_slices(model, architecture).items()
        },
        strict=True,
    )
    network.train(model.training)
    return network


@torch.no_grad()
def add_subnet_gradients(
    model: nn.Module, subnet: nn.Module, architecture: ElasticArchitecture, scale: float = 1.0
) -> None:
    """Add ``scale`` x the gradients of an extracted sub-network to the supernet's slices.

    The sub-network's weights are slices of the supernet's, so a loss's gradient with
    respect to the supernet is the sub-network's gradient put back where it was sliced
    from (zero elsewhere).
    """
    parameters = dict(model.named_parameters())
    for name, parameter in subnet.named_parameters():
        if parameter.grad is None:
            continue
        source, index = subnet_slices_cache(model, architecture)[name]
        target = parameters[source]
        if target.grad is None:
            target.grad = torch.zeros_like(target)
        target.grad[index] += scale * parameter.grad


def subnet_slices_cache(model: nn.Module, architecture: ElasticArchitecture) -> dict[str, Any]:
    """:func:`subnet_slices`, computed once per (model, architecture) pair."""
    cache: dict[Any, dict[str, Any]] = model.__dict__.setdefault("_subnet_slices", {})
    if architecture not in cache:
        cache[architecture] = subnet_slices(model, architecture)
    return cache[architecture]
