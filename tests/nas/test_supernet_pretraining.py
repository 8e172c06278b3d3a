"""The supervised-pretraining comparison: cross-entropy over the training pool's classes
through the supernet's sub-networks, gradients equal to autograd through the supernet run
as each of them, and tasks solved by fine-tuning from a new head."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from metarch.data.episodes import EpisodeBatch
from metarch.models import FewShotClassifier
from metarch.nas.methods import SupernetPretraining
from metarch.nas.spaces.elastic_conv_supernet import ElasticConvSupernet
from metarch.nas.spaces.supernet import subnet_context
from tests.meta.helpers import flat_grad, make_batch

SIZE = 16


def model() -> FewShotClassifier:
    torch.manual_seed(0)
    supernet = ElasticConvSupernet(channels=4, max_depth=2, in_channels=1, image_size=SIZE)
    return FewShotClassifier(supernet, 3, (1, SIZE, SIZE)).double()


def labelled_batch(tasks: int = 4) -> EpisodeBatch:
    batch = make_batch(tasks=tasks, ways=3, size=SIZE)
    generator = torch.Generator().manual_seed(0)
    entries = torch.stack([torch.randperm(10, generator=generator)[:3] for _ in range(tasks)])
    return dataclasses.replace(batch, entries=entries)


def test_gradients_are_the_supernets_cross_entropy_over_training_classes() -> None:
    batch = labelled_batch()
    learner = SupernetPretraining(model(), classes=10, sandwich=2)
    learner.pretraining_head.double()
    metrics = learner.compute_meta_gradients(batch)
    got = flat_grad(list(learner.parameters()))

    reference = SupernetPretraining(model(), classes=10, sandwich=2)
    reference.pretraining_head.double()
    reference.load_state_dict(learner.state_dict())
    reference.zero_grad()
    total = torch.zeros((), dtype=torch.float64)
    for architecture, tasks in zip(reference.subnets(0), [[0, 2], [1, 3]], strict=True):
        x = torch.cat([batch.support_images[tasks].flatten(0, 1),
                       batch.query_images[tasks].flatten(0, 1)])  # fmt: skip
        entries = batch.entries[tasks]
        y = torch.cat([entries.gather(1, batch.support_labels[tasks]).flatten(),
                       entries.gather(1, batch.query_labels[tasks]).flatten()])  # fmt: skip
        with subnet_context(architecture):
            logits = reference.pretraining_head(reference.model.get_submodule("backbone")(x))
        total = total + 0.5 * F.cross_entropy(logits, y)
    total.backward()
    expected = flat_grad(list(reference.parameters()))
    assert torch.allclose(got, expected, atol=1e-10), (got - expected).abs().max()
    assert metrics.loss == pytest.approx(float(total.detach()))
    # The few-shot head is not pre-trained: every task starts from a zero head.
    head = learner.model.get_submodule("head")
    assert isinstance(head, torch.nn.Linear)
    assert head.weight.grad is None and not head.weight.any()


def test_pretraining_learns_and_tasks_are_solved_by_fine_tuning() -> None:
    batch = labelled_batch(tasks=2)
    learner = SupernetPretraining(model(), classes=10, sandwich=1, eval_steps=5, inner_lr=0.5)
    learner.pretraining_head.double()
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.01)
    losses = [learner.meta_train_step(batch, optimizer).loss for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]
    accuracy = learner.evaluate(make_batch(tasks=2, ways=3, size=SIZE, seed=5))
    assert accuracy.shape == (2,) and float(accuracy.mean()) > 1 / 3


def test_a_head_smaller_than_the_training_pool_is_named() -> None:
    learner = SupernetPretraining(model(), classes=5)
    learner.pretraining_head.double()
    with pytest.raises(ValueError, match=r"method\.options\.classes is 5"):
        learner.compute_meta_gradients(labelled_batch())
