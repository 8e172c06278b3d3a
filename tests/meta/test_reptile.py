"""Reptile: the update direction, its fixed point on quadratics, and isolation of the copies."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from metarch.data.episodes import EpisodeBatch
from metarch.meta import META_LEARNERS, Reptile, create_meta_learner
from metarch.meta.reptile import _mini_batches
from tests.meta.helpers import make_batch, tiny_classifier

DTYPE = torch.float64


class Point(nn.Module):
    """A "model" that is one vector: it predicts ``theta`` whatever the input."""

    def __init__(self, start: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(start.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.theta.expand(x.shape[0], -1)


def half_squared_distance(outputs: Tensor, targets: Tensor) -> Tensor:
    """``mean_i 0.5 * ||theta - y_i||^2``: a task's loss is a quadratic centred at its targets."""
    return 0.5 * (outputs - targets).square().sum(dim=-1).mean()


def quadratic_batch(support: Tensor, query: Tensor | None = None) -> EpisodeBatch:
    """Tasks whose targets are ``support`` ``(T, K, d)`` (and ``query``); inputs are dummies."""
    query = support if query is None else query
    tasks = support.shape[0]
    zeros = torch.zeros(tasks, 1, dtype=torch.long)
    return EpisodeBatch(
        support_images=torch.zeros(*support.shape[:2], 1, dtype=DTYPE),
        support_labels=support,
        query_images=torch.zeros(*query.shape[:2], 1, dtype=DTYPE),
        query_labels=query,
        entries=zeros,
        support_image_ids=zeros,
        query_image_ids=zeros,
        task_indices=torch.arange(tasks),
    )


def meta_step(learner: Reptile, batch: EpisodeBatch, lr: float = 1.0) -> None:
    optimizer = torch.optim.SGD(learner.meta_parameters(), lr=lr)
    learner.meta_train_step(batch, optimizer)


# -- the update on quadratics -------------------------------------------------------------


def test_sgd_inner_loop_moves_towards_the_mean_centre_at_the_known_rate() -> None:
    # k SGD steps of rate a on 0.5||theta - c||^2 give c + (1-a)^k (theta - c); averaged
    # over tasks whose centres average to mu, one outer step of size 1 must give exactly
    # mu + (1-a)^k (theta - mu), so theta converges to mu geometrically.
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE)
    rate, steps = 0.3, 5
    model = Point(torch.zeros(3, dtype=DTYPE))
    learner = Reptile(
        model, inner_optimizer="sgd", inner_lr=rate, steps=steps, loss_fn=half_squared_distance
    )
    for _ in range(12):
        offsets = torch.randn(4, 3, dtype=DTYPE)
        centres = mu + torch.cat([offsets, -offsets])  # antithetic: their mean is exactly mu
        before = model.theta.detach().clone()
        meta_step(learner, quadratic_batch(centres[:, None, :]))
        expected = mu + (1 - rate) ** steps * (before - mu)
        torch.testing.assert_close(model.theta.detach(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.theta.detach(), mu, rtol=0, atol=1e-8)


def test_adam_reptile_converges_to_the_centre_of_a_symmetric_family() -> None:
    # With Adam (beta1 = 0) the inner update is elementwise and odd in theta - c, so for a
    # symmetric family of quadratics the fixed point of the Reptile update is the centre
    # mu. Outer step size annealed linearly from 1 to 0, as in the paper.
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -1.0, 0.5], dtype=DTYPE)
    spread = torch.tensor([0.5, 0.25, 1.0], dtype=DTYPE)
    model = Point(torch.zeros(3, dtype=DTYPE))
    learner = create_meta_learner(
        "reptile", model, inner_lr=0.05, steps=5, loss_fn=half_squared_distance
    )
    iterations, tasks = 30, 16
    optimizer = torch.optim.SGD(learner.meta_parameters(), lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / iterations)
    for _ in range(iterations):
        centres = mu + spread * torch.randn(tasks, 3, dtype=DTYPE)
        metrics = learner.meta_train_step(quadratic_batch(centres[:, None, :]), optimizer)
        schedule.step()
    assert metrics.tasks == tasks
    assert math.isnan(metrics.accuracy)  # float targets: no accuracy
    torch.testing.assert_close(model.theta.detach(), mu, rtol=0, atol=0.15)


def test_gradient_is_theta_minus_mean_adapted_theta_for_one_adam_step() -> None:
    # One Adam step with beta1 = 0 from fresh state moves by lr * g / (|g| + eps).
    lr, eps = 0.1, 1e-8
    theta = torch.tensor([0.0, 1.0], dtype=DTYPE)
    centres = torch.tensor([[1.0, 3.0], [-2.0, 1.5], [0.5, -1.0]], dtype=DTYPE)
    model = Point(theta)
    learner = Reptile(
        model,
        inner_lr=lr,
        steps=1,
        eps=eps,
        adam_state="per_task",
        loss_fn=half_squared_distance,
    )
    learner.compute_meta_gradients(quadratic_batch(centres[:, None, :]))
    g = theta - centres
    adapted = theta - lr * g / (g.abs() + eps)
    assert model.theta.grad is not None
    torch.testing.assert_close(model.theta.grad, theta - adapted.mean(0), rtol=0, atol=1e-15)
    torch.testing.assert_close(model.theta.detach(), theta, rtol=0, atol=0)
    assert "inner_adam_step" not in learner.state_dict()


