"""How a relaxation's forward runs: for one task, or for many on the task-batched layout.

A continuous relaxation weights candidate operations per task, and skips those whose
weight is below a threshold, so the task-batched engine cannot trace it once for all. Its
forward is written once against an :class:`Executor` (read a parameter, run a child module,
weight an output, concatenate, decide whether an operation is needed, drop paths): plainly
for one task (:class:`OneTask`), and on the engine's grouped layout (:class:`TaskGrouped`),
where every task has its own architecture weights and an operation is skipped for exactly
the tasks whose weight is below the threshold.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from metarch.meta.batched import BatchedNormContext, Params, concat_channels, scale_per_task

__all__ = ["Executor", "OneTask", "TaskGrouped"]


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
