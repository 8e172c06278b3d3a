"""What every continuous relaxation shares: how its forward runs, and its operation masks.

How the forward runs, for one task or for many on the task-batched layout: a continuous
relaxation weights candidate operations per task, and skips those whose
weight is below a threshold, so the task-batched engine cannot trace it once for all. Its
forward is written once against an :class:`Executor` (read a parameter, run a child module,
weight an output, concatenate, decide whether an operation is needed, drop paths): plainly
for one task (:class:`OneTask`), and on the engine's grouped layout (:class:`TaskGrouped`),
where every task has its own architecture weights and an operation is skipped for exactly
the tasks whose weight is below the threshold.

Operation masks: a relaxation keeps a boolean mask of the operations still in its
meta-architecture; pruned operations get logit ``-inf`` (weight exactly 0, no gradient).
:func:`prune_weak` removes the weak ones but never the strongest of a choice, so every
choice keeps a valid distribution.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from metarch.meta.batched import BatchedNormContext, Params, concat_channels, scale_per_task

__all__ = [
    "Executor",
    "OneTask",
    "TaskGrouped",
    "check_rates",
    "masked_logits",
    "prune_weak",
    "zero_below",
]


class Executor(Protocol):
    """What a relaxation's forward needs from the layout it runs on."""

    def parameter(self, name: str) -> Tensor:
        """The parameter ``name`` of the network (per task: stacked ``(T, *shape)``)."""
        ...

    def run(self, name: str, x: Tensor) -> Tensor:
        """The output of the child module ``name`` on ``x``."""
        ...

    def weighted(self, x: Tensor, weight: Tensor) -> Tensor:
        """``x`` times ``weight`` (per task: each task's channels by its own weight)."""
        ...

    def concat(self, tensors: list[Tensor]) -> Tensor:
        """Channel concatenation (per task: each task's channels kept together)."""
        ...

    def needed(self, weight: Tensor, threshold: float) -> bool:
        """Whether an operation of ``weight`` must run (for any task) at ``threshold``."""
        ...

    def drop_path(self, x: Tensor, probability: float) -> Tensor:
        """``x`` zeroed for random samples (per task: independent draws), rescaled."""
        ...


class OneTask:
    """The plain forward of one task."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def parameter(self, name: str) -> Tensor:  # noqa: D102
        # By attribute, not get_parameter: under torch.func.functional_call the entries
        # are plain tensors standing in for the parameters.
        owner, _, attribute = name.rpartition(".")
        value: Tensor = getattr(self.network.get_submodule(owner), attribute)
        return value

    def run(self, name: str, x: Tensor) -> Tensor:  # noqa: D102
        out: Tensor = self.network.get_submodule(name)(x)
        return out

    def weighted(self, x: Tensor, weight: Tensor) -> Tensor:  # noqa: D102
        return x * weight

    def concat(self, tensors: list[Tensor]) -> Tensor:  # noqa: D102
        return torch.cat(tensors, dim=1)

    def needed(self, weight: Tensor, threshold: float) -> bool:  # noqa: D102
        return bool(weight > threshold)

    def drop_path(self, x: Tensor, probability: float) -> Tensor:  # noqa: D102
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1.0 - probability)
        return x * keep / (1.0 - probability)


class TaskGrouped:
    """The forward of ``T`` tasks at once on the task-batched engine's grouped layout."""

    def __init__(self, prefix: str, params: Params, context: BatchedNormContext) -> None:
        assert context.engine is not None
        self.prefix = f"{prefix}." if prefix else ""
        self.params = params
        self.context = context
        self.engine = context.engine

    def parameter(self, name: str) -> Tensor:  # noqa: D102
        return self.params[self.prefix + name]

    def run(self, name: str, x: Tensor) -> Tensor:  # noqa: D102
        return self.engine.run_module(self.prefix + name, x, self.params, self.context)

    def weighted(self, x: Tensor, weight: Tensor) -> Tensor:  # noqa: D102
        return scale_per_task(x, weight)

    def concat(self, tensors: list[Tensor]) -> Tensor:  # noqa: D102
        return concat_channels(tensors, self.context.tasks)

    def needed(self, weight: Tensor, threshold: float) -> bool:  # noqa: D102
        return bool((weight > threshold).any())

    def drop_path(self, x: Tensor, probability: float) -> Tensor:  # noqa: D102
        # One draw per (sample, task), as every task's own forward would make.
        tasks = self.context.tasks
        per_task = x.unflatten(1, (tasks, x.shape[1] // tasks))
        keep = x.new_empty(x.shape[0], tasks, *([1] * (x.dim() - 1))).bernoulli_(1.0 - probability)
        dropped: Tensor = (per_task * keep / (1.0 - probability)).flatten(1, 2)
        return dropped


def check_rates(skip_below: float, drop_path: float) -> None:
    """Refuse a skip threshold or drop-path probability outside ``[0, 1)``."""
    if not 0.0 <= skip_below < 1.0:
        raise ValueError(f"skip_below must lie in [0, 1), got {skip_below}")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path must lie in [0, 1), got {drop_path}")


def masked_logits(logits: Tensor, kept: Tensor) -> Tensor:
    """``logits`` with the entries ``kept`` excludes at ``-inf``."""
    if bool(kept.all()):
        return logits
    masked: Tensor = logits.masked_fill(~kept, float("-inf"))
    return masked


@torch.no_grad()
def prune_weak(logits: Tensor, kept: Tensor, threshold: float, temperature: float) -> int:
    """Clear ``kept`` (in place) where ``softmax(logits / temperature)`` is below ``threshold``.

    The strongest entry of every row stays, so each row keeps a valid distribution.

    Returns:
        How many entries were removed now.
    """
    weights = torch.softmax(masked_logits(logits, kept) / temperature, -1)
    weak = kept & (weights < threshold)
    strongest = torch.nn.functional.one_hot(weights.argmax(-1), weights.shape[-1]).bool()
    weak &= ~strongest
    kept &= ~weak
    return int(weak.sum())


def zero_below(weight: Tensor, threshold: float) -> Tensor:
    """``weight``, or 0 where it is at most ``threshold`` (those operations do not run)."""
    if threshold <= 0:
        return weight
    return weight * (weight > threshold)
