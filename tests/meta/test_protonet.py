"""Prototypical networks: prototypes and logits by hand, any way, training, batch norm."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from metarch.data.episodes import EpisodeBatch
from metarch.meta import META_LEARNERS, PrototypicalNetwork, compute_prototypes, create_meta_learner
from metarch.models import create_model

DTYPE = torch.float64


def episode_batch(
    support: Tensor, support_labels: Tensor, query: Tensor, query_labels: Tensor
) -> EpisodeBatch:
    tasks = support.shape[0]
    zeros = torch.zeros(tasks, 1, dtype=torch.long)
    return EpisodeBatch(
        support_images=support,
        support_labels=support_labels,
        query_images=query,
        query_labels=query_labels,
        entries=zeros,
        support_image_ids=zeros,
        query_image_ids=zeros,
        task_indices=torch.arange(tasks),
    )


def cluster_batch(
    tasks: int,
    ways: int,
    shots: int,
    queries: int,
    *,
    dim: int = 8,
    noise: float = 0.3,
    seed: int = 0,
) -> EpisodeBatch:
    """Vectors around random class centres (one set of centres per task), class-major."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(tasks, ways, 1, dim, generator=generator, dtype=DTYPE)

    def draw(per_class: int) -> tuple[Tensor, Tensor]:
        points = centres + noise * torch.randn(
            tasks, ways, per_class, dim, generator=generator, dtype=DTYPE
        )
        labels = torch.arange(ways).repeat_interleave(per_class).expand(tasks, -1)
        return points.flatten(1, 2), labels.contiguous()

    return episode_batch(*draw(shots), *draw(queries))


def image_batch(tasks: int, ways: int, shots: int, queries: int, seed: int = 0) -> EpisodeBatch:
    """Random 28x28 one-channel images with episode-shaped labels."""
    generator = torch.Generator().manual_seed(seed)

    def draw(per_class: int) -> tuple[Tensor, Tensor]:
        images = torch.rand(tasks, ways * per_class, 1, 28, 28, generator=generator)
        labels = torch.arange(ways).repeat_interleave(per_class).expand(tasks, -1)
        return images, labels.contiguous()

    return episode_batch(*draw(shots), *draw(queries))


def identity_linear(dim: int = 2) -> nn.Linear:
    """An embedding that is the identity but has parameters (so backward works)."""
    layer = nn.Linear(dim, dim, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim, dtype=DTYPE))
    return layer


def mlp(dim: int = 8, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, 4)).double()


# -- prototypes and logits by hand ----------------------------------------------------------

# Class 0 has two shots at (0, 0) and (2, 0): prototype (1, 0). Class 1 has one at (0, 4).
SUPPORT = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]], dtype=DTYPE)
SUPPORT_LABELS = torch.tensor([0, 0, 1])
QUERY = torch.tensor([[1.0, 1.0], [0.0, 3.0]], dtype=DTYPE)
QUERY_LABELS = torch.tensor([0, 1])


def test_prototypes_are_class_means_in_label_order() -> None:
    prototypes = compute_prototypes(SUPPORT, SUPPORT_LABELS)
    torch.testing.assert_close(prototypes, torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=DTYPE))
    # Batched over tasks, and in any support order.
    batched = compute_prototypes(
        torch.stack([SUPPORT, SUPPORT.flip(0)]),
        torch.stack([SUPPORT_LABELS, SUPPORT_LABELS.flip(0)]),
    )
    torch.testing.assert_close(batched, torch.stack([prototypes, prototypes]))
    with pytest.raises(ValueError, match="at least one support example"):
        compute_prototypes(SUPPORT, torch.tensor([0, 0, 2]))


def test_euclidean_logits_and_loss_match_a_hand_computation() -> None:
    learner = PrototypicalNetwork(identity_linear())
    logits = learner.adapt(SUPPORT, SUPPORT_LABELS)(QUERY)
    # (1, 1): distances 0 + 1 = 1 and 1 + 9 = 10; (0, 3): 1 + 9 = 10 and 0 + 1 = 1.
    expected = -torch.tensor([[1.0, 10.0], [10.0, 1.0]], dtype=DTYPE)
    torch.testing.assert_close(logits, expected)
    metrics = learner.compute_meta_gradients(
        episode_batch(SUPPORT[None], SUPPORT_LABELS[None], QUERY[None], QUERY_LABELS[None])
    )
    # Both queries: -log softmax(-1, -10)[0] = log(1 + e^-9).
    assert metrics.loss == pytest.approx(math.log1p(math.exp(-9.0)))
    assert metrics.accuracy == 1.0 and metrics.tasks == 1


def test_cosine_logits_use_a_learnable_scale() -> None:
    learner = create_meta_learner("protonet", identity_linear(), distance="cosine", cosine_scale=5)
    assert isinstance(learner, PrototypicalNetwork) and learner.scale is not None
    logits = learner.adapt(SUPPORT, SUPPORT_LABELS)(torch.tensor([[3.0, 4.0]], dtype=DTYPE))
    # cos((3, 4), (1, 0)) = 0.6 and cos((3, 4), (0, 4)) = 0.8.
    torch.testing.assert_close(logits, torch.tensor([[3.0, 4.0]], dtype=DTYPE))
    learner.compute_meta_gradients(
        episode_batch(SUPPORT[None], SUPPORT_LABELS[None], QUERY[None], QUERY_LABELS[None])
    )
    assert learner.scale.grad is not None and learner.scale in list(learner.meta_parameters())


