"""The comparison H-Meta-NAS must beat: the same supernet without meta-learning.

As a once-for-all user would: the supernet is pre-trained by plain supervised learning on
the training classes (cross-entropy over all of them, through a head of its own), on the
same sandwich of sub-networks per batch as H-Meta-NAS; a task is then solved by
fine-tuning the chosen sub-network on its support set: a new head, zero at first, and the
whole sub-network trained by ``eval_steps`` steps of gradient descent at ``inner_lr``
(:meth:`HMetaNAS.adapt`'s inner loop, so search, adaptation and export are shared).

The training batches are the engine's episodes: each episode's support and query images
are labelled with their class in the training pool (``EpisodeBatch.entries``), so
pre-training sees the same images as meta-training does.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarch.data.episodes import EpisodeBatch
from metarch.meta.base import META_LEARNERS, MetaMetrics, TaskBatch
from metarch.nas.methods.hmetanas import HMetaNAS
from metarch.nas.spaces.supernet import SubnetLinear, add_subnet_gradients, extract_subnet
from metarch.registry import NonNegativeInt, PositiveFloat, PositiveInt

__all__ = ["SupernetPretraining"]


@META_LEARNERS.register("supernet-pretraining")
class SupernetPretraining(HMetaNAS):
    """Supervised pre-training of a weight-sharing supernet, fine-tuning per task.

    Args:
        model: A classifier whose backbone is a weight-sharing supernet.
        classes: Classes of the training pool (the pre-training head's outputs; rotated
            copies of Omniglot's classes count as classes of their own).
        inner_lr: Fine-tuning's learning rate.
        eval_steps: Fine-tuning steps on a task's support set.
        sandwich: Sub-networks per batch (the supernet's anchors first, then random).
        seed: Seed of the random sub-networks.
        batching: Task batching of fine-tuning.
        task_threads: Task-batched: shards of tasks run by threads of their own.
        eval_architecture: The sub-network tasks are fine-tuned on (default: the largest).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        classes: PositiveInt,
        inner_lr: PositiveFloat = 0.01,
        eval_steps: NonNegativeInt = 10,
        sandwich: PositiveInt = 4,
        seed: int = 0,
        batching: Literal["auto", "loop", "batched"] = "auto",
        task_threads: PositiveInt | None = 1,
        eval_architecture: str | None = None,
    ) -> None:
        super().__init__(
            model,
            meta_learner="fomaml",
            inner_lr=inner_lr,
            steps=0,
            eval_steps=eval_steps,
            sandwich=sandwich,
            seed=seed,
            batching=batching,
            task_threads=task_threads,
            eval_architecture=eval_architecture,
        )
        self.classes = classes
        self.pretraining_head = SubnetLinear(self.supernet.out_features, classes)
        head = self.model.head
        assert isinstance(head, nn.Linear)
        with torch.no_grad():  # fine-tuning starts every task from a new, zero head
            head.weight.zero_()
            head.bias.zero_()
        head.requires_grad_(False)

    def subnet_gradients(self, architecture: Any, batch: TaskBatch, weight: float) -> MetaMetrics:
        """Cross-entropy over the training classes of the sub-network on its tasks' images."""
        if not isinstance(batch, EpisodeBatch):
            raise TypeError("supernet-pretraining needs episodes that name their classes")
        images, labels = self._labelled(batch)
        subnet = extract_subnet(self.model, architecture)
        logits = self.pretraining_head(subnet.get_submodule("backbone")(images))
        loss = F.cross_entropy(logits, labels)
        (weight * loss).backward()
        add_subnet_gradients(self.model, subnet, architecture)
        accuracy = float((logits.argmax(-1) == labels).float().mean())
        return MetaMetrics(loss=float(loss.detach()), accuracy=accuracy, tasks=batch.num_tasks)

    def _labelled(self, episodes: EpisodeBatch) -> tuple[Tensor, Tensor]:
        """Every image of the episodes and its class in the training pool."""
        images = torch.cat(
            [episodes.support_images.flatten(0, 1), episodes.query_images.flatten(0, 1)]
        )
        labels = torch.cat(
            [
                episodes.entries.gather(1, episodes.support_labels).flatten(),
                episodes.entries.gather(1, episodes.query_labels).flatten(),
            ]
        )
        if int(labels.max()) >= self.classes:
            raise ValueError(
                f"the training pool has class {int(labels.max())}, but method.options.classes "
                f"is {self.classes}; set it to the number of training classes (with rotations)"
            )
        return images, labels
