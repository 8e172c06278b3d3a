"""The functional inner loop every optimisation-based meta-learner runs.

Parameters and buffers are plain dictionaries; the model is only ever called through
``torch.func.functional_call``, and inner gradients come from ``torch.func.grad``. The
same code therefore runs for one task in a Python loop and for a whole meta-batch under
``torch.func.vmap``, and the outer (meta) gradient is ordinary autograd through it:

* second order: the inner gradient stays in the graph, so the meta-gradient includes the
  Hessian-vector terms of MAML;
* first order: the inner gradient is detached, so the meta-gradient is the query
  gradient at the adapted parameters (first-order MAML).

Only the parameters named in ``adapt`` change in the inner loop (all of them for MAML, the
head for ANIL); the rest are read, and still receive meta-gradients through the forward.

Every gradient-based learner adapts through :func:`adapt_task`: MAML and its variants
differentiate through it, Reptile runs it first order on mini-batches with an inner Adam
state carried over from earlier tasks (``state``, ``batches``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metarch.meta.losses import TASK_LOSSES, TaskLoss
from metarch.meta.optim import Hyper, InnerOptimizer, OptState, apply_updates
from metarch.models.context import Phase
from metarch.models.norm import (
    BatchNormContext,
    NormPolicy,
    RecordedStatistics,
    batch_norm_context,
)

__all__ = [
    "Adaptation",
    "InnerLoopConfig",
    "Params",
    "TaskResult",
    "adapt_task",
    "adapted_predictor",
    "run_task",
]

Params = dict[str, Tensor]


@dataclass(frozen=True)
class InnerLoopConfig:
    """How the inner loop adapts to a support set.

    Attributes:
        steps: Gradient steps on the support set.
        first_order: Detach inner gradients (first-order MAML) instead of differentiating
            through them.
        norm_policy: Which statistics batch normalisation uses (see
            :mod:`metarch.models.norm`).
        multi_step_loss: MAML++'s multi-step loss: the query loss after *every* inner step,
            averaged with ``step_weights``, instead of after the last step only.
        step_weights: Weights of the per-step query losses (default: all on the last step
            for a plain loss, uniform for the multi-step loss).
    """

    steps: int = 1
    first_order: bool = False
    norm_policy: NormPolicy = NormPolicy.BATCH
    multi_step_loss: bool = False
    step_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"inner steps must be >= 0, got {self.steps}")
        if self.step_weights is not None and len(self.step_weights) != self.steps:
            raise ValueError(f"need {self.steps} step weights, got {len(self.step_weights)}")

    def query_weights(self) -> list[float]:
        """Weight of the query loss after each step 1..steps (the last alone by default)."""
        if self.step_weights is not None:
            return list(self.step_weights)
        if self.multi_step_loss and self.steps > 0:
            return [1.0 / self.steps] * self.steps
        return [0.0] * max(self.steps - 1, 0) + [1.0]


@dataclass
class TaskResult:
    """Outcome of one task: the differentiable query loss and what was measured on it.

    Attributes:
        loss: Weighted query loss (a scalar, differentiable w.r.t. the meta-parameters).
        accuracy: Query accuracy after the last inner step (a detached scalar).
        statistics: Batch statistics recorded by batch-norm layers (for running buffers).
    """

    loss: Tensor
    accuracy: Tensor
    statistics: RecordedStatistics = field(default_factory=RecordedStatistics)


@dataclass
class Adaptation:
    """What the inner loop did to one task.

    Attributes:
        trajectory: ``[params, params after step 1, ..., params after step S]``.
        state: The inner optimizer's state after the last step.
        buffers: The buffers the query pass should use: the task's own running statistics
            under :attr:`~metarch.models.norm.NormPolicy.TASK` at evaluation, else the
            buffers given.
    """

    trajectory: list[Params]
    state: OptState
    buffers: Params

    @property
    def params(self) -> Params:
        """The parameters after the last step."""
        return self.trajectory[-1]


_CROSS_ENTROPY = TASK_LOSSES.get("cross_entropy")
#: Indices of the support examples each inner step trains on (``slice(None)``: all).
StepBatch = Tensor | slice


def _forward(
    model: nn.Module,
    params: Params,
    buffers: Params,
    x: Tensor,
    context: BatchNormContext,
    phase: Phase = "query",
) -> Tensor:
    with batch_norm_context(context, phase):
        out: Tensor = functional_call(model, {**params, **buffers}, (x,))
    return out


def adapt_task(
    model: nn.Module,
    params: Params,
    buffers: Params,
    support_x: Tensor,
    support_y: Tensor,
    *,
    adapt: Sequence[str],
    optimizer: InnerOptimizer,
    config: InnerLoopConfig,
    training: bool,
    hyper: Hyper | None = None,
    record: RecordedStatistics | None = None,
    task_loss: TaskLoss = _CROSS_ENTROPY,
    fused_norm: bool = False,
    state: OptState | None = None,
    batches: Sequence[StepBatch] | None = None,
    under_vmap: bool = False,
) -> Adaptation:
    """Adapt ``params`` to one support set: the parameters after every step, and more.

    Args:
        model: Module whose forward is called functionally.
        params: Meta-parameters (the starting point); not modified.
        buffers: Buffers (batch-norm running statistics).
        support_x: Support inputs of one task.
        support_y: Support targets of one task.
        adapt: Names of the parameters the inner loop changes.
        optimizer: The inner update rule (:mod:`metarch.meta.optim`).
        config: Inner-loop settings.
        training: Meta-training (True) or evaluation (False); decides batch-norm statistics.
        hyper: The optimizer's learnable hyper-parameters to read (default: its own).
        record: Where batch-norm layers record batch statistics.
        task_loss: The task's loss (:data:`~metarch.meta.losses.TASK_LOSSES`).
        fused_norm: Fused batch-norm kernels (faster; never under ``vmap``, see
            :class:`~metarch.models.norm.BatchNormContext`).
        state: The inner optimizer's starting state (default: ``optimizer.init``), e.g.
            Reptile's carried Adam moments.
        batches: The support examples of each step (default: all of them every step).
        under_vmap: The call runs under ``torch.func.vmap``: inner gradients come from
            ``torch.func.grad`` instead of plain autograd.

    Returns:
        The trajectory, the optimizer's final state and the buffers for the query pass.
    """
    if batches is not None and len(batches) != config.steps:
        raise ValueError(f"need {config.steps} step batches, got {len(batches)}")
    use_running = config.norm_policy.uses_running_statistics(inner=True, training=training)
    # Under the task policy an evaluated task keeps running statistics of its own, which
    # its support passes update in place.
    fold = config.norm_policy is NormPolicy.TASK and not training
    if fold:
        if under_vmap:
            raise ValueError("task running statistics are updated in place: not under vmap")
        buffers = {name: value.clone() for name, value in buffers.items()}

    def support_loss(
        adapted: Params, frozen: Params, step: int, x: Tensor, y: Tensor, task_buffers: Params
    ) -> tuple[Tensor, tuple[dict[str, Tensor], dict[str, Tensor]]]:
        # Statistics leave the grad transform as its auxiliary output; stored from inside
        # it they would be tensors escaping the transform.
        local = RecordedStatistics() if record is not None else None
        context = BatchNormContext(
            step=step,
            use_running=use_running,
            record=local,
            fused=fused_norm,
            update_running=fold,
        )
        logits = _forward(model, {**frozen, **adapted}, task_buffers, x, context, "support")
        aux = (local.means, local.variances) if local is not None else ({}, {})
        return task_loss.loss(logits, y), aux

    grad_transform = torch.func.grad(support_loss, has_aux=True)

    def support_grad(
        adapted: Params, frozen: Params, step: int, x: Tensor, y: Tensor, task_buffers: Params
    ) -> tuple[Params, tuple[dict[str, Tensor], dict[str, Tensor]]]:
        if under_vmap:
            return grad_transform(adapted, frozen, step, x, y, task_buffers)  # type: ignore[no-any-return]
        # Plain autograd where no transform needs torch.func: less overhead per operation.
        # First order differentiates leaves cut from the graph (the updates still join it).
        leaves = {
            name: value.detach().requires_grad_()
            if config.first_order or not value.requires_grad
            else value
            for name, value in adapted.items()
        }
        loss, aux = support_loss(leaves, frozen, step, x, y, task_buffers)
        grads = torch.autograd.grad(
            loss,
            list(leaves.values()),
            create_graph=not config.first_order,
            allow_unused=True,
            materialize_grads=True,
        )
        return dict(zip(leaves, grads, strict=True)), aux

    trajectory = [params]
    current = params
    if state is None:
        state = optimizer.init({name: params[name] for name in adapt})
    for step in range(config.steps):
        # Only what the rule moves at this step is differentiated (DARTS alternates groups).
        adapted = {name: current[name] for name in optimizer.updated(adapt, step)}
        if not adapted:
            trajectory.append(current)
            continue
        frozen = {name: value for name, value in current.items() if name not in adapted}
        index = slice(None) if batches is None else batches[step]
        x, y = support_x[index], support_y[index]
        grads, (means, variances) = support_grad(adapted, frozen, step, x, y, buffers)
        if record is not None:
            record.means.update(means)
            record.variances.update(variances)
        if config.first_order:
            grads = {name: g.detach() for name, g in grads.items()}
        updates, state = optimizer.update(grads, state, adapted, step=step, hyper=hyper)
        current = apply_updates(current, updates)
        trajectory.append(current)
    return Adaptation(trajectory, state, buffers)


def adapted_predictor(
    model: nn.Module, adaptation: Adaptation, config: InnerLoopConfig, *, training: bool
) -> Callable[[Tensor], Tensor]:
    """Query logits under the adapted (detached) parameters and buffers of ``adaptation``.

    Batch norm uses the statistics ``config.norm_policy`` gives the query pass after the
    last step, in the mode (``training``) the learner was adapted in.
    """
    adapted = {name: p.detach() for name, p in adaptation.params.items()}
    buffers = adaptation.buffers
    context = BatchNormContext(
        fused=True,
        step=config.steps,
        use_running=config.norm_policy.uses_running_statistics(inner=False, training=training),
    )

    def predict(query_x: Tensor) -> Tensor:
        return _forward(model, adapted, buffers, query_x, context)

    return predict


def run_task(
    model: nn.Module,
    params: Params,
    buffers: Params,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    *,
    adapt: Sequence[str],
    optimizer: InnerOptimizer,
    config: InnerLoopConfig,
    training: bool,
    hyper: Hyper | None = None,
    record_statistics: bool = False,
    task_loss: TaskLoss = _CROSS_ENTROPY,
    fused_norm: bool = False,
    under_vmap: bool = False,
) -> tuple[Tensor, Tensor, RecordedStatistics]:
    """Adapt to one task's support set and score its queries; safe to ``vmap`` over tasks.

    Returns:
        ``(loss, score, statistics)``: the weighted query loss (differentiable w.r.t.
        ``params`` and the optimizer's learnable hyper-parameters), the query score after
        the last step (accuracy for classification; detached), and the batch statistics
        recorded along the way.
    """
    record = RecordedStatistics() if record_statistics else None
    adaptation = adapt_task(
        model,
        params,
        buffers,
        support_x,
        support_y,
        adapt=adapt,
        optimizer=optimizer,
        config=config,
        training=training,
        hyper=hyper,
        record=record,
        task_loss=task_loss,
        fused_norm=fused_norm,
        under_vmap=under_vmap,
    )
    trajectory, buffers = adaptation.trajectory, adaptation.buffers
    use_running = config.norm_policy.uses_running_statistics(inner=False, training=training)
    weights = config.query_weights()
    # Query losses are only computed where they are weighted (always after the last step).
    loss = query_x.new_zeros(())
    logits = query_x.new_zeros(())
    last = len(trajectory) - 1
    for step in range(last + 1):
        weight = weights[step - 1] if step >= 1 else (1.0 if last == 0 else 0.0)
        if weight == 0.0 and step != last:
            continue
        context = BatchNormContext(
            step=step,
            use_running=use_running,
            record=record if step == last else None,
            fused=fused_norm,
        )
        logits = _forward(model, trajectory[step], buffers, query_x, context)
        loss = loss + weight * task_loss.loss(logits, query_y)
    score = task_loss.score(logits, query_y).detach()
    return loss, score, record if record is not None else RecordedStatistics()
