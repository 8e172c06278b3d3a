"""Test-time augmentation: adapt to, and predict from, distorted copies of an episode.

With one example per class, a meta-learner's view of a class is a single drawing. Small
random affine distortions of it (the kind a backbone meta-trained with augmentation has
learnt to ignore) give it several views at almost no risk:

* every support image is added ``copies`` times more, distorted, with its label, so
  prototypical networks average the embeddings of ``copies + 1`` views into each
  prototype and MAML-like learners adapt on a larger support set;
* every query is classified ``copies + 1`` times (the original and distorted copies) and
  the log-probabilities are averaged. For prototypical networks with Euclidean logits this
  ranks classes exactly as the distance to the mean embedding of the query's views.

It works with any :class:`~metarch.meta.base.MetaLearner` (it only calls ``adapt``), costs
``copies + 1`` times the evaluation, and is deterministic: the distortions of a task are
drawn from the counter-based generator (:mod:`metarch.data.rng`) keyed by the task, so a
task's result does not depend on which other tasks share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metarch.data.augment import AffineAugmentation
from metarch.data.rng import purpose_key, task_keys, uniform

if TYPE_CHECKING:
    from metarch.meta.base import MetaLearner, Predictor

__all__ = ["TestTimeAugmentation", "adapt_task_with"]

_SUPPORT_STREAM = 0
_QUERY_STREAM = 1
_TRAINING_RANGES = AffineAugmentation()


@dataclass(frozen=True)
class TestTimeAugmentation:
    """Adapt and predict with ``copies`` distorted copies of every image besides the original.

    Attributes:
        copies: Distorted copies per image (0 turns test-time augmentation off).
        augmentation: The distortion ranges (default: training augmentation's default
            ranges, the best of strengths 0.25, 0.5 and 1 on Omniglot validation episodes;
            see :meth:`with_strength`).
        seed: Seed of the distortions (task ``i`` of a stream gets key ``(seed, i)`` of the
            ``test_time_augmentation`` purpose, never an episode sampler's draws).
    """

    __test__ = False  # a library class, not a pytest test class

    copies: int
    augmentation: AffineAugmentation = field(
        default_factory=lambda: TestTimeAugmentation.ranges(1.0)
    )
    seed: int = 0

    def __post_init__(self) -> None:
        if self.copies < 0:
            raise ValueError(f"test-time augmentation needs copies >= 0, got {self.copies}")

    @staticmethod
    def ranges(strength: float) -> AffineAugmentation:
        """Training augmentation's default ranges scaled by ``strength`` (0 < strength <= 1)."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"test-time augmentation strength must be in (0, 1], got {strength}")
        return AffineAugmentation(
            rotation=_TRAINING_RANGES.rotation * strength,
            shear=_TRAINING_RANGES.shear * strength,
            scale=_TRAINING_RANGES.scale * strength,
            translate=_TRAINING_RANGES.translate * strength,
        )

    @classmethod
    def with_strength(
        cls, copies: int, strength: float = 1.0, seed: int = 0
    ) -> TestTimeAugmentation:
        """``copies`` copies distorted within ``strength`` times training's default ranges."""
        return cls(copies=copies, augmentation=cls.ranges(strength), seed=seed)

    def key(self, task_index: int) -> np.ndarray:
        """The random key of task ``task_index`` of a stream."""
        key = purpose_key(self.seed, "test_time_augmentation")
        return task_keys(key, np.asarray([task_index], dtype=np.int64))

    def _distorted_copies(self, images: Tensor, key: np.ndarray, stream: int) -> Tensor:
        """``copies`` distorted copies of ``images`` ``(M, C, H, W)``, copy-major."""
        count = self.copies * images.shape[0]
        draws = uniform(key, stream, (count, self.augmentation.draws_per_image))
        repeated = images.repeat(self.copies, *([1] * (images.dim() - 1)))
        return self.augmentation(repeated, draws.reshape(count, -1))

    def adapt(
        self, learner: MetaLearner, support_x: Tensor, support_y: Tensor, key: np.ndarray
    ) -> Predictor:
        """Adapt ``learner`` to the augmented support set; return the averaging predictor.

        Args:
            learner: Any meta-learner.
            support_x: Support images ``(S, C, H, W)``.
            support_y: Support labels ``(S,)``.
            key: The task's random key (:meth:`key`).

        Returns:
            A predictor of query log-probabilities ``(M, ways)``, averaged over the views.
        """
        if self.copies == 0:
            return learner.adapt(support_x, support_y)
        with torch.no_grad():
            extra = self._distorted_copies(support_x, key, _SUPPORT_STREAM)
        predict = learner.adapt(torch.cat([support_x, extra]), support_y.repeat(self.copies + 1))

        def predict_views(query_x: Tensor) -> Tensor:
            with torch.no_grad():
                views = torch.cat([query_x, self._distorted_copies(query_x, key, _QUERY_STREAM)])
            log_probabilities = F.log_softmax(predict(views), dim=-1)
            return log_probabilities.view(self.copies + 1, query_x.shape[0], -1).mean(dim=0)

        return predict_views


def adapt_task_with(
    learner: MetaLearner,
    support_x: Tensor,
    support_y: Tensor,
    augmentation: TestTimeAugmentation | None,
    task_index: int,
) -> Predictor:
    """``learner.adapt``, or its test-time-augmented form keyed by ``task_index``."""
    if augmentation is None:
        return learner.adapt(support_x, support_y)
    return augmentation.adapt(learner, support_x, support_y, augmentation.key(task_index))
