"""Reptile: the update direction, its fixed point on quadratics, agreement with an imperative
reference (a fine-tuned copy and ``torch.optim.Adam``), the loop against the task-batched
path."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Literal

import pytest
import torch
from torch import Tensor, nn

from metarch.data.episodes import EpisodeBatch, EpisodeSampler
from metarch.data.omniglot import OmniglotSet
from metarch.data.pools import ClassPool
from metarch.meta import META_LEARNERS, Reptile, create_meta_learner
from metarch.meta.losses import TaskLoss
from metarch.meta.reptile import _draw_mini_batches
from metarch.models import FewShotClassifier, create_model
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


def quadratic_loss(loss: object = half_squared_distance) -> TaskLoss:
    """:func:`half_squared_distance` (or ``loss``) as a task loss scored by its negative."""
    one = loss if callable(loss) else half_squared_distance

    def per_task(outputs: Tensor, targets: Tensor) -> Tensor:
        return torch.stack([one(o, t) for o, t in zip(outputs, targets, strict=True)])

    return TaskLoss(one, per_task, lambda outputs, targets: -one(outputs, targets), "negative")


QUADRATIC = quadratic_loss()


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
    learner = Reptile(model, inner_optimizer="sgd", inner_lr=rate, steps=steps, loss=QUADRATIC)
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
    learner = create_meta_learner("reptile", model, inner_lr=0.05, steps=5, loss=QUADRATIC)
    iterations, tasks = 30, 16
    optimizer = torch.optim.SGD(learner.meta_parameters(), lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / iterations)
    for _ in range(iterations):
        centres = mu + spread * torch.randn(tasks, 3, dtype=DTYPE)
        metrics = learner.meta_train_step(quadratic_batch(centres[:, None, :]), optimizer)
        schedule.step()
    assert metrics.tasks == tasks
    assert metrics.accuracy <= 0.0  # the score of a regression: minus its loss
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
        loss=QUADRATIC,
    )
    learner.compute_meta_gradients(quadratic_batch(centres[:, None, :]))
    g = theta - centres
    adapted = theta - lr * g / (g.abs() + eps)
    assert model.theta.grad is not None
    torch.testing.assert_close(model.theta.grad, theta - adapted.mean(0), rtol=0, atol=1e-15)
    torch.testing.assert_close(model.theta.detach(), theta, rtol=0, atol=0)
    assert "inner_adam_step" not in learner.state_dict()


@pytest.mark.parametrize("mode", ["sequential", "carried"])
def test_carried_adam_state_follows_adam_across_tasks(mode: str) -> None:
    # The paper's code keeps one Adam for the whole run: task t's single step is Adam's
    # t-th step, with the second moment of all earlier tasks' gradients ("sequential").
    # "carried": every task of the meta-batch starts from the carried state; the state
    # carried on is their mean, one step further.
    lr, eps, beta2 = 0.1, 1e-8, 0.999
    theta = torch.tensor([0.0, 1.0], dtype=DTYPE)
    centres = torch.tensor([[1.0, 3.0], [-2.0, 1.5], [0.5, -1.0]], dtype=DTYPE)
    model = Point(theta)
    learner = Reptile(
        model,
        inner_lr=lr,
        steps=1,
        eps=eps,
        loss=QUADRATIC,
        adam_state=mode,  # type: ignore[arg-type]
    )
    learner.compute_meta_gradients(quadratic_batch(centres[:, None, :]))
    second_moment = torch.zeros(2, dtype=DTYPE)
    adapted, moments = [], []
    for t, centre in enumerate(centres, start=1):
        g = theta - centre
        if mode == "sequential":
            second_moment = beta2 * second_moment + (1 - beta2) * g.square()
            corrected = (second_moment / (1 - beta2**t)).sqrt()
        else:
            moments.append((1 - beta2) * g.square())
            corrected = (moments[-1] / (1 - beta2)).sqrt()
        adapted.append(theta - lr * g / (corrected + eps))
    if mode == "carried":
        second_moment = torch.stack(moments).mean(0)
    assert model.theta.grad is not None
    expected = theta - torch.stack(adapted).mean(0)
    torch.testing.assert_close(model.theta.grad, expected, rtol=1e-12, atol=1e-15)
    state = learner.state_dict()
    assert set(state["inner_adam_step"].tolist()) == {(3 if mode == "sequential" else 1)}
    torch.testing.assert_close(state["inner_adam_second_moment"], second_moment)

    # Adaptation reads the carried state and never changes it.
    learner.adapt(torch.zeros(1, 1, dtype=DTYPE), centres[:1])
    torch.testing.assert_close(learner.state_dict()["inner_adam_second_moment"], second_moment)
    assert torch.equal(learner.state_dict()["inner_adam_step"], state["inner_adam_step"])

    # The state travels with the learner's state dict (checkpoints), and a state dict
    # saved before it existed still loads, starting from an empty state.
    fresh = Reptile(Point(theta), inner_lr=lr, steps=1, eps=eps, loss=QUADRATIC)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.state_dict()["inner_adam_second_moment"], second_moment)
    old = {k: v for k, v in state.items() if not k.startswith("inner_adam")}
    fresh = Reptile(Point(theta), inner_lr=lr, steps=1, eps=eps, loss=QUADRATIC)
    fresh.load_state_dict(old)
    assert set(fresh.state_dict()["inner_adam_step"].tolist()) == {0}


def test_gradients_are_added_to_existing_ones() -> None:
    model = Point(torch.zeros(2, dtype=DTYPE))
    learner = Reptile(model, inner_optimizer="sgd", inner_lr=0.5, steps=1, loss=QUADRATIC)
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
        loss=QUADRATIC,
    )
    learner.compute_meta_gradients(quadratic_batch(support, query))
    centre = torch.tensor([2.0, 1.0] if inner_on == "support" else [4.0, 2.0], dtype=DTYPE)
    adapted = centre + (1 - rate) ** steps * (torch.zeros(2, dtype=DTYPE) - centre)
    assert model.theta.grad is not None
    torch.testing.assert_close(model.theta.grad, -adapted, rtol=0, atol=1e-15)


# -- against an imperative reference --------------------------------------------------------


def fine_tuned_copy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batches: list[Tensor] | None,
    steps: int,
    lr: float,
    second_moment: Tensor | None = None,
    count: int = 0,
) -> tuple[nn.Module, torch.optim.Adam]:
    """What Reptile did before it ran on the functional core: a copy and torch.optim.Adam."""
    learner = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr, betas=(0.0, 0.999))
    offset = 0
    for parameter in learner.parameters():
        size = parameter.numel()
        moment = torch.zeros_like(parameter)
        if second_moment is not None:
            moment = second_moment[offset : offset + size].view_as(parameter).clone()
        optimizer.state[parameter] = {
            "step": torch.tensor(float(count)),
            "exp_avg": torch.zeros_like(parameter),
            "exp_avg_sq": moment,
        }
        offset += size
    for step in range(steps):
        index = slice(None) if batches is None else batches[step]
        optimizer.zero_grad()
        nn.functional.cross_entropy(learner(x[index]), y[index]).backward()
        optimizer.step()
    return learner, optimizer


@pytest.mark.parametrize("batching", ["loop", "batched"])
@pytest.mark.parametrize("adam_state", ["carried", "sequential", "per_task"])
def test_meta_gradient_matches_fine_tuned_copies(batching: str, adam_state: str) -> None:
    if batching == "batched" and adam_state == "sequential":
        pytest.skip("sequential Adam state runs tasks one after another")
    model = tiny_classifier(ways=3)
    learner = Reptile(
        model,
        inner_lr=1e-2,
        steps=3,
        inner_on="all",
        inner_batch_size=7,
        adam_state=adam_state,  # type: ignore[arg-type]
        batching=batching,  # type: ignore[arg-type]
        task_threads=2,
        support_group=2,
    )
    batch = make_batch(tasks=3, ways=3)
    x = torch.cat([batch.support_images, batch.query_images], dim=1)
    y = torch.cat([batch.support_labels, batch.query_labels], dim=1)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    carried = torch.rand(sum(p.numel() for p in model.parameters()), dtype=DTYPE) * 1e-3
    if adam_state != "per_task":
        learner.get_buffer("inner_adam_second_moment").copy_(carried)
        learner.get_buffer("inner_adam_step").fill_(4)
    learner.eval()  # the learner's mode is kept; adaptation trains with batch statistics
    torch.manual_seed(3)
    metrics = learner.compute_meta_gradients(batch)
    assert learner._batched is not None if batching == "batched" else learner._batched is None
    assert not learner.training and not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # buffers included
    assert 0.0 <= metrics.accuracy <= 1.0 and math.isfinite(metrics.loss)

    torch.manual_seed(3)
    batches = _draw_mini_batches(3, x.shape[1], 7, 3, x.device)
    assert batches is not None
    moment, count = (carried, 4) if adam_state != "per_task" else (None, 0)
    copies, moments = [], []
    for t in range(3):
        task_batches = [b[t] for b in batches]
        copy_, optimizer = fine_tuned_copy(model, x[t], y[t], task_batches, 3, 1e-2, moment, count)
        copies.append(copy_)
        moments.append(
            torch.cat([optimizer.state[p]["exp_avg_sq"].flatten() for p in copy_.parameters()])
        )
        if adam_state == "sequential":
            moment, count = moments[-1], count + 3
    for (name, theta), *adapted in zip(
        model.named_parameters(), *(c.parameters() for c in copies), strict=True
    ):
        assert theta.grad is not None, name
        expected = theta.detach() - torch.stack([a.detach() for a in adapted]).mean(0)
        torch.testing.assert_close(theta.grad, expected, rtol=1e-7, atol=1e-9)
    state = learner.state_dict()
    if adam_state == "carried":
        torch.testing.assert_close(state["inner_adam_second_moment"], torch.stack(moments).mean(0))
        assert set(state["inner_adam_step"].tolist()) == {4 + 3}
    elif adam_state == "sequential":
        torch.testing.assert_close(state["inner_adam_second_moment"], moments[-1])
        assert set(state["inner_adam_step"].tolist()) == {4 + 3 * 3}
    else:
        assert "inner_adam_step" not in state


def test_loop_and_task_batched_paths_agree_in_float32() -> None:
    batch = make_batch(tasks=5, ways=3, dtype=torch.float32)
    grads = []
    batchings: tuple[Literal["loop"], Literal["batched"]] = ("loop", "batched")
    for batching in batchings:
        model = tiny_classifier(ways=3).float()
        learner = Reptile(
            model,
            inner_lr=1e-2,
            steps=4,
            inner_batch_size=6,
            batching=batching,
        )
        # A warm carried state: a fresh Adam's first step is lr * sign(g), whose sign flips
        # with float32 rounding where a gradient is near zero.
        learner.get_buffer("inner_adam_second_moment").fill_(1e-3)
        learner.get_buffer("inner_adam_step").fill_(1000)
        torch.manual_seed(0)
        metrics = learner.compute_meta_gradients(batch)
        grads.append(
            (
                torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]),
                metrics,
                learner.state_dict()["inner_adam_second_moment"],
            )
        )
    (loop, loop_metrics, loop_moment), (batched, batched_metrics, batched_moment) = grads
    torch.testing.assert_close(batched, loop, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(batched_moment, loop_moment, rtol=1e-4, atol=1e-12)
    assert batched_metrics.accuracy == pytest.approx(loop_metrics.accuracy)
    assert batched_metrics.loss == pytest.approx(loop_metrics.loss, rel=1e-4)


def test_adapt_equals_a_fine_tuned_copy_in_eval_and_train_mode() -> None:
    model = tiny_classifier(ways=3)
    learner = Reptile(model, inner_lr=1e-2, eval_steps=20, eval_batch_size=4)
    learner.get_buffer("inner_adam_second_moment").uniform_(0, 1e-3)
    learner.get_buffer("inner_adam_step").fill_(10)
    carried = {name: value.clone() for name, value in learner.state_dict().items()}
    batch = make_batch(tasks=2, ways=3)
    support_x, support_y = batch.support_images[0], batch.support_labels[0]
    for training in (False, True):
        learner.train(training)
        torch.manual_seed(5)
        with torch.no_grad():  # adaptation still gets its gradients
            predictor = learner.adapt(support_x, support_y)
        logits = predictor(batch.query_images[0])
        assert logits.shape == (9, 3) and not logits.requires_grad
        torch.manual_seed(5)
        batches = _draw_mini_batches(1, len(support_x), 4, 20, support_x.device)
        assert batches is not None
        reference, _ = fine_tuned_copy(
            model,
            support_x,
            support_y,
            [b[0] for b in batches],
            20,
            1e-2,
            carried["inner_adam_second_moment"],
            10,
        )
        reference.train(training)
        with torch.no_grad():
            torch.testing.assert_close(
                logits, reference(batch.query_images[0]), rtol=1e-7, atol=1e-9
            )
        if not training:
            # Running statistics of the task: a query's logits do not depend on the others.
            torch.testing.assert_close(predictor(batch.query_images[0][:1]), logits[:1])
    for name, value in learner.state_dict().items():
        assert torch.equal(value, carried[name]), name  # the carried state is only read
    assert learner.evaluate(batch).shape == (2,)


def test_mini_batches_cycle_through_permutations() -> None:
    torch.manual_seed(0)
    batches = _draw_mini_batches(2, 5, 2, 6, torch.device("cpu"))
    assert batches is not None and len(batches) == 6
    order = torch.cat(batches, dim=1)
    assert order.shape == (2, 12)
    for task in order:
        assert sorted(task[:5].tolist()) == list(range(5))
        assert sorted(task[5:10].tolist()) == list(range(5))
    assert _draw_mini_batches(2, 5, None, 3, torch.device("cpu")) is None
    assert _draw_mini_batches(2, 5, 8, 2, torch.device("cpu")) is None


def test_inner_mini_batches_are_used() -> None:
    seen: list[int] = []

    def recording_loss(outputs: Tensor, targets: Tensor) -> Tensor:
        seen.append(len(targets))
        return half_squared_distance(outputs, targets)

    model = Point(torch.zeros(2, dtype=DTYPE))
    learner = Reptile(model, steps=4, inner_batch_size=3, loss=quadratic_loss(recording_loss))
    learner.compute_meta_gradients(quadratic_batch(torch.randn(2, 4, 2, dtype=DTYPE)))
    # inner_on="all": 8 examples per task, 4 steps of 3, then the query loss and score.
    assert seen == [3, 3, 3, 3, 4, 4] * 2


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
    with pytest.raises(ValueError, match="sequential"):
        Reptile(Point(torch.zeros(2)), adam_state="sequential", batching="batched")
    assert Reptile(Point(torch.zeros(2)), adam_state="sequential").batching == "loop"


def test_matches_fine_tuned_copies_on_a_fixed_omniglot_seed(background: OmniglotSet) -> None:
    # Real episodes (background alphabets with rotations, seed 0), the shipped config's
    # Conv-4 and inner loop, both paths: the meta-gradient of the core equals that of a
    # copy trained with torch.optim.Adam per task (Reptile before the shared core).
    batch = EpisodeSampler(ClassPool.whole(background).with_rotations(), 5, 1, 9, seed=0).sample(3)
    batch = dataclasses.replace(
        batch,
        support_images=batch.support_images.double(),
        query_images=batch.query_images.double(),
    )
    x = torch.cat([batch.support_images, batch.query_images], dim=1)
    y = torch.cat([batch.support_labels, batch.query_labels], dim=1)
    torch.manual_seed(3)
    batches = _draw_mini_batches(3, x.shape[1], 10, 5, x.device)
    assert batches is not None
    torch.manual_seed(0)
    reference_model = FewShotClassifier(create_model("conv4"), 5, (1, 28, 28)).double()
    # A warm carried state: a fresh Adam's first step, lr * sign(g), turns the rounding
    # noise of the (zero) gradients of convolution biases before batch norm into steps.
    size = sum(p.numel() for p in reference_model.parameters())
    warm = torch.full((size,), 1e-4, dtype=DTYPE)
    copies = [
        fine_tuned_copy(reference_model, x[t], y[t], [b[t] for b in batches], 5, 1e-3, warm, 100)[0]
        for t in range(3)
    ]
    for batching in ("loop", "batched"):
        model = copy.deepcopy(reference_model)
        learner = Reptile(
            model,
            inner_lr=1e-3,
            steps=5,
            inner_batch_size=10,
            batching=batching,
        )
        learner.get_buffer("inner_adam_second_moment").copy_(warm)
        learner.get_buffer("inner_adam_step").fill_(100)
        torch.manual_seed(3)
        learner.compute_meta_gradients(batch)
        for (name, theta), *adapted in zip(
            model.named_parameters(), *(c.parameters() for c in copies), strict=True
        ):
            expected = theta.detach() - torch.stack([a.detach() for a in adapted]).mean(0)
            assert theta.grad is not None, name
            torch.testing.assert_close(theta.grad, expected, rtol=1e-6, atol=1e-9, msg=name)
