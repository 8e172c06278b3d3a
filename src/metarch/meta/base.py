"""The interface every meta-learner implements, and the registry that finds them by name.

A meta-learner owns a model and its meta-parameters and does two things:

* :meth:`MetaLearner.compute_meta_gradients` — given a batch of episodes, accumulate the
  meta-gradient (averaged over the batch's tasks) into ``.grad`` of its meta-parameters.
  An outer optimizer then steps; a distributed engine can all-reduce the gradients first.
* :meth:`MetaLearner.adapt` — given one support set, return a predictor for queries.

To add a method: subclass :class:`MetaLearner` in its own module under ``metarch/meta``,
decorate it with ``@META_LEARNERS.register("name")`` and import the module in
``metarch/meta/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from metarch.data.episodes import EpisodeBatch
from metarch.meta.test_time import adapt_task_with
from metarch.models.groups import WEIGHTS, group_of
from metarch.registry import Registry

if TYPE_CHECKING:
    from metarch.meta.test_time import TestTimeAugmentation

__all__ = [
    "META_LEARNERS",
    "ArchitecturePredictor",
    "MetaLearner",
    "MetaMetrics",
    "Predictor",
    "create_meta_learner",
]

Predictor = Callable[[Tensor], Tensor]
"""Maps query inputs ``(M, ...)`` of one task to logits ``(M, ways)``."""


@dataclass(frozen=True)
class ArchitecturePredictor:
    """A predictor that also names the architecture the task adapted to (NAS learners).

    Attributes:
        predict: Query inputs to logits.
        architecture: The adapted architecture's canonical string in its search space.
    """

    predict: Predictor
    architecture: str

    def __call__(self, query_x: Tensor) -> Tensor:
        """Logits of ``query_x``."""
        return self.predict(query_x)


@runtime_checkable
class TaskBatch(Protocol):
    """Any batch of ``T`` tasks with support and query sets stacked along dimension 0.

    :class:`~metarch.data.episodes.EpisodeBatch` (classification episodes) and
    :class:`~metarch.data.sinusoid.SinusoidBatch` (regression) both are.
    """

    @property
    def support_x(self) -> Tensor:
        """Support inputs ``(T, N_s, ...)``."""

    @property
    def support_y(self) -> Tensor:
        """Support targets ``(T, N_s, ...)``."""

    @property
    def query_x(self) -> Tensor:
        """Query inputs ``(T, N_q, ...)``."""

    @property
    def query_y(self) -> Tensor:
        """Query targets ``(T, N_q, ...)``."""

    @property
    def num_tasks(self) -> int:
        """``T``."""


@dataclass(frozen=True)
class MetaMetrics:
    """What one meta-gradient computation measured.

    Attributes:
        loss: Mean query loss over the tasks.
        accuracy: Mean query score over the tasks (after adaptation): the accuracy in
            [0, 1] for classification, minus the mean squared error for regression.
        tasks: Number of tasks.
    """

    loss: float
    accuracy: float
    tasks: int


class MetaLearner(nn.Module, ABC):
    """Base class of all meta-learners (optimisation-based and metric-based)."""

    #: Whether the learner needs a classifier with a ``ways``-output head (MAML family) or
    #: works on embeddings directly (metric-based learners).
    needs_classifier_head: bool = True
    #: The name it is registered under in :data:`META_LEARNERS` (stamped by the registry).
    registered_name: ClassVar[str] = ""
    #: Options a variant fixes (``fomaml``: ``first_order=True``); configs may not set them
    #: to anything else.
    fixed_options: ClassVar[Mapping[str, object]] = {}

    def meta_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the outer optimizer updates (all parameters by default)."""
        return self.parameters()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The meta-parameters by group; a config may give each its own outer settings.

        See ``optimizer.groups`` in the config. Groups: the model's own (``weights``,
        ``architecture``; see :mod:`metarch.models.groups`), ``inner_optimizer`` for
        learned inner-loop hyper-parameters (Meta-SGD's rates), and ``weights`` for
        anything else the learner owns.
        """
        model = getattr(self, "model", None)
        groups: dict[str, list[nn.Parameter]] = {}
        meta = {id(p) for p in self.meta_parameters()}
        for name, parameter in self.named_parameters():
            if id(parameter) not in meta:
                continue
            if isinstance(model, nn.Module) and name.startswith("model."):
                group = group_of(model, name.removeprefix("model."))
            elif name.startswith("inner_optimizer."):
                group = "inner_optimizer"
            else:
                group = WEIGHTS
            groups.setdefault(group, []).append(parameter)
        return groups

    @abstractmethod
    def compute_meta_gradients(self, batch: TaskBatch) -> MetaMetrics:
        """Add the task-averaged meta-gradient of ``batch`` to ``.grad`` of the meta-parameters."""

    @abstractmethod
    def adapt(self, support_x: Tensor, support_y: Tensor) -> Predictor:
        """Adapt to one task's support set; return a predictor of query logits."""

    def meta_train_step(self, batch: TaskBatch, optimizer: torch.optim.Optimizer) -> MetaMetrics:
        """One outer step: zero gradients, compute meta-gradients, step the optimizer."""
        optimizer.zero_grad(set_to_none=True)
        metrics = self.compute_meta_gradients(batch)
        optimizer.step()
        return metrics

    def evaluate(
        self,
        batch: EpisodeBatch,
        augmentation: TestTimeAugmentation | None = None,
        architectures: list[str] | None = None,
    ) -> Tensor:
        """Query accuracy of every task of ``batch`` after adapting to its support set.

        Args:
            batch: Episodes.
            augmentation: Test-time augmentation, keyed by each task's stream index.
            architectures: Where to append the architecture each task adapted to, for
                learners whose predictors name one (:class:`ArchitecturePredictor`).

        Returns:
            Accuracies in [0, 1], shape ``(T,)``.
        """
        accuracies = []
        for t in range(batch.num_tasks):
            predictor = adapt_task_with(
                self,
                batch.support_images[t],
                batch.support_labels[t],
                augmentation,
                int(batch.task_indices[t]),
            )
            if architectures is not None and isinstance(predictor, ArchitecturePredictor):
                architectures.append(predictor.architecture)
            ways = int(batch.support_labels[t].max()) + 1
            with torch.no_grad():
                # A head trained for more ways than the episode has: score its first ways.
                logits = predictor(batch.query_images[t])[:, :ways]
            accuracies.append((logits.argmax(-1) == batch.query_labels[t]).float().mean())
        return torch.stack(accuracies)


META_LEARNERS: Registry[type[MetaLearner]] = Registry("meta-learner")


def create_meta_learner(name: str, model: nn.Module, **kwargs: Any) -> MetaLearner:
    """Build the meta-learner registered as ``name`` around ``model``."""
    return META_LEARNERS.get(name)(model, **kwargs)