def test_carried_adam_state_follows_adam_across_tasks() -> None:
    # The paper's code keeps one Adam for the whole run: task t's single step is Adam's
    # t-th step, with the second moment of all earlier tasks' gradients.
    lr, eps, beta2 = 0.1, 1e-8, 0.999
    theta = torch.tensor([0.0, 1.0], dtype=DTYPE)
    centres = torch.tensor([[1.0, 3.0], [-2.0, 1.5], [0.5, -1.0]], dtype=DTYPE)
    model = Point(theta)
    learner = Reptile(model, inner_lr=lr, steps=1, eps=eps, loss_fn=half_squared_distance)
    learner.compute_meta_gradients(quadratic_batch(centres[:, None, :]))
    second_moment = torch.zeros(2, dtype=DTYPE)
    adapted = []
    for t, centre in enumerate(centres, start=1):
        g = theta - centre
        second_moment = beta2 * second_moment + (1 - beta2) * g.square()
        corrected = (second_moment / (1 - beta2**t)).sqrt()
        adapted.append(theta - lr * g / (corrected + eps))
    assert model.theta.grad is not None
    expected = theta - torch.stack(adapted).mean(0)
    torch.testing.assert_close(model.theta.grad, expected, rtol=1e-12, atol=1e-15)
    state = learner.state_dict()
    assert int(state["inner_adam_step"]) == 3
    torch.testing.assert_close(state["inner_adam_second_moment"], second_moment)

    # Adaptation reads the carried state and never changes it.
    learner.adapt(torch.zeros(1, 1, dtype=DTYPE), centres[:1])
    torch.testing.assert_close(learner.state_dict()["inner_adam_second_moment"], second_moment)
    assert int(learner.state_dict()["inner_adam_step"]) == 3

    # The state travels with the learner's state dict (checkpoints), and a state dict
    # saved before it existed still loads, starting from an empty state.
    fresh = Reptile(Point(theta), inner_lr=lr, steps=1, eps=eps, loss_fn=half_squared_distance)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.state_dict()["inner_adam_second_moment"], second_moment)
    old = {k: v for k, v in state.items() if not k.startswith("inner_adam")}
    fresh = Reptile(Point(theta), inner_lr=lr, steps=1, eps=eps, loss_fn=half_squared_distance)
    fresh.load_state_dict(old)
    assert int(fresh.state_dict()["inner_adam_step"]) == 0


def test_gradients_are_added_to_existing_ones() -> None:
    model = Point(torch.zeros(2, dtype=DTYPE))
    learner = Reptile(
        model, inner_optimizer="sgd", inner_lr=0.5, steps=1, loss_fn=half_squared_distance
    )
    batch = quadratic_batch(torch.tensor([[[2.0, -4.0]]], dtype=DTYPE))
    learner.compute_meta_gradients(batch)
    assert model.theta.grad is not None
    first = model.theta.grad.clone()
    torch.testing.assert_close(first, torch.tensor([-1.0, 2.0], dtype=DTYPE))
    learner.compute_meta_gradients(batch)
    torch.testing.assert_close(model.theta.grad, 2 * first)


@pytest.mark.parametrize("inner_on", ["support", "all"])
def test_inner_loop_trains_on_support_or_on_all_task_data(inner_on: str) -> None:
    # Full-batch SGD on mean_i 0.5||theta - y_i||^2 is SGD on a quadratic centred at the
    # mean target of the data it sees.
    rate, steps = 0.25, 3
    support = torch.tensor([[[1.0, 1.0], [3.0, 1.0]]], dtype=DTYPE)  # mean (2, 1)
    query = torch.tensor([[[8.0, 4.0]]], dtype=DTYPE)
    model = Point(torch.zeros(2, dtype=DTYPE))
    learner = Reptile(
        model,
        inner_optimizer="sgd",
        inner_lr=rate,
        steps=steps,
        inner_on=inner_on,  # type: ignore[arg-type]
        loss_fn=half_squared_distance,
    )
    learner.compute_meta_gradients(quadratic_batch(support, query))
    centre = torch.tensor([2.0, 1.0] if inner_on == "support" else [4.0, 2.0], dtype=DTYPE)
    adapted = centre + (1 - rate) ** steps * (torch.zeros(2, dtype=DTYPE) - centre)
    assert model.theta.grad is not None
    torch.testing.assert_close(model.theta.grad, -adapted, rtol=0, atol=1e-15)


