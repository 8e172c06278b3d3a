"""Test-time augmentation: what prototypes and predictions it averages, determinism, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metarch.data.rng import uniform
from metarch.meta import MAML, PrototypicalNetwork, TestTimeAugmentation, compute_prototypes
from metarch.models import create_model
from tests.meta.helpers import make_batch, tiny_classifier


def protonet() -> PrototypicalNetwork:
    torch.manual_seed(0)
    learner = PrototypicalNetwork(create_model("conv4", hidden=8)).double()
    learner.eval()
    return learner


def test_no_copies_is_plain_adaptation() -> None:
    learner, batch = protonet(), make_batch(tasks=2, size=28)
    augmentation = TestTimeAugmentation(copies=0)
    assert torch.equal(learner.evaluate(batch, augmentation), learner.evaluate(batch))
    support, labels, query = batch.support_images[0], batch.support_labels[0], batch.query_images[0]
    plain = learner.adapt(support, labels)(query)
    assert torch.equal(
        augmentation.adapt(learner, support, labels, augmentation.key(0))(query), plain
    )


def test_protonet_averages_the_embeddings_of_every_view() -> None:
    learner, batch = protonet(), make_batch(tasks=1, ways=3, shots=2, queries=3, size=28)
    augmentation = TestTimeAugmentation.with_strength(copies=3, strength=1.0, seed=5)
    support, labels, query = batch.support_images[0], batch.support_labels[0], batch.query_images[0]
    key = augmentation.key(7)
    predicted = augmentation.adapt(learner, support, labels, key)(query)

    def views(images: torch.Tensor, stream: int) -> torch.Tensor:
        # The documented draws: 6 uniforms per distorted image, copy-major, stream 0 / 1.
        count = 3 * images.shape[0]
        draws = uniform(key, stream, (count, 6)).reshape(count, 6)
        distorted = augmentation.augmentation(images.repeat(3, 1, 1, 1), draws)
        return torch.cat([images, distorted]).view(4, *images.shape)

    with torch.no_grad():
        support_views, query_views = views(support, 0), views(query, 1)
        assert not torch.allclose(support_views[0], support_views[1])  # distortions happen
        prototypes = compute_prototypes(
            learner.embed(support_views.flatten(0, 1)), labels.repeat(4)
        )
        mean_query = learner.embed(query_views.flatten(0, 1)).view(4, query.shape[0], -1).mean(0)
        expected = torch.log_softmax(
            learner.logits(learner.embed(query_views.flatten(0, 1)), prototypes), -1
        )
    assert torch.allclose(predicted, expected.view(4, query.shape[0], -1).mean(0))
    # Euclidean logits: averaging log-probabilities ranks classes by the distance of the
    # prototypes to the mean embedding of the query's views.
    assert torch.equal(predicted.argmax(1), learner.logits(mean_query, prototypes).argmax(1))


def test_tasks_are_keyed_by_their_stream_index_not_their_batch() -> None:
    learner, batch = protonet(), make_batch(tasks=3, size=28)
    augmentation = TestTimeAugmentation(copies=2)
    together = learner.evaluate(batch, augmentation)
    for t in range(3):
        alone = dataclasses.replace(
            batch,
            support_images=batch.support_images[t : t + 1],
            support_labels=batch.support_labels[t : t + 1],
            query_images=batch.query_images[t : t + 1],
            query_labels=batch.query_labels[t : t + 1],
            task_indices=batch.task_indices[t : t + 1],
        )
        assert torch.equal(learner.evaluate(alone, augmentation), together[t : t + 1])
    # Another seed draws other distortions.
    other = TestTimeAugmentation(copies=2, seed=1)
    support, labels, query = batch.support_images[0], batch.support_labels[0], batch.query_images[0]
    first = augmentation.adapt(learner, support, labels, augmentation.key(0))(query)
    second = other.adapt(learner, support, labels, other.key(0))(query)
    assert not torch.allclose(first, second)


def test_maml_adapts_on_the_augmented_support_set() -> None:
    batch = make_batch(tasks=1, ways=3, shots=1, queries=2, size=12)
    learner = MAML(tiny_classifier(ways=3, size=12), inner_lr=0.1, steps=1)
    support, labels, query = batch.support_images[0], batch.support_labels[0], batch.query_images[0]
    augmentation = TestTimeAugmentation(copies=2)
    predicted = augmentation.adapt(learner, support, labels, augmentation.key(0))(query)
    assert predicted.shape == (query.shape[0], 3)
    # Averaged log-probabilities: each row's probabilities sum to at most 1 (Jensen).
    assert bool((predicted.exp().sum(1) <= 1 + 1e-12).all())
    plain = torch.log_softmax(learner.adapt(support, labels)(query), -1)
    assert not torch.allclose(predicted, plain)


def test_invalid_settings_are_errors() -> None:
    with pytest.raises(ValueError, match="copies >= 0"):
        TestTimeAugmentation(copies=-1)
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        TestTimeAugmentation.with_strength(copies=2, strength=1.5)
