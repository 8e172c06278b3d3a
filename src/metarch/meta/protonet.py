"""Prototypical networks (Snell, Swersky and Zemel, 2017).

An embedding network maps every image to a vector; each class of an episode is represented
by its *prototype*, the mean embedding of its support examples; a query's logits are its
negative squared Euclidean distances to the prototypes. Meta-training minimises the
cross-entropy of these logits on the query set. Adaptation is only the computation of the
prototypes: there are no gradient steps, and nothing in the model depends on the number of
ways, so training may use more ways than testing (the paper trains 60-way on Omniglot and
30-way on mini-ImageNet, and tests 5- and 20-way).

Batch norm uses plain module semantics (no :func:`~metarch.models.norm.batch_norm_context`):
in train mode layers normalise with batch statistics and update their running buffers, in
eval mode they use the running buffers, so evaluation in eval mode is not transductive.
During meta-training each task's support and query pass through the network together, as
in the paper's code, so the batch statistics are those of one episode; ``batch_tasks=True``
embeds all tasks of a meta-batch in one forward instead (faster, but batch statistics then
mix the tasks and running buffers are updated once per meta-batch instead of once per
task). Without batch norm both give the same loss and gradients.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarch.meta.base import META_LEARNERS, MetaLearner, MetaMetrics, Predictor, TaskBatch
from metarch.registry import PositiveFloat

__all__ = ["Distance", "PrototypicalNetwork", "compute_prototypes"]

Distance = Literal["euclidean", "cosine"]


def compute_prototypes(embeddings: Tensor, labels: Tensor) -> Tensor:
    """Mean embedding of every class, for one task or a batch of tasks.

    Args:
        embeddings: Support embeddings ``(..., S, D)``.
        labels: Support labels ``(..., S)`` in ``0..N-1``; every class needs an example.
            Classes may have different numbers of examples.

    Returns:
        Prototypes ``(..., N, D)``; row ``n`` belongs to label ``n``.

    Raises:
        ValueError: If a label in ``0..max(labels)`` has no support example.
    """
    ways = int(labels.max()) + 1
    # (..., S, N) one-hot: sums and counts per class for any number of leading task dims.
    one_hot = F.one_hot(labels, ways).to(embeddings.dtype)
    counts = one_hot.sum(dim=-2)
    if bool((counts == 0).any()):
        raise ValueError(f"every label 0..{ways - 1} needs at least one support example")
    sums = one_hot.transpose(-1, -2) @ embeddings
    return sums / counts.unsqueeze(-1)


@META_LEARNERS.register("protonet")
class PrototypicalNetwork(MetaLearner):
    """Prototypical networks: classify queries by their distance to class prototypes.

    Args:
        model: Embedding network (e.g. ``create_model("conv4")``); outputs are flattened to
            ``(N, D)``.
        distance: ``"euclidean"`` (negative squared Euclidean distance, the paper) or
            ``"cosine"`` (scaled cosine similarity).
        cosine_scale: Initial value of the learnable scale of cosine logits (a cosine in
            [-1, 1] alone is too flat for a softmax); unused for Euclidean logits.
        batch_tasks: Embed all tasks of a meta-batch in one forward (see the module
            docstring) instead of one forward per task.
    """

    needs_classifier_head = False

    def __init__(
        self,
        model: nn.Module,
        *,
        distance: Distance = "euclidean",
        cosine_scale: PositiveFloat = 10.0,
        batch_tasks: bool = False,
    ) -> None:
        super().__init__()
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        self.model = model
        self.distance: Distance = distance
        self.scale = (
            nn.Parameter(torch.tensor(float(cosine_scale))) if distance == "cosine" else None
        )
        self.batch_tasks = batch_tasks

    def embed(self, x: Tensor) -> Tensor:
        """Embeddings ``(N, D)`` of inputs ``(N, ...)``."""
        return torch.flatten(self.model(x), start_dim=1)

    def logits(self, queries: Tensor, prototypes: Tensor) -> Tensor:
        """Logits ``(..., M, N)`` of query embeddings ``(..., M, D)`` against ``(..., N, D)``."""
        if self.scale is not None:
            similarity = F.normalize(queries, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(
                -1, -2
            )
            return self.scale * similarity
        # Explicit differences (as in the paper's code): exact, and never negative.
        differences = queries.unsqueeze(-2) - prototypes.unsqueeze(-3)
        return -differences.square().sum(dim=-1)

    # -- meta-training -----------------------------------------------------------------

    def compute_meta_gradients(self, batch: TaskBatch) -> MetaMetrics:  # noqa: D102
        if self.batch_tasks:
            return self._meta_gradients_batched(batch)
        tasks = batch.num_tasks
        losses, accuracies = [], []
        for t in range(tasks):
            support = batch.support_x[t]
            # Support and query in one forward: batch statistics are those of the episode.
            embeddings = self.embed(torch.cat([support, batch.query_x[t]]))
            prototypes = compute_prototypes(embeddings[: len(support)], batch.support_y[t])
            logits = self.logits(embeddings[len(support) :], prototypes)
            loss = F.cross_entropy(logits, batch.query_y[t])
            # One backward per task keeps one task's graph in memory at a time.
            (loss / tasks).backward()
            losses.append(loss.detach())
            accuracies.append(_accuracy(logits, batch.query_y[t]))
        return MetaMetrics(
            loss=float(torch.stack(losses).mean()),
            accuracy=float(torch.stack(accuracies).mean()),
            tasks=tasks,
        )

    def _meta_gradients_batched(self, batch: TaskBatch) -> MetaMetrics:
        tasks, support_size = batch.support_y.shape
        images = torch.cat([batch.support_x, batch.query_x], dim=1)
        embeddings = self.embed(images.flatten(0, 1)).unflatten(0, (tasks, -1))
        prototypes = compute_prototypes(embeddings[:, :support_size], batch.support_y)
        logits = self.logits(embeddings[:, support_size:], prototypes)  # (T, M, N)
        # Mean over each task's queries, then over tasks: the loss of the per-task loop.
        per_query = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten(), reduction="none")
        losses = per_query.view(tasks, -1).mean(dim=1)
        losses.mean().backward()
        accuracies = (logits.argmax(dim=-1) == batch.query_y).float().mean(dim=1)
        return MetaMetrics(
            loss=float(losses.detach().mean()), accuracy=float(accuracies.mean()), tasks=tasks
        )

    # -- adaptation --------------------------------------------------------------------

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Predictor:
        """Compute the prototypes of the support set; return a predictor of query logits.

        Batch norm follows the current mode (use eval mode to evaluate with running
        statistics). The prototypes are detached.
        """
        with torch.no_grad():
            prototypes = compute_prototypes(self.embed(support_x), support_y)

        def predict(query_x: Tensor) -> Tensor:
            return self.logits(self.embed(query_x), prototypes)

        return predict


def _accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(dim=-1) == labels).float().mean().detach()
