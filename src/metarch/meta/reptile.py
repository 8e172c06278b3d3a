"""Reptile (Nichol, Achiam and Schulman, 2018): "On First-Order Meta-Learning Algorithms".

For every task of a meta-batch, the weights are trained for a few steps (Adam with
``beta1 = 0`` in the paper); the meta-parameters then move towards the average of the
adapted weights::

    theta <- theta + epsilon * (mean_t(theta_t) - theta)

:meth:`Reptile.compute_meta_gradients` writes ``theta - mean_t(theta_t)`` into ``.grad``,
so an outer ``torch.optim.SGD`` with learning rate ``epsilon`` performs exactly this update
(the paper's batched version; its meta step size is annealed linearly to 0, which an outer
learning-rate schedule does). Any other outer optimizer treats the difference as a gradient.

Reptile runs on the shared core: the functional inner loop of
:mod:`metarch.meta.functional` (first order, on mini-batches) with an inner optimizer of
:mod:`metarch.meta.optim`, and, for models the task-batched engine can trace, all tasks of
a meta-batch at once (:func:`~metarch.meta.batched.batched_adapt`, in ``task_threads``
shards). Both give the same meta-gradient (tested). The meta-parameters are never touched
during adaptation, and nothing is differentiated through the inner loop.

Inner Adam's state. The paper's code (``openai/supervised-reptile``) keeps one Adam
optimizer for the whole run: its moment estimates are not trainable variables, so the
per-task save/restore of the weights skips them, and the second moment (the first is the
last gradient when ``beta1 = 0``) and step count carry over from task to task. This
matters: an Adam that starts afresh for every task moves *every* weight by about the
learning rate at each of its few steps, whatever the size of its gradient (the first step
is ``lr * sign(g)``), so the Reptile direction is dominated by noise in weights with small
gradients; a carried second moment scales each weight's steps by its long-run gradient
size instead. ``adam_state`` chooses how it is carried:

* ``"carried"`` (default): every task of a meta-batch starts from the carried state, and
  the state carried on is the tasks' average second moment, its step count advanced by
  the inner steps. Tasks are independent, so they run task-batched and in threads.
* ``"sequential"``: exactly the paper's code: each task starts from the state the
  previous one left (tasks run one after another).
* ``"per_task"``: every task starts afresh.

The two carried forms differ in how an exponential average of ``beta2 = 0.999`` mixes the
squared gradients of a meta-batch (in parallel or in series): a few per cent of its
weight, on a quantity that only scales step sizes. The state is a buffer of the learner
(saved in checkpoints, so resumed runs continue it; averaged over processes with the other
buffers in distributed training). Adaptation at evaluation starts from the carried state
and never changes it (the paper's code adapts to test tasks with the training optimizer,
so evaluation there perturbs later training).

Batch norm follows :attr:`~metarch.models.norm.NormPolicy.TASK`: the inner loop normalises
with batch statistics, as a copy of the model trained on the task would; at evaluation the
task keeps running statistics of its own, started from the meta-model's (which Reptile
never changes) and updated at every inner step. See :meth:`Reptile.adapt`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
from annotated_types import Interval
from torch import Tensor, nn

from metarch.meta.base import META_LEARNERS, MetaLearner, MetaMetrics, Predictor, TaskBatch
from metarch.meta.batched import (
    BatchedNormContext,
    BatchingUnsupportedError,
    TaskBatchedModel,
    batched_adapt,
    retain_freed_memory,
    run_task_shards,
    stack_for_tasks,
)
from metarch.meta.functional import (
    Adaptation,
    InnerLoopConfig,
    Params,
    _forward,
    adapt_task,
    adapted_predictor,
)
from metarch.meta.losses import TASK_LOSSES, TaskLoss
from metarch.meta.optim import (
    InnerOptimizer,
    OptState,
    adam,
    adam_second_moments,
    adam_step_counts,
    grouped_inner_optimizer,
    sgd,
    with_adam_second_moments,
)
from metarch.models.groups import group_of
from metarch.models.norm import BatchNormContext, NormPolicy, name_norm_layers
from metarch.registry import NonNegativeInt, PositiveFloat, PositiveInt

__all__ = ["AdamStateMode", "InnerData", "Reptile", "ReptileOptimizer"]

log = logging.getLogger(__name__)

ReptileOptimizer = Literal["adam", "sgd"]
InnerData = Literal["support", "all"]
AdamStateMode = Literal["carried", "sequential", "per_task"]
Batching = Literal["auto", "loop", "batched"]
# Adam's decay rates: 0 (no momentum, the paper's beta1) up to, not including, 1.
AdamBeta = Annotated[float, Interval(ge=0, lt=1)]

# Buffers of the carried inner Adam state (see the module docstring): the second moment of
# every parameter, flattened in ``named_parameters`` order, and the step count of the Adam
# that holds each parameter (an architecture's Adam may have run fewer steps).
_SECOND_MOMENT = "inner_adam_second_moment"
_STEP = "inner_adam_step"


@META_LEARNERS.register("reptile")
class Reptile(MetaLearner):
    """Reptile: move the initialisation towards the weights fine-tuned on each task.

    Args:
        model: Classifier (or regressor, with ``loss``) to meta-learn.
        inner_lr: Learning rate of the inner optimizer (the paper: 1e-3).
        steps: Inner steps (mini-batches) per task during meta-training (the paper: 5 on
            Omniglot, 8 on mini-ImageNet).
        eval_steps: Inner steps in :meth:`adapt` (the paper: 50 on both).
        inner_optimizer: ``"adam"`` (the paper) or ``"sgd"`` (plain gradient descent, the
            setting of the paper's analysis), or one rule per parameter group of the model
            (``{weights: {name: adam, betas: [0, 0.999]}, architecture: {name: adam, lr:
            0.005, betas: [0, 0.999], weight_decay: 0.001}}``, MetaNAS's; see
            :func:`~metarch.meta.optim.grouped_inner_optimizer`), or a rule built already.
            The Adams of any rule carry their state as ``adam_state`` says.
        betas: Adam's ``(beta1, beta2)`` for ``inner_optimizer="adam"``; the paper uses
            ``beta1 = 0``.
        eps: Adam's epsilon for ``inner_optimizer="adam"``.
        inner_on: What the inner loop trains on during meta-training: ``"all"`` the task's
            support and query examples together (the paper samples one set of examples
            per task and trains on all of it), or ``"support"`` only. With ``"all"`` the
            reported query loss and accuracy are measured on examples the task was trained
            on. :meth:`adapt` always trains on the support set, the only data it gets.
        inner_batch_size: Examples per inner step during meta-training; ``None`` for the
            full batch. Mini-batches cycle through random permutations of the task's
            examples (as in the paper's code), drawn from torch's global generator.
        eval_batch_size: Examples per inner step in :meth:`adapt`; ``None`` for the full
            support set.
        adam_state: ``"carried"``, ``"sequential"`` or ``"per_task"`` (see the module
            docstring). Ignored for ``inner_optimizer="sgd"``.
        loss: The task loss, by name (:data:`~metarch.meta.losses.TASK_LOSSES`:
            ``cross_entropy``, ``mse``) or as a :class:`~metarch.meta.losses.TaskLoss`.
        batching: ``"auto"`` (task-batched, or a loop over tasks for models the engine
            cannot trace and for ``adam_state="sequential"``), ``"batched"`` or ``"loop"``.
        support_group: Task-batched: tasks adapted together (bounds the memory).
        query_chunk: Task-batched: tasks whose query passes (the reported metrics) run
            together.
        task_threads: Task-batched: shards of tasks run by threads of their own (``None``:
            ``torch.get_num_threads()``). Default 1: Reptile's first-order passes on a
            small meta-batch (5 tasks in the papers' settings) run faster as one group with
            every intra-op thread (measured: 0.19 s against 0.21-0.23 s per Omniglot
            meta-iteration with two shards on 2 cores) than split unevenly into shards.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: PositiveFloat = 1e-3,
        steps: NonNegativeInt = 5,
        eval_steps: NonNegativeInt = 50,
        inner_optimizer: ReptileOptimizer
        | Mapping[str, str | Mapping[str, Any]]
        | InnerOptimizer = "adam",
        betas: tuple[AdamBeta, AdamBeta] = (0.0, 0.999),
        eps: PositiveFloat = 1e-8,
        inner_on: InnerData = "all",
        inner_batch_size: PositiveInt | None = None,
        eval_batch_size: PositiveInt | None = None,
        adam_state: AdamStateMode = "carried",
        loss: str | TaskLoss = "cross_entropy",
        batching: Batching = "auto",
        support_group: PositiveInt = 8,
        query_chunk: PositiveInt = 1,
        task_threads: PositiveInt | None = 1,
    ) -> None:
        super().__init__()
        if isinstance(inner_optimizer, str):
            _check_choice("inner_optimizer", inner_optimizer, ("adam", "sgd"))
        _check_choice("inner_on", inner_on, ("support", "all"))
        _check_choice("adam_state", adam_state, ("carried", "sequential", "per_task"))
        _check_choice("batching", batching, ("auto", "loop", "batched"))
        if steps < 0 or eval_steps < 0:
            raise ValueError(f"inner steps must be >= 0, got {steps} and {eval_steps}")
        for size in (inner_batch_size, eval_batch_size):
            if size is not None and size < 1:
                raise ValueError(f"inner batch sizes must be >= 1 or None, got {size}")
        if support_group < 1 or query_chunk < 1:
            raise ValueError("support_group and query_chunk must be positive")
        if task_threads is not None and task_threads < 1:
            raise ValueError(f"task_threads must be positive or None, got {task_threads}")
        if inner_optimizer == "sgd" and adam_state == "sequential":
            raise ValueError("adam_state='sequential' needs inner_optimizer='adam'")
        self.model = model
        name_norm_layers(model)
        # Frozen parameters (requires_grad False) never adapt, and carry no Adam state.
        self.adapt_names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.inner_lr = float(inner_lr)
        self.steps = steps
        self.eval_steps = eval_steps
        # torch.optim.Adam-style betas may come as a mix of ints and floats, e.g. (0, 0.999).
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        adapted = {name: model.get_parameter(name) for name in self.adapt_names}
        self.inner_optimizer: InnerOptimizer
        if inner_optimizer == "adam":
            self.inner_optimizer = adam(self.inner_lr, self.betas, self.eps)
        elif inner_optimizer == "sgd":
            self.inner_optimizer = sgd(self.inner_lr)
        else:
            assert not isinstance(inner_optimizer, str)  # narrowed for mypy
            groups = {name: group_of(model, name) for name in self.adapt_names}
            self.inner_optimizer = grouped_inner_optimizer(
                inner_optimizer, groups, adapted, self.inner_lr, steps
            )
        # The parameters whose Adam state is carried, in parameter order.
        with_adam = adam_second_moments(self.inner_optimizer.init(adapted))
        self._carried_names = [name for name in self.adapt_names if name in with_adam]
        self.inner_on: InnerData = inner_on
        self.inner_batch_size = inner_batch_size
        self.eval_batch_size = eval_batch_size
        self.task_loss = TASK_LOSSES.get(loss) if isinstance(loss, str) else loss
        self.adam_state: AdamStateMode = adam_state if self._carried_names else "per_task"
        self.batching: Batching = (
            "loop" if self.adam_state == "sequential" and batching == "auto" else batching
        )
        if self.adam_state == "sequential" and self.batching == "batched":
            raise ValueError(
                "adam_state='sequential' runs tasks one after another: use batching='loop'"
            )
        self.support_group = support_group
        self.query_chunk = query_chunk
        self.task_threads = task_threads
        self._batched: TaskBatchedModel | None = None
        self.config = InnerLoopConfig(steps=steps, first_order=True, norm_policy=NormPolicy.TASK)
        self.eval_config = InnerLoopConfig(
            steps=eval_steps, first_order=True, norm_policy=NormPolicy.TASK
        )
        if self.carries_adam_state:
            size = sum(model.get_parameter(name).numel() for name in self._carried_names)
            dtype = next(model.parameters()).dtype
            self.register_buffer(_SECOND_MOMENT, torch.zeros(size, dtype=dtype))
            steps_taken = torch.zeros(len(self._carried_names), dtype=torch.int64)
            self.register_buffer(_STEP, steps_taken)

    @property
    def carries_adam_state(self) -> bool:
        """Whether inner Adam's state carries over from task to task."""
        return self.adam_state != "per_task"

    # -- the carried inner Adam state ------------------------------------------------------

    def _start_state(self, params: Params) -> OptState:
        """The inner optimizer's state for ``params`` (per task, or stacked ``(T, ...)``).

        The second moments of its Adam (wherever the rule holds it) start from the carried
        ones. The first moment is not carried: with the paper's ``beta1 = 0`` it is the
        last gradient anyway.
        """
        state = self.inner_optimizer.init({name: params[name] for name in self.adapt_names})
        if not self.carries_adam_state:
            return state
        second_moment: Tensor = getattr(self, _SECOND_MOMENT)
        offset = 0
        carried = {}
        for name in self._carried_names:
            value = params[name]
            shape = self.model.get_parameter(name).shape
            size = math.prod(shape)
            part = second_moment[offset : offset + size].view(shape)
            carried[name] = part.expand_as(value).clone() if value.dim() > len(shape) else part
            offset += size
        counts = dict(zip(self._carried_names, getattr(self, _STEP).tolist(), strict=True))
        return with_adam_second_moments(state, carried, counts)

    def _store_state(self, second_moments: Params, counts: Mapping[str, int]) -> None:
        """Carry ``second_moments`` and step ``counts`` (per parameter) on to later tasks."""
        second_moment: Tensor = getattr(self, _SECOND_MOMENT)
        flat = torch.cat([second_moments[name].reshape(-1) for name in self._carried_names])
        second_moment.copy_(flat)
        steps_taken = [counts[name] for name in self._carried_names]
        getattr(self, _STEP).copy_(torch.tensor(steps_taken, dtype=torch.int64))

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
        # keep their initial (empty) state, which is what such runs trained with. Those
        # written before counts were kept per parameter hold one count for all.
        old_count = state_dict.get(prefix + _STEP)
        if isinstance(old_count, Tensor) and old_count.dim() == 0 and self._carried_names:
            state_dict[prefix + _STEP] = old_count.expand(len(self._carried_names)).clone()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for name in (_SECOND_MOMENT, _STEP):
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)

    # -- meta-training -----------------------------------------------------------------

    def compute_meta_gradients(self, batch: TaskBatch) -> MetaMetrics:
        """Add ``theta - mean_t(theta_t)`` to ``.grad`` of every trainable meta-parameter.

        Works for any :class:`~metarch.meta.base.TaskBatch` (classification episodes,
        regression tasks with float targets).

        Returns:
            Query loss and score of the adapted weights, averaged over tasks.
        """
        x, y = batch.support_x, batch.support_y
        if self.inner_on == "all":
            x, y = torch.cat([x, batch.query_x], dim=1), torch.cat([y, batch.query_y], dim=1)
        batches = _draw_mini_batches(
            batch.num_tasks, x.shape[1], self.inner_batch_size, self.steps, x.device
        )
        meta = {name: p.detach() for name, p in self.model.named_parameters()}
        if self.batching in ("auto", "batched"):
            try:
                result = self._adapt_batched(meta, x, y, batch, batches)
            except BatchingUnsupportedError as exc:
                if self.batching == "batched":
                    raise
                log.warning("cannot batch tasks (%s); running tasks in a loop", exc)
                self.batching = "loop"
        if self.batching == "loop":
            result = self._adapt_loop(meta, x, y, batch, batches)
        adapted_sum, losses, scores, carried = result
        tasks = batch.num_tasks
        if self.carries_adam_state:
            assert carried is not None
            second_moments, counts = carried
            if self.adam_state == "carried":
                second_moments = {n: v / tasks for n, v in second_moments.items()}
            self._store_state(second_moments, counts)
        for name, theta in self.model.named_parameters():
            if not theta.requires_grad:
                continue
            difference = theta.detach() - adapted_sum[name] / tasks
            theta.grad = difference if theta.grad is None else theta.grad + difference
        return MetaMetrics(loss=losses / tasks, accuracy=scores / tasks, tasks=tasks)

    def _adapt_loop(
        self,
        meta: Params,
        x: Tensor,
        y: Tensor,
        batch: TaskBatch,
        batches: list[Tensor] | None,
    ) -> _Adapted:
        """Tasks one after another (any model; the paper's sequential Adam state)."""
        buffers = dict(self.model.named_buffers())
        adapted_sum: Params = {name: torch.zeros_like(p) for name, p in meta.items()}
        second_moments: Params | None = None
        counts: dict[str, int] = {}
        losses = scores = 0.0
        state = self._start_state(meta)
        for t in range(batch.num_tasks):
            if self.adam_state != "sequential":
                state = self._start_state(meta)
            with torch.enable_grad():
                adaptation = adapt_task(
                    self.model,
                    meta,
                    buffers,
                    x[t],
                    y[t],
                    adapt=self.adapt_names,
                    optimizer=self.inner_optimizer,
                    config=self.config,
                    training=True,
                    task_loss=self.task_loss,
                    fused_norm=True,
                    state=state,
                    batches=None if batches is None else [b[t] for b in batches],
                )
            state = adaptation.state
            adapted = {n: p.detach() for n, p in adaptation.params.items()}
            for name, value in adapted.items():
                adapted_sum[name] += value
            if self.carries_adam_state:
                v = adam_second_moments(state)
                # Carried: every task took the same steps from the same start.
                counts = adam_step_counts(state)
                if self.adam_state == "sequential" or second_moments is None:
                    second_moments = {n: t_.detach().clone() for n, t_ in v.items()}
                else:
                    for name in second_moments:
                        second_moments[name] += v[name].detach()
            with torch.no_grad():
                context = BatchNormContext(step=self.steps, fused=True)
                outputs = _forward(self.model, adapted, buffers, batch.query_x[t], context)
                losses += float(self.task_loss.loss(outputs, batch.query_y[t]))
                scores += float(self.task_loss.score(outputs, batch.query_y[t]))
        carried = None if second_moments is None else (second_moments, counts)
        return adapted_sum, losses, scores, carried

    def _adapt_batched(
        self,
        meta: Params,
        x: Tensor,
        y: Tensor,
        batch: TaskBatch,
        batches: list[Tensor] | None,
    ) -> _Adapted:
        """All tasks task-batched, in shards run by threads; sums in shard order."""
        if self._batched is None:
            self._batched = TaskBatchedModel.trace(self.model)
            retain_freed_memory()
        batched = self._batched
        if not self.inner_optimizer.elementwise:
            raise BatchingUnsupportedError("the inner optimizer couples elements")

        def shard(first: int, end: int) -> _Adapted:
            adapted_sum: Params = {name: torch.zeros_like(p) for name, p in meta.items()}
            second_moments: Params = {}
            counts: dict[str, int] = {}
            losses = scores = 0.0
            for g0 in range(first, end, self.support_group):
                g1 = min(end, g0 + self.support_group)
                start = {n: stack_for_tasks(p, g1 - g0).requires_grad_() for n, p in meta.items()}
                with torch.enable_grad():
                    trajectory, state = batched_adapt(
                        batched,
                        start,
                        x[g0:g1],
                        y[g0:g1],
                        adapt=self.adapt_names,
                        optimizer=self.inner_optimizer,
                        state=self._start_state(start),
                        hyper=None,
                        steps=self.steps,
                        first_order=True,
                        use_running=False,
                        record=None,
                        task_loss=self.task_loss,
                        batches=None if batches is None else [b[g0:g1] for b in batches],
                    )
                adapted = {n: p.detach() for n, p in trajectory[-1].items()}
                for name, value in adapted.items():
                    adapted_sum[name] += value.sum(dim=0)
                if self.carries_adam_state:
                    counts = adam_step_counts(state)
                    for name, v in adam_second_moments(state).items():
                        part = v.detach().sum(dim=0)
                        previous = second_moments.get(name)
                        second_moments[name] = part if previous is None else previous + part
                # Query passes a few tasks at a time: large activations of many tasks at
                # once cost more in fresh memory than they gain.
                with torch.no_grad():
                    context = BatchedNormContext(step=self.steps, first_order=True)
                    for c0 in range(g0, g1, self.query_chunk):
                        c1 = min(g1, c0 + self.query_chunk)
                        chunk = {n: p[c0 - g0 : c1 - g0] for n, p in adapted.items()}
                        outputs = batched(chunk, batch.query_x[c0:c1], context)
                        targets = batch.query_y[c0:c1]
                        losses += float(self.task_loss.per_task(outputs, targets).sum())
                        scores += float(self.task_loss.score(outputs, targets).sum())
            carried = (second_moments, counts) if self.carries_adam_state else None
            return adapted_sum, losses, scores, carried

        threads = self.task_threads or torch.get_num_threads()
        done = [result for _, _, result in run_task_shards(batch.num_tasks, threads, shard)]
        total, losses, scores, carried = done[0]
        for part, part_losses, part_scores, part_carried in done[1:]:
            total = {n: total[n] + part[n] for n in total}
            if carried is not None and part_carried is not None:
                moments = {n: v + part_carried[0][n] for n, v in carried[0].items()}
                carried = (moments, carried[1])
            losses += part_losses
            scores += part_scores
        return total, losses, scores, carried

    # -- adaptation --------------------------------------------------------------------

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Predictor:
        """Train on the support set for ``eval_steps``; return the adapted predictor.

        The predictor runs in the mode the learner had when ``adapt`` was called:

        * eval mode: batch norm uses running statistics of the task's own, started from
          the meta-model's and updated at every inner step, as a copy of the model
          trained on the support set would have them (the meta-model's own buffers are
          never updated by Reptile). A query's prediction does not depend on the other
          queries, but the statistics need enough steps to forget their start (momentum
          0.1: ``0.9 ** 50 < 0.01``), which the paper's 50 evaluation steps give.
        * train mode: queries are normalised with their own batch statistics, the paper's
          *transductive* setting.

        The adapted weights are detached, so predictions carry no gradient; the carried
        Adam state is read, never changed.
        """
        training = self.training
        adaptation = self.adapt_parameters(support_x, support_y)
        return adapted_predictor(self.model, adaptation, self.eval_config, training=training)

    def adapt_parameters(self, support_x: Tensor, support_y: Tensor) -> Adaptation:
        """The inner loop of :meth:`adapt`: adapted parameters, optimizer state, buffers."""
        training = self.training
        meta = {name: p.detach() for name, p in self.model.named_parameters()}
        batches = _draw_mini_batches(
            1, len(support_x), self.eval_batch_size, self.eval_steps, support_x.device
        )
        with torch.enable_grad():
            adaptation = adapt_task(
                self.model,
                meta,
                dict(self.model.named_buffers()),
                support_x,
                support_y,
                adapt=self.adapt_names,
                optimizer=self.inner_optimizer,
                config=self.eval_config,
                training=training,
                task_loss=self.task_loss,
                fused_norm=True,
                state=self._start_state(meta),
                batches=None if batches is None else [b[0] for b in batches],
            )
        return adaptation


#: Sum of adapted parameters, summed query losses and scores, and the inner Adam state to
#: carry on: summed (or the last task's) second moments and the step counts.
_Adapted = tuple[Params, float, float, "tuple[Params, dict[str, int]] | None"]


def _check_choice(option: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(
            f"{option} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        )


def _draw_mini_batches(
    tasks: int, size: int, batch_size: int | None, steps: int, device: torch.device
) -> list[Tensor] | None:
    """Per inner step, the indices ``(tasks, batch_size)`` of each task's mini-batch.

    ``None`` when every step trains on all ``size`` examples. Each pass over a task's
    examples visits every one once in a random order; a mini-batch may straddle two
    passes, as in the paper's code. Tasks draw their permutations in task order, from
    torch's global generator, so the loop and the task-batched path see the same batches.
    """
    if batch_size is None or batch_size >= size:
        return None
    passes = math.ceil(steps * batch_size / size)
    orders = torch.stack(
        [
            torch.cat([torch.randperm(size, device=device) for _ in range(passes)])
            for _ in range(tasks)
        ]
    )
    return [orders[:, step * batch_size : (step + 1) * batch_size] for step in range(steps)]
