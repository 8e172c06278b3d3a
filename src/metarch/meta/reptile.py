"""Reptile (Nichol, Achiam and Schulman, 2018): "On First-Order Meta-Learning Algorithms".

For every task of a meta-batch, a *copy* of the model is trained for a few steps (Adam with
``beta1 = 0`` in the paper); the meta-parameters then move towards the average of the
adapted weights::

    theta <- theta + epsilon * (mean_t(theta_t) - theta)

:meth:`Reptile.compute_meta_gradients` writes ``theta - mean_t(theta_t)`` into ``.grad``,
so an outer ``torch.optim.SGD`` with learning rate ``epsilon`` performs exactly this update
(the paper's batched version; its meta step size is annealed linearly to 0, which an outer
learning-rate schedule does). Any other outer optimizer treats the difference as a gradient.

The inner loop trains a ``copy.deepcopy`` of the model with an ordinary ``torch.optim``
optimizer: the meta-parameters are never touched during adaptation, and no second-order
machinery is needed because Reptile never differentiates through the inner loop.

Inner Adam's state. The paper's code (``openai/supervised-reptile``) keeps one Adam
optimizer for the whole run: its moment estimates are not trainable variables, so the
per-task save/restore of the weights skips them, and the second moment (the first is the
last gradient when ``beta1 = 0``) and step count carry over from task to task and from
meta-iteration to meta-iteration. This matters: an Adam that starts afresh for every task
moves *every* weight by about the learning rate at each of its few steps, whatever the size
of its gradient (the first step is ``lr * sign(g)``), so the Reptile direction is dominated
by noise in weights with small gradients; a carried second moment scales each weight's
steps by its long-run gradient size instead. ``adam_state="carried"`` (the default) does
what the paper's code does; the state is a buffer of the learner (saved in checkpoints, so
resumed runs continue it; averaged over processes with the other buffers in distributed
training). Adaptation at evaluation starts from the carried state and never changes it.
``adam_state="per_task"`` starts every task afresh.

Differences from the paper's code, by design:

* Evaluation never changes the carried Adam state (the paper's code adapts to test tasks
  with the same optimizer, so evaluation there perturbs later training).
* Batch norm uses plain module semantics (no :func:`~metarch.models.norm.batch_norm_context`).
  The copy trains in train mode, so it normalises with batch statistics and updates *its
  own* running buffers; those buffers are discarded with the copy, and the meta-model's
  buffers never change during meta-training. See :meth:`Reptile.adapt` for what that means
  at evaluation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarch.meta.base import META_LEARNERS, MetaLearner, MetaMetrics, Predictor, TaskBatch

__all__ = ["AdamState", "InnerData", "InnerOptimizer", "LossFn", "Reptile"]

LossFn = Callable[[Tensor, Tensor], Tensor]
InnerOptimizer = Literal["adam", "sgd"]
InnerData = Literal["support", "all"]
AdamState = Literal["carried", "per_task"]

# Buffers of the carried inner Adam state (see the module docstring).
_SECOND_MOMENT = "inner_adam_second_moment"
_STEP = "inner_adam_step"


@META_LEARNERS.register("reptile")
class Reptile(MetaLearner):
    """Reptile: move the initialisation towards the weights fine-tuned on each task.

    Args:
        model: Classifier (or regressor, with ``loss_fn``) to meta-learn.
        inner_lr: Learning rate of the inner optimizer (the paper: 1e-3).
        steps: Inner steps (mini-batches) per task during meta-training (the paper: 5 on
            Omniglot, 8 on mini-ImageNet).
        eval_steps: Inner steps in :meth:`adapt` (the paper: 50 on both).
        inner_optimizer: ``"adam"`` (the paper) or ``"sgd"`` (plain gradient descent, the
            setting of the paper's analysis and the ``--sgd`` flag of its code).
        betas: Adam's ``(beta1, beta2)``; the paper uses ``beta1 = 0``.
        eps: Adam's epsilon.
        inner_on: What the inner loop trains on during meta-training: ``"all"`` the task's
            support and query examples together (the paper samples one set of examples
            per task and trains on all of it), or ``"support"`` only. With ``"all"`` the
            reported query loss and accuracy are measured on examples the copy was trained
            on. :meth:`adapt` always trains on the support set, the only data it gets.
        inner_batch_size: Examples per inner step during meta-training; ``None`` for the
            full batch. Mini-batches cycle through random permutations of the task's
            examples (as in the paper's code), drawn from torch's global generator.
        eval_batch_size: Examples per inner step in :meth:`adapt`; ``None`` for the full
            support set.
        adam_state: ``"carried"``: inner Adam's second moment and step count carry over
            from task to task, as in the paper's code; ``"per_task"``: every task starts
            afresh (see the module docstring). Ignored for ``inner_optimizer="sgd"``.
        loss_fn: Task loss ``loss_fn(outputs, targets)``; cross-entropy by default, any
            differentiable loss (e.g. ``F.mse_loss`` for regression) otherwise. Accuracy
            is only measured for integer targets (it is ``nan`` otherwise).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 1e-3,
        steps: int = 5,
        eval_steps: int = 50,
        inner_optimizer: InnerOptimizer = "adam",
        betas: tuple[float, float] = (0.0, 0.999),
        eps: float = 1e-8,
        inner_on: InnerData = "all",
        inner_batch_size: int | None = None,
        eval_batch_size: int | None = None,
        adam_state: AdamState = "carried",
        loss_fn: LossFn = F.cross_entropy,
    ) -> None:
        super().__init__()
        if inner_optimizer not in ("adam", "sgd"):
            raise ValueError(f"inner_optimizer must be 'adam' or 'sgd', got {inner_optimizer!r}")
        if inner_on not in ("support", "all"):
            raise ValueError(f"inner_on must be 'support' or 'all', got {inner_on!r}")
        if adam_state not in ("carried", "per_task"):
            raise ValueError(f"adam_state must be 'carried' or 'per_task', got {adam_state!r}")
        if steps < 0 or eval_steps < 0:
            raise ValueError(f"inner steps must be >= 0, got {steps} and {eval_steps}")
        for size in (inner_batch_size, eval_batch_size):
            if size is not None and size < 1:
                raise ValueError(f"inner batch sizes must be >= 1 or None, got {size}")
        self.model = model
        self.inner_lr = inner_lr
        self.steps = steps
        self.eval_steps = eval_steps
        self.inner_optimizer: InnerOptimizer = inner_optimizer
        # torch.optim.Adam rejects a mix of int and float betas, e.g. (0, 0.999).
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = eps
        self.inner_on: InnerData = inner_on
        self.inner_batch_size = inner_batch_size
        self.eval_batch_size = eval_batch_size
        self.loss_fn = loss_fn
        self.carries_adam_state = inner_optimizer == "adam" and adam_state == "carried"
        if self.carries_adam_state:
            size = sum(p.numel() for p in model.parameters())
            dtype = next(model.parameters()).dtype
            self.register_buffer(_SECOND_MOMENT, torch.zeros(size, dtype=dtype))
            self.register_buffer(_STEP, torch.zeros((), dtype=torch.int64))

    # -- the inner loop ----------------------------------------------------------------

    def fine_tune(
        self,
        x: Tensor,
        y: Tensor,
        *,
        steps: int,
        batch_size: int | None = None,
        carry: bool = False,
    ) -> nn.Module:
        """Train a copy of the model on ``(x, y)``; the meta-model is left untouched.

        Args:
            x: Inputs of one task.
            y: Targets of one task.
            steps: Optimizer steps.
            batch_size: Examples per step (``None``: all of them every step).
            carry: Keep the copy's final Adam state as the carried state (meta-training);
                otherwise the carried state is only read.

        Returns:
            The trained copy, in train mode, with its own (adapted) batch-norm buffers.
        """
        learner = copy.deepcopy(self.model)
        learner.train()
        optimizer = self._make_optimizer(learner)
        if self.carries_adam_state:
            self._load_adam_state(optimizer, learner)
        # Adaptation needs gradients even when the caller evaluates under no_grad.
        with torch.enable_grad():
            for indices in _mini_batches(len(x), batch_size, steps, x.device):
                optimizer.zero_grad(set_to_none=True)
                self.loss_fn(learner(x[indices]), y[indices]).backward()
                optimizer.step()
        if self.carries_adam_state and carry:
            self._store_adam_state(optimizer, learner)
        return learner

    def _load_adam_state(self, optimizer: torch.optim.Optimizer, learner: nn.Module) -> None:
        """Start the copy's Adam from the carried second moment and step count."""
        second_moment: Tensor = getattr(self, _SECOND_MOMENT)
        step = float(getattr(self, _STEP))
        offset = 0
        for parameter in learner.parameters():
            size = parameter.numel()
            optimizer.state[parameter] = {
                "step": torch.tensor(step),
                # With beta1 = 0 the first moment is the last gradient; the paper's beta1
                # may be changed, so it starts at 0 for every task (it is not carried).
                "exp_avg": torch.zeros_like(parameter),
                "exp_avg_sq": second_moment[offset : offset + size].view_as(parameter).clone(),
            }
            offset += size

    def _store_adam_state(self, optimizer: torch.optim.Optimizer, learner: nn.Module) -> None:
        """Carry the copy's Adam second moment and step count over to the next task."""
        second_moment: Tensor = getattr(self, _SECOND_MOMENT)
        offset = 0
        for parameter in learner.parameters():
            size = parameter.numel()
            state = optimizer.state[parameter]
            second_moment[offset : offset + size].copy_(state["exp_avg_sq"].flatten())
            offset += size
        # Every parameter took the same steps (they were all loaded with the same count).
        getattr(self, _STEP).fill_(int(optimizer.state[next(learner.parameters())]["step"]))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Checkpoints written before the carried Adam state existed lack its buffers: they
        # keep their initial (empty) state, which is what such runs trained with.
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for name in (_SECOND_MOMENT, _STEP):
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)

    def _make_optimizer(self, learner: nn.Module) -> torch.optim.Optimizer:
        if self.inner_optimizer == "adam":
            return torch.optim.Adam(
                learner.parameters(), lr=self.inner_lr, betas=self.betas, eps=self.eps
            )
        return torch.optim.SGD(learner.parameters(), lr=self.inner_lr)

    # -- meta-training -----------------------------------------------------------------

    def compute_meta_gradients(self, batch: TaskBatch) -> MetaMetrics:  # noqa: D102
        return self.compute_meta_gradients_from_tensors(
            batch.support_x, batch.support_y, batch.query_x, batch.query_y
        )

    def compute_meta_gradients_from_tensors(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> MetaMetrics:
        """Add ``theta - mean_t(theta_t)`` to ``.grad`` of every trainable meta-parameter.

        The same as :meth:`compute_meta_gradients` for any stacked tasks (e.g. regression
        tasks with float targets).

        Args:
            support_x: Support inputs ``(T, K, ...)``.
            support_y: Support targets ``(T, K, ...)``.
            query_x: Query inputs ``(T, Q, ...)``.
            query_y: Query targets ``(T, Q, ...)``.

        Returns:
            Query loss and accuracy of the adapted copies, averaged over tasks.
        """
        tasks = int(support_x.shape[0])
        meta = list(self.model.parameters())
        # Running sum of (theta - theta_t) / T: one extra copy of the weights, whatever T.
        differences = [torch.zeros_like(p) for p in meta]
        losses, accuracies = [], []
        for t in range(tasks):
            x, y = support_x[t], support_y[t]
            if self.inner_on == "all":
                x, y = torch.cat([x, query_x[t]]), torch.cat([y, query_y[t]])
            learner = self.fine_tune(
                x, y, steps=self.steps, batch_size=self.inner_batch_size, carry=True
            )
            with torch.no_grad():
                for difference, theta, adapted in zip(
                    differences, meta, learner.parameters(), strict=True
                ):
                    difference.add_(theta - adapted, alpha=1.0 / tasks)
                outputs = learner(query_x[t])
                losses.append(float(self.loss_fn(outputs, query_y[t])))
                accuracies.append(_accuracy(outputs, query_y[t]))
        for theta, difference in zip(meta, differences, strict=True):
            if not theta.requires_grad:
                continue
            if theta.grad is None:
                theta.grad = difference
            else:
                theta.grad.add_(difference)
        return MetaMetrics(loss=sum(losses) / tasks, accuracy=sum(accuracies) / tasks, tasks=tasks)

    # -- adaptation --------------------------------------------------------------------

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Predictor:
        """Fine-tune a copy on the support set for ``eval_steps``; return its predictor.

        The predictor runs the copy in the mode the learner had when ``adapt`` was called:

        * eval mode: batch norm uses the running statistics the *copy* accumulated on the
          support set while it trained (the meta-model's own buffers are never updated
          by Reptile). A query's prediction does not depend on the other queries, but the
          running statistics need enough steps to forget their start (momentum 0.1:
          ``0.9 ** 50 < 0.01``), which the paper's 50 evaluation steps give.
        * train mode: queries are normalised with their own batch statistics, the paper's
          *transductive* setting.

        The copy's weights are frozen, so predictions carry no gradient.
        """
        training = self.training
        learner = self.fine_tune(
            support_x, support_y, steps=self.eval_steps, batch_size=self.eval_batch_size
        )
        learner.requires_grad_(False)
        learner.train(training)

        def predict(query_x: Tensor) -> Tensor:
            logits: Tensor = learner(query_x)
            return logits

        return predict


def _mini_batches(
    size: int, batch_size: int | None, steps: int, device: torch.device
) -> Iterator[Tensor | slice]:
    """Indices of ``steps`` mini-batches of ``batch_size`` out of ``size`` examples.

    Each pass visits every example once in a random order; a mini-batch may straddle two
    passes, as in the paper's code.
    """
    if batch_size is None or batch_size >= size:
        for _ in range(steps):
            yield slice(None)
        return
    passes = math.ceil(steps * batch_size / size)
    order = torch.cat([torch.randperm(size, device=device) for _ in range(passes)])
    for step in range(steps):
        yield order[step * batch_size : (step + 1) * batch_size]


def _accuracy(outputs: Tensor, targets: Tensor) -> float:
    """Classification accuracy, or ``nan`` for non-integer (regression) targets."""
    if targets.is_floating_point() or targets.is_complex():
        return math.nan
    return float((outputs.argmax(dim=-1) == targets).float().mean())
