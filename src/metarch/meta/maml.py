"""MAML and its relatives on the functional inner loop.

* :class:`MAML` (Finn et al., 2017), second order by default, with the MAML++ options
  (per-layer per-step learning rates, multi-step loss, per-step batch norm).
* :class:`FOMAML` — first-order MAML: inner gradients are not differentiated through.
* :class:`MetaSGD` (Li et al., 2017) — a learnable learning rate for every parameter
  element.
* :class:`ANIL` (Raghu et al., 2020) — only the head adapts in the inner loop.

The tasks of a meta-batch run together under ``torch.func.vmap`` (``batching="vmap"``),
one after another (``"loop"``: one backward per task, so memory holds one task's graph), or
task-batched (``"batched"``, see :mod:`metarch.meta.batched`: grouped convolutions over
many tasks at once, the fastest on CPU; models it cannot batch fall back to the loop).
``"auto"`` (the default) is task-batched, falling back to the loop for models it cannot
batch: vmap is kept for comparison, it is no faster than the loop on CPU and holds every
task's graph at once. All give the same meta-gradient (tested at second order).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from metarch.meta.base import META_LEARNERS, MetaLearner, MetaMetrics, Predictor, TaskBatch
from metarch.meta.batched import (
    BatchedResult,
    BatchingUnsupportedError,
    TaskBatchedModel,
    accumulate_statistics,
    batched_meta_gradients,
    retain_freed_memory,
    run_task_shards,
)
from metarch.meta.functional import (
    Adaptation,
    InnerLoopConfig,
    Params,
    adapt_task,
    adapted_predictor,
    run_task,
)
from metarch.meta.losses import TASK_LOSSES
from metarch.meta.optim import (
    Hyper,
    InnerOptimizer,
    InnerOptimizerSpec,
    build_inner_optimizer,
    grouped_inner_optimizer,
)
from metarch.models.groups import group_of
from metarch.models.norm import (
    NormPolicy,
    RecordedStatistics,
    apply_recorded_statistics,
    name_norm_layers,
)
from metarch.registry import NonNegativeInt, PositiveFloat, PositiveInt

__all__ = ["ANIL", "FOMAML", "MAML", "LrMode", "MetaSGD"]

log = logging.getLogger(__name__)

Batching = Literal["auto", "vmap", "loop", "batched"]
LrMode = Literal["fixed", "per_parameter", "per_layer_step"]

# lr_mode -> the inner optimizer (metarch.meta.optim) it names.
_LR_MODES = {"fixed": "sgd", "per_parameter": "meta_sgd", "per_layer_step": "per_layer_step"}


def _rename_old_rates(
    module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: object
) -> None:
    """Read learnable rates saved as ``rates.rates.<name>`` (before inner optimizers)."""
    old = f"{prefix}rates.rates."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[f"{prefix}inner_optimizer.rates.{key[len(old) :]}"] = state_dict.pop(key)


@META_LEARNERS.register("maml")
class MAML(MetaLearner):
    """Model-agnostic meta-learning.

    Args:
        model: Classifier to meta-learn (any module; called functionally).
        inner_lr: Inner learning rate (initial value where it is learned).
        steps: Inner steps during meta-training.
        eval_steps: Inner steps when adapting for evaluation (default: ``steps``).
        first_order: Drop second-order terms (first-order MAML).
        adapt: ``"all"`` parameters, ``"head"`` (those under ``head.``), or explicit names.
        lr_mode: ``"fixed"``, ``"per_parameter"`` (Meta-SGD) or ``"per_layer_step"``
            (MAML++).
        norm_policy: Batch-norm statistics policy (see :mod:`metarch.models.norm`).
        multi_step_loss: MAML++ multi-step loss.
        batching: ``"auto"``, ``"vmap"``, ``"loop"`` or ``"batched"`` (see the module
            docstring).
        support_group: With ``"batched"``: tasks whose inner loops run together (their
            graph is held until their meta-gradient is done).
        query_chunk: With ``"batched"``: tasks whose query passes run together (bounds the
            memory of the large query activations).
        task_threads: With ``"batched"``: split the meta-batch into this many shards of
            tasks, each run by its own thread with one intra-op thread, and sum their
            meta-gradients in a fixed order (deterministic). ``None``: as many as
            ``torch.get_num_threads()``. Small CPU convolutions scale poorly over intra-op
            threads (and collapse when the cores are shared); independent tasks scale well.
        loss: The task loss by name (:data:`~metarch.meta.losses.TASK_LOSSES`):
            ``cross_entropy`` (classification) or ``mse`` (regression, as the sinusoid
            tasks of the MAML paper).
        inner_optimizer: The inner update rule by name
            (:data:`~metarch.meta.optim.INNER_OPTIMIZERS`), or one per parameter group
            (``{weights: sgd, architecture: {name: adam, lr: 0.003}}``; the groups come
            from the model, see :mod:`metarch.models.groups`). Default: from ``lr_mode``.

    With ``"batched"``, the first meta-gradient also tunes glibc's allocator to keep
    freed memory (see :func:`~metarch.meta.batched.retain_freed_memory`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: PositiveFloat = 0.4,
        steps: NonNegativeInt = 1,
        eval_steps: NonNegativeInt | None = None,
        first_order: bool = False,
        adapt: str | list[str] = "all",
        lr_mode: LrMode = "fixed",
        norm_policy: NormPolicy | str = NormPolicy.BATCH,
        multi_step_loss: bool = False,
        batching: Batching = "auto",
        support_group: PositiveInt = 8,
        query_chunk: PositiveInt = 2,
        task_threads: PositiveInt | None = None,
        loss: str = "cross_entropy",
        inner_optimizer: InnerOptimizerSpec | InnerOptimizer | None = None,
    ) -> None:
        super().__init__()
        self.task_loss = TASK_LOSSES.get(loss)
        if batching not in ("auto", "vmap", "loop", "batched"):
            raise ValueError(
                f"batching must be 'auto', 'vmap', 'loop' or 'batched', got {batching!r}"
            )
        if support_group < 1 or query_chunk < 1:
            raise ValueError("support_group and query_chunk must be positive")
        if task_threads is not None and task_threads < 1:
            raise ValueError(f"task_threads must be positive or None, got {task_threads}")
        self.model = model
        name_norm_layers(model)
        # Frozen parameters (requires_grad False, e.g. a non-affine batch norm's) never adapt.
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        if adapt == "all":
            self.adapt_names = names
        elif adapt == "head":
            self.adapt_names = [n for n in names if n.startswith("head.")]
        else:
            self.adapt_names = list(adapt)
        unknown = sorted(set(self.adapt_names) - set(names))
        if unknown or not self.adapt_names:
            raise ValueError(f"no such parameters to adapt: {unknown or adapt!r}")
        self.config = InnerLoopConfig(
            steps=steps,
            first_order=first_order,
            norm_policy=NormPolicy(norm_policy),
            multi_step_loss=multi_step_loss,
        )
        self.eval_config = InnerLoopConfig(
            steps=steps if eval_steps is None else eval_steps,
            first_order=True,
            norm_policy=NormPolicy(norm_policy),
        )
        adapted = {name: p for name, p in model.named_parameters() if name in self.adapt_names}
        if lr_mode not in _LR_MODES:
            raise ValueError(f"lr_mode must be one of {', '.join(_LR_MODES)}, got {lr_mode!r}")
        inner_steps = max(steps, self.eval_config.steps)
        if inner_optimizer is None:
            self.inner_optimizer = build_inner_optimizer(
                _LR_MODES[lr_mode], adapted, inner_lr, inner_steps
            )
        elif lr_mode != "fixed":
            raise ValueError(
                "lr_mode and inner_optimizer both choose the inner update rule; set one of them"
            )
        else:
            groups = {name: group_of(model, name) for name in adapted}
            self.inner_optimizer = grouped_inner_optimizer(
                inner_optimizer, groups, adapted, inner_lr, inner_steps
            )
        # Runs saved before inner optimizers kept learnable rates under "rates.rates.".
        self.register_load_state_dict_pre_hook(_rename_old_rates)
        self.batching: Batching = batching
        self.support_group = support_group
        self.query_chunk = query_chunk
        self.task_threads = task_threads
        self._batched: TaskBatchedModel | None = None

    # -- meta-training ---------------------------------------------------------------------

    def _params_and_buffers(self) -> tuple[Params, Params]:
        params: Params = dict(self.model.named_parameters())
        buffers = {name: b for name, b in self.model.named_buffers()}
        return params, buffers

    def compute_meta_gradients(self, batch: TaskBatch) -> MetaMetrics:  # noqa: D102
        if self.batching in ("batched", "auto"):
            # An unsupported model fails on the first call, possibly after a backward:
            # keep the gradients it started from so the loop adds to those only.
            first = self._batched is None
            before = {n: p.grad for n, p in self.model.named_parameters()} if first else {}
            if first:
                for p in self.model.parameters():
                    p.grad = None if p.grad is None else p.grad.clone()
            try:
                return self._meta_gradients_batched(batch)
            except BatchingUnsupportedError as exc:
                log.warning("cannot batch tasks (%s); running tasks in a loop", exc)
                for name, p in self.model.named_parameters():
                    p.grad = before.get(name)
                self.batching = "loop"
        if self.batching == "vmap":
            return self._meta_gradients_vmap(batch)
        return self._meta_gradients_loop(batch)

    def _meta_gradients_loop(self, batch: TaskBatch) -> MetaMetrics:
        params, buffers = self._params_and_buffers()
        tasks = batch.num_tasks
        losses, accuracies = [], []
        statistics = RecordedStatistics()
        for t in range(tasks):
            loss, accuracy, recorded = run_task(
                self.model,
                params,
                buffers,
                batch.support_x[t],
                batch.support_y[t],
                batch.query_x[t],
                batch.query_y[t],
                adapt=self.adapt_names,
                optimizer=self.inner_optimizer,
                config=self.config,
                training=True,
                record_statistics=self._records_statistics(),
                task_loss=self.task_loss,
                fused_norm=True,
            )
            # One backward per task keeps one task's graph in memory at a time.
            (loss / tasks).backward()
            losses.append(loss.detach())
            accuracies.append(accuracy)
            for key, mean in recorded.means.items():
                statistics.means.setdefault(key, torch.zeros_like(mean)).add_(mean / tasks)
                variance = recorded.variances[key]
                statistics.variances.setdefault(key, torch.zeros_like(variance)).add_(
                    variance / tasks
                )
        apply_recorded_statistics(self.model, statistics)
        return MetaMetrics(
            loss=float(torch.stack(losses).mean()),
            accuracy=float(torch.stack(accuracies).mean()),
            tasks=tasks,
        )

    def _meta_gradients_batched(self, batch: TaskBatch) -> MetaMetrics:
        if self._batched is None:
            self._batched = TaskBatchedModel.trace(self.model)
            retain_freed_memory()
        params, _ = self._params_and_buffers()
        tasks = batch.num_tasks
        threads = self.task_threads or torch.get_num_threads()
        if min(threads, tasks) > 1:
            result = self._batched_in_threads(batch, params, min(threads, tasks))
        else:
            result = self._batched_shard(batch, 0, tasks, params, None)
        apply_recorded_statistics(self.model, result.statistics)
        return MetaMetrics(
            loss=float(result.losses.mean()),
            accuracy=float(result.accuracies.mean()),
            tasks=tasks,
        )

    def _batched_shard(
        self,
        batch: TaskBatch,
        first: int,
        end: int,
        params: Params,
        hyper: Hyper | None,
    ) -> BatchedResult:
        """Mean meta-gradient of tasks ``first .. end-1`` into ``params``' ``.grad``."""
        assert self._batched is not None
        policy = self.config.norm_policy
        return batched_meta_gradients(
            self._batched,
            params,
            batch.support_x[first:end],
            batch.support_y[first:end],
            batch.query_x[first:end],
            batch.query_y[first:end],
            adapt=self.adapt_names,
            optimizer=self.inner_optimizer,
            hyper=hyper,
            steps=self.config.steps,
            first_order=self.config.first_order,
            query_weights=self.config.query_weights(),
            norm_running=(
                policy.uses_running_statistics(inner=True, training=True),
                policy.uses_running_statistics(inner=False, training=True),
            ),
            record_statistics=self._records_statistics(),
            support_group=self.support_group,
            query_chunk=self.query_chunk,
            task_loss=self.task_loss,
        )

    def _batched_in_threads(self, batch: TaskBatch, params: Params, threads: int) -> BatchedResult:
        """Shards of tasks in parallel threads; their gradients summed in shard order."""
        tasks = batch.num_tasks

        def shard(first: int, end: int) -> tuple[BatchedResult, Params, Params]:
            # Every shard accumulates into leaves of its own, so no two threads touch one
            # .grad and the sums below have one order, whatever the thread timing.
            leaves = {n: p.detach().requires_grad_(p.requires_grad) for n, p in params.items()}
            hyper = self.inner_optimizer.leaf_copies()
            return self._batched_shard(batch, first, end, leaves, hyper), leaves, hyper

        done = run_task_shards(tasks, threads, shard)
        shares = [(end - first) / tasks for first, end, _ in done]
        _add_shard_gradients(params, [leaves for _, _, (_, leaves, _) in done], shares)
        _add_shard_gradients(
            dict(self.inner_optimizer.named_parameters()),
            [hyper for _, _, (_, _, hyper) in done],
            shares,
        )
        statistics = RecordedStatistics()
        for index, (_, _, (result, _, _)) in enumerate(done):
            accumulate_statistics(statistics, result.statistics, shares[index], first=index == 0)
        results = [result for _, _, (result, _, _) in done]
        return BatchedResult(
            torch.cat([r.losses for r in results]),
            torch.cat([r.accuracies for r in results]),
            statistics,
        )

    def _meta_gradients_vmap(self, batch: TaskBatch) -> MetaMetrics:
        params, buffers = self._params_and_buffers()
        record = self._records_statistics()

        def one_task(
            support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
        ) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
            loss, accuracy, recorded = run_task(
                self.model,
                params,
                buffers,
                support_x,
                support_y,
                query_x,
                query_y,
                adapt=self.adapt_names,
                optimizer=self.inner_optimizer,
                config=self.config,
                training=True,
                record_statistics=record,
                task_loss=self.task_loss,
                under_vmap=True,
            )
            # vmap returns pytrees of tensors; the dataclass is split into two dicts.
            return loss, accuracy, recorded.means, recorded.variances

        losses, accuracies, means, variances = torch.func.vmap(one_task)(
            batch.support_x, batch.support_y, batch.query_x, batch.query_y
        )
        losses.mean().backward()
        apply_recorded_statistics(self.model, RecordedStatistics(means, variances))
        return MetaMetrics(
            loss=float(losses.detach().mean()),
            accuracy=float(accuracies.mean()),
            tasks=batch.num_tasks,
        )

    def _records_statistics(self) -> bool:
        # Batch statistics only: no running statistics worth updating; task statistics:
        # every task starts from the meta-model's, which stay as they are.
        return self.config.norm_policy not in (NormPolicy.BATCH, NormPolicy.TASK)

    # -- adaptation --------------------------------------------------------------------

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Predictor:  # noqa: D102
        training = self.training
        adaptation = self.adapt_parameters(support_x, support_y)
        return adapted_predictor(self.model, adaptation, self.eval_config, training=training)

    def adapt_parameters(self, support_x: Tensor, support_y: Tensor) -> Adaptation:
        """The inner loop of :meth:`adapt`: adapted parameters, optimizer state, buffers."""
        params = {name: p.detach() for name, p in self.model.named_parameters()}
        buffers = {name: b for name, b in self.model.named_buffers()}
        training = self.training
        with torch.enable_grad():
            adaptation = adapt_task(
                self.model,
                params,
                buffers,
                support_x,
                support_y,
                adapt=self.adapt_names,
                optimizer=self.inner_optimizer,
                config=self.eval_config,
                training=training,
                task_loss=self.task_loss,
                fused_norm=True,
            )
        return adaptation


