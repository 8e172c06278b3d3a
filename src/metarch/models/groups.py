"""Parameter groups: which parameters are network weights and which are architecture.

Meta-learning treats kinds of parameters differently: architecture weights (MetaNAS's
operation mixing weights) get their own inner optimizer and their own meta-learning rate.
A model says which group each of its parameters belongs to by defining
``parameter_group(name) -> str``; models that do not are all weights.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn

__all__ = ["ARCHITECTURE", "WEIGHTS", "GroupedModel", "group_of", "model_parameter_groups"]

#: Network weights (convolutions, linear layers, normalisation).
WEIGHTS = "weights"
#: Architecture weights (mixing weights of candidate operations).
ARCHITECTURE = "architecture"


@runtime_checkable
class GroupedModel(Protocol):
    """A model whose parameters are not all network weights."""

    def parameter_group(self, name: str) -> str:
        """The group of the parameter called ``name`` (as in ``named_parameters()``)."""


def group_of(model: nn.Module, name: str) -> str:
    """The group of ``model``'s parameter ``name`` (``weights`` unless the model says)."""
    return model.parameter_group(name) if isinstance(model, GroupedModel) else WEIGHTS


def model_parameter_groups(model: nn.Module) -> dict[str, list[str]]:
    """Group name -> names of ``model``'s parameters in it, in parameter order."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        groups.setdefault(group_of(model, name), []).append(name)
    return groups
