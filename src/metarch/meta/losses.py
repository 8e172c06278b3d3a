"""Task losses: what a task's outputs are scored by, for classification or regression.

A :class:`TaskLoss` gives a task's differentiable loss (mean over its samples), the losses
of many tasks at once (outputs stacked ``(T, N, ...)``, as the task-batched engine makes
them) and a score that is higher for better predictions: the accuracy for classification,
minus the mean squared error for regression. Meta-learners take one by name
(``loss: mse``), so the same MAML runs few-shot classification and the sinusoid regression
of the MAML paper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from metarch.registry import Registry

__all__ = ["TASK_LOSSES", "TaskLoss"]


@dataclass(frozen=True)
class TaskLoss:
    """A task's loss and score.

    Attributes:
        loss: ``loss(outputs, targets)`` of one task, averaged over its samples.
        per_task: ``per_task(outputs, targets)`` for outputs ``(T, N, ...)``: ``(T,)``.
        score: ``score(outputs, targets)`` for outputs ``(..., N, ...)``: the score of each
            task (the leading dimensions), higher is better.
        score_name: What the score is, for reports (``accuracy``, ``negative_mse``).
    """

    loss: Callable[[Tensor, Tensor], Tensor]
    per_task: Callable[[Tensor, Tensor], Tensor]
    score: Callable[[Tensor, Tensor], Tensor]
    score_name: str


def _cross_entropy_per_task(logits: Tensor, labels: Tensor) -> Tensor:
    flat = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return flat.view(labels.shape).mean(dim=1)


def _accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(dim=-1) == labels).float().mean(dim=-1)


def _squared_errors(outputs: Tensor, targets: Tensor, tasks_dims: int) -> Tensor:
    """Mean squared error over every dimension after the first ``tasks_dims``."""
    errors = (outputs - targets.reshape(outputs.shape)).square()
    return errors.flatten(tasks_dims).mean(dim=-1) if errors.dim() > tasks_dims else errors


TASK_LOSSES: Registry[TaskLoss] = Registry("task loss")
TASK_LOSSES.add(
    "cross_entropy", TaskLoss(F.cross_entropy, _cross_entropy_per_task, _accuracy, "accuracy")
)
TASK_LOSSES.add(
    "mse",
    TaskLoss(
        lambda outputs, targets: F.mse_loss(outputs, targets.reshape(outputs.shape)),
        lambda outputs, targets: _squared_errors(outputs, targets, 1),
        # Outputs of one task are (N, D), of a batch (T, N, D): score each task.
        lambda outputs, targets: -_squared_errors(outputs, targets, outputs.dim() - 2),
        "negative_mse",
    ),
)