class _MAMLVariant(MAML):
    """MAML with some options fixed: another value for one is an error, not an override.

    Without this, ``fomaml`` with ``first_order: false`` would silently be MAML and
    ``anil`` with ``adapt: all`` would be MAML too. Passing the fixed value itself is
    harmless and accepted (older configs spell it out).
    """

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        clash = sorted(
            k for k in kwargs if k in self.fixed_options and kwargs[k] != self.fixed_options[k]
        )
        if clash:
            name = META_LEARNERS.name_of(type(self))
            fixed = ", ".join(f"{k}={self.fixed_options[k]!r}" for k in clash)
            raise TypeError(
                f"{name} fixes {fixed}; drop the option, or use 'maml' to choose it yourself"
            )
        super().__init__(model, **{**kwargs, **self.fixed_options})


@META_LEARNERS.register("fomaml")
class FOMAML(_MAMLVariant):
    """First-order MAML: MAML without the second-order terms of the meta-gradient."""

    fixed_options: ClassVar[Mapping[str, object]] = {"first_order": True}


@META_LEARNERS.register("metasgd")
class MetaSGD(_MAMLVariant):
    """Meta-SGD: a learnable inner learning rate for every parameter element."""

    fixed_options: ClassVar[Mapping[str, object]] = {"lr_mode": "per_parameter"}


@META_LEARNERS.register("anil")
class ANIL(_MAMLVariant):
    """Almost No Inner Loop: only the head adapts; the body is meta-learned but fixed per task."""

    fixed_options: ClassVar[Mapping[str, object]] = {"adapt": "head"}


def _add_shard_gradients(
    targets: Mapping[str, Tensor], shards: Sequence[Mapping[str, Tensor]], shares: Sequence[float]
) -> None:
    """``target.grad += sum(share * shard.grad)`` over shards, in shard order."""
    for name, target in targets.items():
        total: Tensor | None = None
        for leaves, share in zip(shards, shares, strict=True):
            grad = leaves[name].grad
            if grad is not None:
                total = grad * share if total is None else total + grad * share
        if total is not None:
            target.grad = total if target.grad is None else target.grad + total