# -- ways, training, batching -----------------------------------------------------------------


def test_train_20_way_then_evaluate_5_way() -> None:
    torch.manual_seed(0)
    learner = create_meta_learner("protonet", create_model("conv4", hidden=8))
    metrics = learner.compute_meta_gradients(image_batch(tasks=2, ways=20, shots=1, queries=2))
    assert metrics.tasks == 2 and math.isfinite(metrics.loss)
    assert all(p.grad is not None for p in learner.meta_parameters())
    test = image_batch(tasks=3, ways=5, shots=2, queries=3, seed=1)
    learner.eval()
    logits = learner.adapt(test.support_images[0], test.support_labels[0])(test.query_images[0])
    assert logits.shape == (15, 5)
    accuracies = learner.evaluate(test)
    assert accuracies.shape == (3,)
    assert bool(((accuracies >= 0) & (accuracies <= 1)).all())


def test_a_few_sgd_steps_reduce_the_loss_on_a_fixed_batch() -> None:
    learner = PrototypicalNetwork(mlp())
    batch = cluster_batch(tasks=4, ways=5, shots=2, queries=3, noise=0.5)
    optimizer = torch.optim.SGD(learner.meta_parameters(), lr=0.05)
    losses = [learner.meta_train_step(batch, optimizer).loss for _ in range(6)]
    assert losses[1] < losses[0]
    assert losses[-1] < 0.9 * losses[0]


def test_per_task_and_batched_forward_agree_without_batch_norm() -> None:
    batch = cluster_batch(tasks=3, ways=4, shots=2, queries=3)
    results = []
    for batch_tasks in (False, True):
        learner = PrototypicalNetwork(mlp(), batch_tasks=batch_tasks)
        metrics = learner.compute_meta_gradients(batch)
        grads = [p.grad.clone() for p in learner.parameters() if p.grad is not None]
        results.append((metrics, grads))
    (loop, loop_grads), (batched, batched_grads) = results
    assert loop.loss == pytest.approx(batched.loss, rel=1e-12)
    assert loop.accuracy == pytest.approx(batched.accuracy)
    assert len(loop_grads) == len(batched_grads) == 4
    for a, b in zip(loop_grads, batched_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_batch_norm_statistics_differ_between_per_task_and_batched_forward() -> None:
    # With batch norm in train mode the two forwards normalise with different statistics.
    batch = image_batch(tasks=2, ways=3, shots=1, queries=2)
    losses = []
    for batch_tasks in (False, True):
        torch.manual_seed(0)
        learner = PrototypicalNetwork(create_model("conv4", hidden=8), batch_tasks=batch_tasks)
        losses.append(learner.compute_meta_gradients(batch).loss)
    assert losses[0] != pytest.approx(losses[1], rel=1e-6)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_well_separated_clusters_are_classified_perfectly(distance: str) -> None:
    # Identity embedding; class centres 10 apart along different axes.
    ways, dim = 5, 8
    generator = torch.Generator().manual_seed(3)
    centres = 10.0 * torch.eye(dim, dtype=DTYPE)[:ways]

    def draw(per_class: int) -> tuple[Tensor, Tensor]:
        noise = 0.5 * torch.randn(2, ways, per_class, dim, generator=generator, dtype=DTYPE)
        points = (centres[None, :, None, :] + noise).flatten(1, 2)
        labels = torch.arange(ways).repeat_interleave(per_class).expand(2, -1).contiguous()
        return points, labels

    learner = PrototypicalNetwork(nn.Flatten(), distance=distance)  # type: ignore[arg-type]
    accuracies = learner.evaluate(episode_batch(*draw(3), *draw(10)))
    torch.testing.assert_close(accuracies, torch.ones(2))


# -- batch norm semantics ------------------------------------------------------------------


def test_eval_mode_uses_running_statistics_and_changes_nothing() -> None:
    torch.manual_seed(0)
    learner = PrototypicalNetwork(create_model("conv4", hidden=8))
    batch = image_batch(tasks=2, ways=3, shots=2, queries=2)
    learner.compute_meta_gradients(batch)  # train mode: running statistics move
    buffers = {name: b.clone() for name, b in learner.named_buffers()}
    assert any(not torch.equal(b, torch.zeros_like(b)) for n, b in buffers.items() if "mean" in n)
    learner.eval()
    predictor = learner.adapt(batch.support_images[0], batch.support_labels[0])
    with torch.no_grad():
        together = predictor(batch.query_images[0])
        alone = predictor(batch.query_images[0][:1])
    # Not transductive: a query's logits do not depend on the other queries.
    torch.testing.assert_close(alone, together[:1])
    for name, value in learner.named_buffers():
        assert torch.equal(value, buffers[name]), name


def test_registered_and_validated() -> None:
    assert META_LEARNERS.get("protonet") is PrototypicalNetwork
    learner = create_meta_learner("protonet", mlp(), batch_tasks=True)
    assert isinstance(learner, PrototypicalNetwork)
    assert learner.batch_tasks and learner.distance == "euclidean" and learner.scale is None
    with pytest.raises(ValueError, match="distance"):
        PrototypicalNetwork(mlp(), distance="manhattan")  # type: ignore[arg-type]
