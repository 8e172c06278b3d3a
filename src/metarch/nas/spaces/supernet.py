"""Weight-sharing supernets: every network of a search space in one set of weights.

A supernet (:class:`WeightSharingSupernet`) is a backbone whose forward runs the
sub-network the forward context names (:func:`subnet_context`; its default without one)
and which says, for any architecture, where each tensor of that architecture's discrete
network (:meth:`SearchSpace.build <metarch.nas.spaces.base.SearchSpace.build>`) lies in its
own weights (:meth:`WeightSharingSupernet.slices`). From that one mapping, for any supernet:

* :func:`extract_subnet`: the discrete network carrying the supernet's weights, which
  computes exactly what the supernet computes as that sub-network (so a meta-learner
  trains it as an ordinary network, task-batched);
* :func:`add_subnet_gradients`: the gradient of a loss of the extracted network, put back
  on the supernet's weights it came from, which is the supernet's own gradient.

A classifier over a supernet reads its features with :class:`SubnetLinear`, which follows
a sub-network whose feature count varies. Spaces with supernets: the elastic-conv space
(:mod:`~metarch.nas.spaces.elastic_conv_supernet`: sliced widths, kernels, depths) and the
NAS-Bench-201 cell space (:mod:`~metarch.nas.spaces.nasbench201_supernet`: one operation
per edge, as a one-shot model).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarch.models.context import current_context, forward_context
from metarch.nas.spaces.base import Classifier, SearchSpace

__all__ = [
    "Index",
    "SubnetLinear",
    "WeightSharingSupernet",
    "add_subnet_gradients",
    "current_architecture",
    "extract_subnet",
    "subnet_context",
    "subnet_slices",
    "supernet_classifier",
    "supernet_of",
]

#: An index into a supernet tensor (``()``: the whole tensor).
Index = tuple[slice, ...]


class WeightSharingSupernet(nn.Module, ABC):
    """A backbone holding every network of :attr:`space` in one set of weights.

    Subclasses build their weights, implement :meth:`slices` and :meth:`features`, and run
    :func:`current_architecture` (or :meth:`default_architecture`) in their forward.
    """

    space: SearchSpace[Any]
    #: Features of the widest sub-network (the head's input size).
    out_features: int

    @abstractmethod
    def slices(self, architecture: Any) -> dict[str, tuple[str, Index]]:
        """Where each tensor of ``architecture``'s discrete backbone lies in this supernet.

        Returns:
            ``{name in the discrete backbone: (name in this module's state, index)}`` for
            every parameter and buffer of the discrete backbone.
        """

    @abstractmethod
    def features(self, architecture: Any) -> int:
        """Features ``architecture``'s backbone gives the head."""

    @abstractmethod
    def default_architecture(self) -> Any:
        """The sub-network run without a forward context (the largest)."""

    def anchors(self) -> list[Any]:
        """Sub-networks every meta-batch trains (the rest of a sandwich is random)."""
        return [self.default_architecture()]


class SubnetLinear(nn.Linear):
    """A linear head that reads only as many features as the running sub-network has."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return F.linear(x, self.weight[:, : x.shape[1]], self.bias)


def supernet_classifier(supernet: WeightSharingSupernet, num_classes: int) -> Classifier:
    """``supernet`` under a head of ``num_classes`` that follows the sub-network's width."""
    classifier = Classifier(supernet, supernet.out_features, num_classes)
    classifier.head = SubnetLinear(supernet.out_features, num_classes)
    return classifier


def current_architecture() -> Any | None:
    """The sub-network the forward context names, if any."""
    subnet = current_context().subnet
    return None if subnet is None else subnet.get("architecture")


@contextlib.contextmanager
def subnet_context(architecture: Any) -> Iterator[None]:
    """Run supernets in the enclosed block as ``architecture``'s sub-network."""
    with forward_context(subnet={"architecture": architecture}):
        yield


def supernet_of(model: nn.Module) -> tuple[WeightSharingSupernet, str]:
    """The supernet inside ``model`` and the prefix of its parameter names."""
    for name, module in model.named_modules():
        if isinstance(module, WeightSharingSupernet):
            return module, f"{name}." if name else ""
    raise TypeError(f"{type(model).__name__} holds no weight-sharing supernet")


def subnet_slices(model: nn.Module, architecture: Any) -> dict[str, tuple[str, Index]]:
    """Where every tensor of the extracted network comes from in ``model``'s state.

    Returns:
        ``{name in the discrete network: (name in model, index into it)}`` for parameters
        and buffers (the discrete network is the space's ``build``, with a head if
        ``model`` has one over the supernet).
    """
    supernet, prefix = supernet_of(model)
    backbone = "backbone." if prefix else ""
    slices = {
        f"{backbone}{name}": (f"{prefix}{source}", index)
        for name, (source, index) in supernet.slices(architecture).items()
    }
    if prefix:
        slices["head.weight"] = (
            "head.weight",
            (slice(None), slice(0, supernet.features(architecture))),
        )
        slices["head.bias"] = ("head.bias", ())
    return slices


def extract_subnet(model: nn.Module, architecture: Any) -> nn.Module:
    """The discrete network of ``architecture`` with ``model``'s (supernet's) weights."""
    supernet, prefix = supernet_of(model)
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
            for name, (source, index) in _cached_slices(model, architecture).items()
        },
        strict=True,
    )
    network.train(model.training)
    return network


@torch.no_grad()
def add_subnet_gradients(
    model: nn.Module, subnet: nn.Module, architecture: Any, scale: float = 1.0
) -> None:
    """Add ``scale`` x the gradients of an extracted sub-network to the supernet's weights.

    The sub-network's weights are slices of the supernet's, so a loss's gradient with
    respect to the supernet is the sub-network's gradient put back where it was sliced
    from (zero elsewhere).
    """
    parameters = dict(model.named_parameters())
    slices = _cached_slices(model, architecture)
    for name, parameter in subnet.named_parameters():
        if parameter.grad is None:
            continue
        source, index = slices[name]
        target = parameters[source]
        if target.grad is None:
            target.grad = torch.zeros_like(target)
        target.grad[index] += scale * parameter.grad


def _cached_slices(model: nn.Module, architecture: Any) -> dict[str, tuple[str, Index]]:
    """:func:`subnet_slices`, computed once per (model, architecture) pair."""
    cache: dict[Any, dict[str, tuple[str, Index]]] = model.__dict__.setdefault("_subnet_slices", {})
    if architecture not in cache:
        cache[architecture] = subnet_slices(model, architecture)
    return cache[architecture]
