"""MetaNAS (Elsken, Staffler, Metzen and Hutter, CVPR 2020): meta-learned architectures.

The paper: "Meta-Learning of Neural Architectures for Few-Shot Learning".

The meta-model is a continuous relaxation of a cell space (:mod:`metarch.nas.spaces`): its
weights *and* its architecture parameters are meta-learned, and both adapt to each task.
Per task, the inner loop is first-order DARTS: on each support mini-batch an architecture
step, then a weight step, each group with its own optimizer (Adam with ``beta1 = 0`` in the
paper). The softmax temperature of the architecture weights anneals linearly from
``t_max`` to ``t_min`` over the task's architecture steps, so the adapted architecture is
nearly discrete and needs no retraining after it is read off. Operations whose weight is
at most ``skip_below`` are not run; every ``prune_every`` meta-iterations, operations whose
weight at ``t_min`` is below ``prune_below`` leave the meta-architecture for good. For the
first ``warmup_iterations`` meta-iterations only the weights adapt.

The meta-update is any of our gradient-based learners, on the shared core: Reptile (the
paper's choice; task-batched, with its carried inner Adam state), first-order MAML or
second-order MAML (the method is agnostic to it). MetaNAS builds the inner learner with
the DARTS inner optimizer and runs it inside the schedule of the current phase; it does not
reimplement an inner loop.

How the inner loop is laid out on the core: mini-batch ``k`` is two inner steps, ``2k``
(the architecture rule is active, the weights stand still) and ``2k + 1`` (the weight rule
is active). The inner learner runs ``2 * steps`` steps and draws a fresh mini-batch for
each, so the architecture step sees an independent draw of the support set, as the
reference's second pass over its support loader does. Only what moves at a step is
differentiated (:meth:`~metarch.meta.optim.InnerOptimizer.updated`).

Where we differ from the reference implementation (``docs/metanas-reference.md``):

* the architecture gradient is taken on the live network, at the current weights and
  architecture (the reference takes it on a copy frozen at start-up);
* the Reptile meta-update moves weights and architecture (the reference's does nothing
  on torch 2, where ``zero_grad()`` frees gradients);
* mini-batches cycle through permutations of the support set instead of drawing with
  replacement; pruning masks logits to ``-inf`` instead of writing ``-1e9`` into them;
* drop-path is off while adapting to a task outside meta-training, as in the reference.

Evaluation is transductive by default, as the reference's (its batch norm is never in eval
mode): queries are normalised with their own batch statistics. ``transductive=False``
uses the inner learner's policy instead (Reptile: running statistics of the task's own,
updated at every inner step from the meta-model's); with the short adaptation of a scaled
run these statistics still remember their start, and accuracy collapses (measured on a
250-iteration Omniglot run, 20-way 1-shot, 6 episodes: 7.0 % against 36.5 %).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from annotated_types import Interval
from torch import Tensor, nn

from metarch.meta.base import (
    META_LEARNERS,
    ArchitecturePredictor,
    MetaLearner,
    MetaMetrics,
    TaskBatch,
)
from metarch.meta.functional import adapted_predictor
from metarch.meta.maml import MAML
from metarch.meta.optim import grouped_inner_optimizer
from metarch.meta.reptile import AdamStateMode, Reptile
from metarch.models.context import forward_context
from metarch.models.groups import ARCHITECTURE, WEIGHTS, group_of
from metarch.nas.spaces.base import Relaxation, SearchSpace
from metarch.registry import NonNegativeInt, PositiveFloat, PositiveInt

__all__ = ["AdaptedArchitecture", "ArchitectureSchedule", "MetaNAS"]

log = logging.getLogger(__name__)

OuterLearner = Literal["reptile", "fomaml", "maml"]
Threshold = Annotated[float, Interval(ge=0, lt=1)]

#: The reference's inner optimizers: Adam with beta1 = 0 for both groups; coupled weight
#: decay 1e-3 on the architecture. Rates are the Omniglot settings (mini-ImageNet: 0.001).
DEFAULT_INNER_OPTIMIZER: Mapping[str, Mapping[str, Any]] = {
    WEIGHTS: {"name": "adam", "lr": 0.005, "betas": (0.0, 0.999)},
    ARCHITECTURE: {"name": "adam", "lr": 0.005, "betas": (0.0, 0.999), "weight_decay": 1e-3},
}


@dataclass(frozen=True)
class ArchitectureSchedule:
    """Which inner steps adapt the architecture, and the temperature of every step.

    Inner step ``2k`` is the architecture step of mini-batch ``k``, ``2k + 1`` its weight
    step; the query pass after ``S`` mini-batches is step ``2S``.

    Attributes:
        architecture_steps: Mini-batches whose architecture step runs (the first ones; 0
            during the warm-up).
        t_max: Temperature at the first architecture step.
        t_min: Temperature at the last one, kept for the remaining steps and the queries.
    """

    architecture_steps: int
    t_max: float
    t_min: float

    def architecture_active(self, step: int) -> bool:
        """Whether inner step ``step`` is an architecture step."""
        return step % 2 == 0 and step // 2 < self.architecture_steps

    @staticmethod
    def weights_active(step: int) -> bool:
        """Whether inner step ``step`` is a weight step."""
        return step % 2 == 1

    def temperature(self, step: int) -> float:
        """The temperature of inner step ``step`` (``t_max`` without architecture steps)."""
        if self.architecture_steps == 0:
            return self.t_max
        done = min(step // 2, self.architecture_steps - 1)
        fraction = done / (self.architecture_steps - 1) if self.architecture_steps > 1 else 1.0
        return (1.0 - fraction) * self.t_max + fraction * self.t_min


@dataclass(frozen=True)
class AdaptedArchitecture:
    """One task's adaptation: its predictor (naming the architecture) and adapted state.

    Attributes:
        predictor: Query logits, and the adapted architecture's canonical string.
        params: The adapted parameters of the model (weights and architecture), detached.
        buffers: The buffers the predictor uses (the task's own running statistics).
    """

    predictor: ArchitecturePredictor
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]


# The schedule of the inner loop running now; task threads inherit it with their context.
_SCHEDULE: ContextVar[ArchitectureSchedule | None] = ContextVar("metanas_schedule", default=None)


def _architecture_active(step: int) -> bool:
    schedule = _SCHEDULE.get()
    return schedule is not None and schedule.architecture_active(step)


@contextlib.contextmanager
def _scheduled(schedule: ArchitectureSchedule) -> Iterator[None]:
    """Run the enclosed inner loops under ``schedule`` (rules and temperature alike)."""
    token = _SCHEDULE.set(schedule)
    try:
        with forward_context(temperature_schedule=schedule.temperature):
            yield
    finally:
        _SCHEDULE.reset(token)


@META_LEARNERS.register("metanas")
class MetaNAS(MetaLearner):
    """Meta-learn an architecture with its weights; adapt both to every task.

    Args:
        model: A classifier whose backbone is a relaxation of a search space (backbone
            ``metanas-search``).
        meta_learner: The meta-update: ``reptile`` (the paper), ``fomaml`` or ``maml``.
        steps: Support mini-batches per task in meta-training, each an architecture and a
            weight step (the paper: 5).
        eval_steps: Mini-batches per task in :meth:`adapt` (the paper's meta-testing: 100).
        eval_architecture_steps: Of those, how many (the first) adapt the architecture too
            (the paper: 50).
        inner_optimizer: One rule per parameter group (``weights``, ``architecture``), as
            Reptile's grouped ``inner_optimizer``; default: Adam with ``betas (0, 0.999)``,
            rate 0.005, weight decay 1e-3 on the architecture (the paper's Omniglot).
        temperature: ``(t_max, t_min)`` of the linear annealing (the paper: 1.0 and 0.05 on
            Omniglot, 0.1 on mini-ImageNet).
        skip_below: Operations and input pairs of weight at most this are not run during
            meta-training (the paper: 0.01).
        eval_skip_below: The same in :meth:`adapt` (the paper: 0.05).
        warmup_iterations: Meta-iterations in which only the weights adapt (the paper:
            15000 of 30000).
        prune_every: Prune the meta-architecture every this many meta-iterations (the paper:
            2500; 0: never).
        prune_below: Operations whose weight at ``t_min`` is below this are pruned (0.01).
        inner_batch_size: Support examples per mini-batch in meta-training (the paper: 20
            of 15 shots per class; ``None``: the whole support set). Reptile only; MAML
            steps on the whole support set.
        eval_batch_size: The same in :meth:`adapt` (the paper: 10 on Omniglot; 5 or 15 on
            mini-ImageNet).
        adam_state: Reptile's carried inner Adam state (the paper carries it).
        transductive: Adapt and predict with batch statistics (the reference's
            evaluation), also in eval mode; see the module docstring.
        batching: The inner learner's task batching (``auto``, ``loop``, ``batched``).
        task_threads: Task-batched: shards of tasks run by threads of their own.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        meta_learner: OuterLearner = "reptile",
        steps: PositiveInt = 5,
        eval_steps: PositiveInt = 100,
        eval_architecture_steps: NonNegativeInt = 50,
        inner_optimizer: Mapping[str, str | Mapping[str, Any]] = DEFAULT_INNER_OPTIMIZER,
        temperature: tuple[PositiveFloat, PositiveFloat] = (1.0, 0.05),
        skip_below: Threshold = 0.01,
        eval_skip_below: Threshold = 0.05,
        warmup_iterations: NonNegativeInt = 0,
        prune_every: NonNegativeInt = 2500,
        prune_below: Threshold = 0.01,
        inner_batch_size: PositiveInt | None = 20,
        eval_batch_size: PositiveInt | None = 10,
        adam_state: AdamStateMode = "carried",
        batching: Literal["auto", "loop", "batched"] = "auto",
        task_threads: PositiveInt | None = 1,
        transductive: bool = True,
    ) -> None:
        super().__init__()
        if meta_learner not in ("reptile", "fomaml", "maml"):
            raise ValueError(
                f"meta_learner must be 'reptile', 'fomaml' or 'maml', got {meta_learner!r}"
            )
        if eval_architecture_steps > eval_steps:
            raise ValueError(
                f"eval_architecture_steps ({eval_architecture_steps}) cannot exceed eval_steps "
                f"({eval_steps})"
            )
        t_max, t_min = float(temperature[0]), float(temperature[1])
        if not 0 < t_min <= t_max:
            raise ValueError(
                f"temperature must be (t_max, t_min) with t_max >= t_min > 0, got {temperature}"
            )
        relaxations = [m for m in model.modules() if isinstance(m, Relaxation)]
        if len(relaxations) != 1:
            raise ValueError(
                "metanas needs a model with one continuous relaxation of a search space "
                f"(backbone 'metanas-search'); this model has {len(relaxations)}"
            )
        # Kept outside the module tree: it is part of the model already.
        self._relaxation = (relaxations[0],)
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        groups = {name: group_of(model, name) for name in params}
        if ARCHITECTURE not in groups.values():
            raise ValueError("metanas needs architecture parameters (group 'architecture')")
        rule = grouped_inner_optimizer(
            inner_optimizer,
            groups,
            params,
            lr=0.005,
            steps=2 * max(steps, eval_steps),
            active={
                WEIGHTS: ArchitectureSchedule.weights_active,
                ARCHITECTURE: _architecture_active,
            },
        )
        self.meta_learner = meta_learner
        self.steps = steps
        self.eval_steps = eval_steps
        self.eval_architecture_steps = eval_architecture_steps
        self.temperature = (t_max, t_min)
        self.skip_below = float(skip_below)
        self.eval_skip_below = float(eval_skip_below)
        self.warmup_iterations = warmup_iterations
        self.prune_every = prune_every
        self.prune_below = float(prune_below)
        self.transductive = transductive
        self.learner: Reptile | MAML
        if meta_learner == "reptile":
            self.learner = Reptile(
                model,
                steps=2 * steps,
                eval_steps=2 * eval_steps,
                inner_optimizer=rule,
                inner_on="support",
                inner_batch_size=inner_batch_size,
                eval_batch_size=eval_batch_size,
                adam_state=adam_state,
                batching=batching,
                task_threads=task_threads,
            )
        else:
            self.learner = MAML(
                model,
                steps=2 * steps,
                eval_steps=2 * eval_steps,
                first_order=meta_learner == "fomaml",
                inner_optimizer=rule,
                batching=batching,
                task_threads=task_threads,
            )
        # Meta-iterations done: decides the warm-up and when to prune; saved with the run.
        self.register_buffer("meta_iterations", torch.zeros((), dtype=torch.int64))

    @property
    def relaxation(self) -> Relaxation:
        """The model's relaxed search space (whose architecture parameters adapt)."""
        return self._relaxation[0]

    @property
    def model(self) -> nn.Module:
        """The meta-model (the relaxed network with its head)."""
        return self.learner.model

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:  # noqa: D102
        return self.learner.parameter_groups()

    # -- schedules ---------------------------------------------------------------------

    def training_schedule(self, iteration: int) -> ArchitectureSchedule:
        """The inner loop's schedule at meta-iteration ``iteration`` (0-based)."""
        warming_up = iteration < self.warmup_iterations
        return ArchitectureSchedule(0 if warming_up else self.steps, *self.temperature)

    def evaluation_schedule(self) -> ArchitectureSchedule:
        """The schedule of :meth:`adapt`."""
        return ArchitectureSchedule(self.eval_architecture_steps, *self.temperature)

    @contextlib.contextmanager
    def _skipping(self, threshold: float, drop_path: float | None = None) -> Iterator[None]:
        """Run with the relaxation's skip threshold (and drop-path, if given) set."""
        relaxation = self.relaxation
        previous = relaxation.skip_below, relaxation.drop_path
        relaxation.skip_below = threshold
        if drop_path is not None:
            relaxation.drop_path = drop_path
        try:
            yield
        finally:
            relaxation.skip_below, relaxation.drop_path = previous

    @contextlib.contextmanager
    def _adapting(self) -> Iterator[bool]:
        """Adaptation outside meta-training: no drop-path; batch statistics if transductive.

        Yields the mode (training) the inner learner adapts and predicts in.
        """
        was_training = self.learner.training
        mode = was_training or self.transductive
        self.learner.train(mode)
        try:
            with self._skipping(self.eval_skip_below, drop_path=0.0):
                yield mode
        finally:
            self.learner.train(was_training)

    # -- meta-training -----------------------------------------------------------------

    def compute_meta_gradients(self, batch: TaskBatch) -> MetaMetrics:
        """Prune when due; the inner learner's meta-gradients under this iteration's schedule."""
        counter = self.get_buffer("meta_iterations")
        iteration = int(counter)
        if self.prune_every and iteration and iteration % self.prune_every == 0:
            removed = self.relaxation.prune(self.prune_below, self.temperature[1])
            log.info("meta-iteration %d: pruned %d operations", iteration, removed)
        with _scheduled(self.training_schedule(iteration)), self._skipping(self.skip_below):
            metrics = self.learner.compute_meta_gradients(batch)
        counter += 1
        return metrics

    # -- adaptation --------------------------------------------------------------------

    def adapt(self, support_x: Tensor, support_y: Tensor) -> ArchitecturePredictor:
        """Adapt weights and architecture to one support set.

        Returns:
            The predictor (queries run at the final temperature and the evaluation
            threshold), naming the adapted architecture.
        """
        return self.adapt_architecture(support_x, support_y).predictor

    def adapt_architecture(self, support_x: Tensor, support_y: Tensor) -> AdaptedArchitecture:
        """:meth:`adapt`, with the adapted parameters and buffers (to save or export)."""
        schedule = self.evaluation_schedule()
        with _scheduled(schedule), self._adapting() as training:
            adaptation = self.learner.adapt_parameters(support_x, support_y)
        predict = adapted_predictor(
            self.model, adaptation, self.learner.eval_config, training=training
        )

        def predictor(query_x: Tensor) -> Tensor:
            with _scheduled(schedule), self._adapting():
                return predict(query_x)

        params = {name: value.detach() for name, value in adaptation.params.items()}
        architecture = self.adapted_architecture(params)
        return AdaptedArchitecture(
            ArchitecturePredictor(predictor, architecture), params, dict(adaptation.buffers)
        )

    def adapted_architecture(self, params: Mapping[str, Tensor]) -> str:
        """The canonical string of the architecture that adapted ``params`` choose."""
        prefix = self._relaxation_prefix()
        own = {
            name.removeprefix(prefix): value
            for name, value in params.items()
            if name.startswith(prefix)
        }
        return self.space().encode(self.relaxation.genotype(own))

    def meta_architecture(self) -> str:
        """The canonical string of the meta-architecture (the meta-parameters' choice)."""
        return self.space().encode(self.relaxation.genotype())

    def space(self, input_shape: tuple[int, int, int] | None = None) -> SearchSpace[Any]:
        """The search space the relaxation relaxes (for images of ``input_shape``)."""
        return self.relaxation.search_space(input_shape)

    def _relaxation_prefix(self) -> str:
        for name, module in self.model.named_modules():
            if module is self.relaxation:
                return f"{name}." if name else ""
        raise AssertionError("the relaxation is part of the model")
