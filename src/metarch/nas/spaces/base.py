"""The interface every search space implements, and the registry that finds them by name.

An architecture is a value of the space's own immutable type (hashable, comparable), with
one canonical string (:meth:`SearchSpace.encode`, the key of latency tables and results
files) and a JSON form. A space samples architectures from a seeded generator, enumerates
them when it is finite, and builds the discrete network of one as an image backbone
(``(N, C, H, W) -> (N, D)`` features) or, with ``num_classes``, a classifier.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from torch import Tensor, nn

from metarch.errors import MetarchError
from metarch.models.cost import count_parameters, flops_per_image, peak_activation_bytes
from metarch.models.groups import group_of
from metarch.registry import Registry, options_of

__all__ = [
    "SEARCH_SPACES",
    "ArchitectureCost",
    "ArchitectureError",
    "Classifier",
    "Layer",
    "Relaxation",
    "SearchSpace",
    "create_space",
]

A = TypeVar("A")


class ArchitectureError(MetarchError, ValueError):
    """A string or JSON value that is not an architecture of the space."""


@dataclass(frozen=True)
class ArchitectureCost:
    """What one architecture's network costs, independent of any device.

    Attributes:
        parameters: Trainable parameters.
        flops: Floating-point operations per image (2 per multiply-add).
        peak_activation_bytes: Most bytes of activations alive at once in an inference
            pass of one image (:func:`metarch.models.cost.peak_activation_bytes`).
        input_shape: ``(C, H, W)`` the costs were counted at.
    """

    parameters: int
    flops: int
    peak_activation_bytes: int
    input_shape: tuple[int, int, int]


@dataclass(frozen=True)
class Layer:
    """One layer of a space's networks, as latency tables key it.

    A network's latency is modelled as the sum of its layers' (plus a constant per
    network), each measured alone, once per device: so a layer is what runs as one unit,
    keyed by everything its cost depends on (operation, channels, kernel, stride, input
    size) and nothing else.

    Attributes:
        key: ``operation|in=CxHxW|out=C|k=K|s=S`` (fields that do not apply left out).
        input_shape: ``(C, H, W)`` of its input (one image).
        build: Makes the layer's module, with fresh weights.
    """

    key: str
    input_shape: tuple[int, ...]
    build: Callable[[], nn.Module] = field(compare=False, repr=False)

    @staticmethod
    def make_key(
        operation: str,
        input_shape: tuple[int, ...],
        out: int | None = None,
        kernel: int | None = None,
        stride: int | None = None,
    ) -> str:
        """The key of a layer: ``operation|in=CxHxW|out=C|k=K|s=S``."""
        parts = [operation, "in=" + "x".join(str(d) for d in input_shape)]
        for name, value in (("out", out), ("k", kernel), ("s", stride)):
            if value is not None:
                parts.append(f"{name}={value}")
        return "|".join(parts)


class Classifier(nn.Module):
    """A space's backbone and a linear head; parameter groups come from the backbone."""

    def __init__(self, backbone: nn.Module, features: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(features, num_classes)

    def parameter_group(self, name: str) -> str:
        """The backbone's group of its parameters (``weights`` for the head)."""
        if name.startswith("backbone."):
            return group_of(self.backbone, name.removeprefix("backbone."))
        return group_of(self.head, name)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``."""
        logits: Tensor = self.head(self.backbone(x))
        return logits


class SearchSpace(ABC, Generic[A]):
    """A set of architectures and how to build each one's network."""

    #: The name it is registered under in :data:`SEARCH_SPACES` (stamped by the registry).
    registered_name: ClassVar[str] = ""

    @abstractmethod
    def sample(self, rng: random.Random) -> A:
        """One architecture drawn uniformly (or by the space's own prior) from ``rng``."""

    @abstractmethod
    def encode(self, architecture: A) -> str:
        """The canonical string of ``architecture``."""

    @abstractmethod
    def decode(self, text: str) -> A:
        """The architecture of a canonical string.

        Raises:
            ArchitectureError: Saying what in ``text`` is wrong.
        """

    def to_json(self, architecture: A) -> Any:
        """A JSON value for ``architecture`` (default: its canonical string)."""
        return self.encode(architecture)

    def from_json(self, value: Any) -> A:
        """The architecture of a JSON value from :meth:`to_json`."""
        if not isinstance(value, str):
            raise ArchitectureError(f"expected a {self.registered_name} string, got {value!r}")
        return self.decode(value)

    def draw(self, choose: Callable[[str, Sequence[Any]], Any]) -> A:
        """An architecture built from named choices: ``choose(name, options)`` picks each.

        The same names always offer the same options, so a sampler that learns per named
        choice (Optuna's ``trial.suggest_categorical``) can drive it.

        Raises:
            NotImplementedError: For spaces not written as named choices yet.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be drawn by named choices")

    def largest(self) -> A:
        """The most costly network (by parameters and FLOPs), where the space has one."""
        raise NotImplementedError(f"{type(self).__name__} has no largest network")

    def smallest(self) -> A:
        """The least costly network (by parameters and FLOPs), where the space has one."""
        raise NotImplementedError(f"{type(self).__name__} has no smallest network")

    def size(self) -> int | None:
        """How many architectures the space holds (``None`` where it is not finite)."""
        return None

    def enumerate(self) -> Iterator[A]:
        """Every architecture, in a fixed order (only for finite spaces)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be enumerated")

    def mutate(self, architecture: A, rng: random.Random, rate: float) -> A:
        """A neighbour: each of ``architecture``'s choices redrawn with probability ``rate``.

        Raises:
            NotImplementedError: For spaces without evolutionary operators.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be mutated")

    def crossover(self, first: A, second: A, rng: random.Random) -> A:
        """A child taking each part (a stage, an edge) from one parent or the other.

        Raises:
            NotImplementedError: For spaces without evolutionary operators.
        """
        raise NotImplementedError(f"{type(self).__name__} has no crossover")

    @abstractmethod
    def build(self, architecture: A, *, num_classes: int | None = None) -> nn.Module:
        """The discrete network: a backbone, or a classifier with ``num_classes`` outputs."""

    def settings(self) -> dict[str, Any]:
        """The options this space was made with, defaults included (JSON values)."""
        return {option.name: getattr(self, option.name) for option in options_of(type(self))}

    def layers(self, architecture: A, *, num_classes: int | None = None) -> list[Layer]:
        """The layers :meth:`build`'s network runs, in order (repeats kept).

        Raises:
            NotImplementedError: For spaces whose networks are not split into layers yet.
        """
        raise NotImplementedError(
            f"the {self.registered_name} space does not list its networks' layers, so layer "
            "latency tables cannot be made for it"
        )

    def layer_catalogue(self, *, num_classes: int | None = None) -> list[Layer]:
        """Every distinct layer of the space's networks, once each (what a table profiles).

        The default collects :meth:`layers` over :meth:`enumerate`; large spaces list
        their layers directly.
        """
        distinct: dict[str, Layer] = {}
        for architecture in self.enumerate():
            for layer in self.layers(architecture, num_classes=num_classes):
                distinct.setdefault(layer.key, layer)
        return list(distinct.values())

    def relax(self, *, num_classes: int | None = None, **options: Any) -> nn.Module:
        """The continuous relaxation: one network holding every architecture.

        Its architecture parameters (group ``architecture``) serve gradient-based search.

        Raises:
            NotImplementedError: For spaces without one.
        """
        raise NotImplementedError(f"{type(self).__name__} has no continuous relaxation")

    def derive(self, relaxed: nn.Module) -> A:
        """The discrete architecture a relaxation's architecture parameters choose.

        Raises:
            ArchitectureError: ``relaxed`` is not a relaxation of this space.
        """
        network = relaxed.backbone if isinstance(relaxed, Classifier) else relaxed
        if not isinstance(network, Relaxation) or type(network.search_space()) is not type(self):
            raise ArchitectureError(
                f"not a relaxation of the {type(self).__name__} space: {type(relaxed).__name__}"
            )
        architecture: A = network.genotype()
        return architecture

    @staticmethod
    def with_head(network: nn.Module, num_classes: int | None) -> nn.Module:
        """``network`` (with ``out_features``), under a linear head if ``num_classes``."""
        if num_classes is None:
            return network
        features = getattr(network, "out_features", None)
        if not isinstance(features, int):
            raise TypeError(f"{type(network).__name__} has no out_features to put a head on")
        return Classifier(network, features, num_classes)

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the space's networks take."""

    def cost(self, architecture: A, *, num_classes: int | None = None) -> ArchitectureCost:
        """Parameters, FLOPs and peak activation memory per image of its network."""
        network = self.build(architecture, num_classes=num_classes)
        return ArchitectureCost(
            parameters=count_parameters(network),
            flops=flops_per_image(network, self.input_shape),
            peak_activation_bytes=peak_activation_bytes(network, self.input_shape),
            input_shape=self.input_shape,
        )


@runtime_checkable
class Relaxation(Protocol):
    """What gradient-based search (MetaNAS) needs of a space's continuous relaxation.

    Attributes:
        skip_below: Operations whose weight is at most this are not run.
        drop_path: Probability of dropping an operation's output in training passes.
    """

    skip_below: float
    drop_path: float

    def prune(self, threshold: float, temperature: float = 1.0) -> int:
        """Remove operations weighing less than ``threshold`` at ``temperature``; how many."""

    def genotype(self, architecture: Mapping[str, Tensor] | None = None) -> Any:
        """The discrete architecture the (given, else own) architecture parameters choose."""

    def restrict_to(self, architecture: Any) -> None:
        """Keep only ``architecture``'s operations: compute exactly its discrete network."""

    def search_space(self, input_shape: tuple[int, int, int] | None = None) -> SearchSpace[Any]:
        """The space relaxed, for images of ``input_shape`` (default: the space's own)."""


SEARCH_SPACES: Registry[type[SearchSpace[Any]]] = Registry("search space")


def create_space(name: str, **options: Any) -> SearchSpace[Any]:
    """The search space registered as ``name``, built with ``options``."""
    return SEARCH_SPACES.get(name)(**options)