# -- isolation of the adapted copies -------------------------------------------------------


def test_meta_parameters_and_buffers_only_change_through_grad() -> None:
    model = tiny_classifier(ways=3)
    learner = Reptile(model, inner_lr=1e-2, steps=3, inner_on="support")
    batch = make_batch(tasks=3, ways=3)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    carried = {name: value.clone() for name, value in learner.state_dict().items()}
    learner.eval()  # the copies still train in train mode; the learner's mode is kept
    metrics = learner.compute_meta_gradients(batch)
    assert not learner.training and not model.training
    after = model.state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert 0.0 <= metrics.accuracy <= 1.0 and math.isfinite(metrics.loss)
    # The gradient is exactly theta - mean of the copies fine-tuned one task at a time,
    # each task's inner Adam starting from the state the previous one left.
    assert int(learner.state_dict()["inner_adam_step"]) == 9
    learner.load_state_dict(carried)
    copies = [
        learner.fine_tune(batch.support_images[t], batch.support_labels[t], steps=3, carry=True)
        for t in range(batch.num_tasks)
    ]
    for (name, theta), *adapted in zip(
        model.named_parameters(), *(c.parameters() for c in copies), strict=True
    ):
        assert theta.grad is not None, name
        expected = theta.detach() - torch.stack([a.detach() for a in adapted]).mean(0)
        torch.testing.assert_close(theta.grad, expected, rtol=0, atol=1e-12)


def test_adapt_returns_a_detached_predictor_and_leaves_the_model_alone() -> None:
    model = tiny_classifier(ways=3)
    learner = Reptile(model, inner_lr=1e-2, eval_steps=20)
    batch = make_batch(tasks=2, ways=3)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    learner.eval()
    with torch.no_grad():  # adaptation still gets its gradients
        predictor = learner.adapt(batch.support_images[0], batch.support_labels[0])
    logits = predictor(batch.query_images[0])
    assert logits.shape == (9, 3) and not logits.requires_grad
    # Eval mode: running statistics, so a query's logits do not depend on the others.
    torch.testing.assert_close(predictor(batch.query_images[0][:1]), logits[:1])
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    # The fine-tuned copy fits its support set better than the initialisation does (both
    # in train mode: batch statistics).
    support_x, support_y = batch.support_images[0], batch.support_labels[0]
    learner.train()
    with torch.no_grad():
        initial = nn.functional.cross_entropy(model(support_x), support_y)
    adapted = nn.functional.cross_entropy(learner.adapt(support_x, support_y)(support_x), support_y)
    assert adapted < initial
    accuracies = learner.evaluate(batch)
    assert accuracies.shape == (2,)


def test_mini_batches_cycle_through_permutations() -> None:
    torch.manual_seed(0)
    batches = list(_mini_batches(5, 2, 6, torch.device("cpu")))
    assert len(batches) == 6
    order = torch.cat([b for b in batches if isinstance(b, Tensor)])
    assert order.shape == (12,)
    assert sorted(order[:5].tolist()) == list(range(5))
    assert sorted(order[5:10].tolist()) == list(range(5))
    assert list(_mini_batches(5, None, 3, torch.device("cpu"))) == [slice(None)] * 3
    assert list(_mini_batches(5, 8, 2, torch.device("cpu"))) == [slice(None)] * 2


def test_inner_mini_batches_are_used() -> None:
    seen: list[int] = []

    def recording_loss(outputs: Tensor, targets: Tensor) -> Tensor:
        seen.append(len(targets))
        return half_squared_distance(outputs, targets)

    model = Point(torch.zeros(2, dtype=DTYPE))
    learner = Reptile(model, steps=4, inner_batch_size=3, loss_fn=recording_loss)
    learner.compute_meta_gradients(quadratic_batch(torch.randn(2, 4, 2, dtype=DTYPE)))
    # inner_on="all": 8 examples per task, 4 steps of 3, then one query loss per task.
    assert seen == [3, 3, 3, 3, 4] * 2


# -- construction ---------------------------------------------------------------------------


def test_registered_and_validated() -> None:
    assert META_LEARNERS.get("reptile") is Reptile
    learner = create_meta_learner("reptile", Point(torch.zeros(2)), betas=(0, 0.999))
    assert isinstance(learner, Reptile)
    assert (learner.steps, learner.eval_steps, learner.inner_lr) == (5, 50, 1e-3)
    assert learner.betas == (0.0, 0.999) and learner.inner_on == "all"
    with pytest.raises(ValueError, match="inner_optimizer"):
        Reptile(Point(torch.zeros(2)), inner_optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inner_on"):
        Reptile(Point(torch.zeros(2)), inner_on="query")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch sizes"):
        Reptile(Point(torch.zeros(2)), inner_batch_size=0)
