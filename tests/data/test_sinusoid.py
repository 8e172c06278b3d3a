"""Tests of the MAML sinusoid regression tasks (``metarch.data.sinusoid``)."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from metarch.data.sinusoid import (
    MAML_AMPLITUDE_RANGE,
    MAML_PHASE_RANGE,
    MAML_X_RANGE,
    SinusoidBatch,
    SinusoidTasks,
)
from metarch.errors import EpisodeError, MetarchError


def assert_same(a: SinusoidBatch, b: SinusoidBatch) -> None:
    for name in ("support_x", "support_y", "query_x", "query_y", "amplitude", "phase"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_maml_defaults() -> None:
    paper = ((0.1, 5.0), (0.0, math.pi), (-5.0, 5.0))
    assert paper == (MAML_AMPLITUDE_RANGE, MAML_PHASE_RANGE, MAML_X_RANGE)
    tasks = SinusoidTasks(5, 10, seed=0)
    assert (tasks.amplitude_range, tasks.phase_range, tasks.x_range) == (
        MAML_AMPLITUDE_RANGE,
        MAML_PHASE_RANGE,
        MAML_X_RANGE,
    )
    assert "shots=5" in repr(tasks)


@pytest.mark.parametrize(("shots", "queries", "tasks"), [(5, 10, 4), (1, 0, 1), (10, 1, 25)])
def test_shapes_and_dtypes(shots: int, queries: int, tasks: int) -> None:
    batch = SinusoidTasks(shots, queries, seed=3).sample(tasks)
    assert batch.support_x.shape == (tasks, shots, 1)
    assert batch.support_y.shape == (tasks, shots, 1)
    assert batch.query_x.shape == (tasks, queries, 1)
    assert batch.query_y.shape == (tasks, queries, 1)
    assert batch.amplitude.shape == (tasks,)
    assert batch.phase.shape == (tasks,)
    assert batch.num_tasks == tasks
    for tensor in vars(batch).values():
        assert tensor.dtype == torch.float32
        assert tensor.is_contiguous()


def test_ranges_are_respected_and_covered() -> None:
    batch = SinusoidTasks(20, 20, seed=1).sample(2000)
    amplitude, phase = batch.amplitude, batch.phase
    x = torch.cat([batch.support_x, batch.query_x], dim=1)
    assert amplitude.min() >= 0.1 and amplitude.max() <= 5.0
    assert phase.min() >= 0.0 and phase.max() <= math.pi
    assert x.min() >= -5.0 and x.max() <= 5.0
    # Uniform draws: the extremes come close to the bounds, the means to the midpoints.
    assert amplitude.min() < 0.2 and amplitude.max() > 4.9
    assert phase.min() < 0.05 and phase.max() > math.pi - 0.05
    assert x.min() < -4.99 and x.max() > 4.99
    assert abs(amplitude.mean().item() - 2.55) < 0.15
    assert abs(phase.mean().item() - math.pi / 2) < 0.1
    assert abs(x.mean().item()) < 0.05


def test_targets_follow_the_maml_formula() -> None:
    batch = SinusoidTasks(7, 9, seed=2).sample(50, index=4)
    amplitude = batch.amplitude.double()[:, None, None]
    phase = batch.phase.double()[:, None, None]
    for x, y in ((batch.support_x, batch.support_y), (batch.query_x, batch.query_y)):
        expected = amplitude * torch.sin(x.double() - phase)
        torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
        # The paper's code subtracts the phase; adding it would give another function.
        flipped = amplitude * torch.sin(x.double() + phase)
        assert (y.double() - flipped).abs().max() > 0.5


def test_custom_ranges() -> None:
    tasks = SinusoidTasks(
        4, 4, seed=0, amplitude_range=(1.0, 1.0), phase_range=(0.0, 0.0), x_range=(0.0, 1.0)
    )
    batch = tasks.sample(10)
    assert torch.all(batch.amplitude == 1.0) and torch.all(batch.phase == 0.0)
    assert batch.support_x.min() >= 0.0 and batch.support_x.max() <= 1.0
    torch.testing.assert_close(batch.support_y, torch.sin(batch.support_x))


def test_same_seed_and_index_give_the_same_batch() -> None:
    a = SinusoidTasks(5, 10, seed=42).sample(8, index=3)
    b = SinusoidTasks(5, 10, seed=42).sample(8, index=3)
    assert_same(a, b)


def test_different_index_or_seed_give_different_batches() -> None:
    tasks = SinusoidTasks(5, 10, seed=42)
    base = tasks.sample(8, index=0)
    for other in (tasks.sample(8, index=1), SinusoidTasks(5, 10, seed=43).sample(8, index=0)):
        assert not torch.equal(base.amplitude, other.amplitude)
        assert not torch.equal(base.support_x, other.support_x)
    # (seed, index) pairs are not conflated: (1, 2) and (2, 1) differ.
    one_two = SinusoidTasks(5, 10, seed=1).sample(4, index=2)
    two_one = SinusoidTasks(5, 10, seed=2).sample(4, index=1)
    assert not torch.equal(one_two.phase, two_one.phase)


def test_global_random_state_is_neither_used_nor_changed() -> None:
    tasks = SinusoidTasks(5, 10, seed=7)
    np.random.seed(0)
    torch.manual_seed(0)
    random.seed(0)
    first = tasks.sample(6, index=2)
    np.random.seed(12345)
    torch.manual_seed(12345)
    random.seed(12345)
    second = tasks.sample(6, index=2)
    assert_same(first, second)
    # The global generators continue exactly as if sample() had not run.
    assert np.random.random() == np.random.RandomState(12345).random_sample()
    fresh = torch.Generator().manual_seed(12345)
    assert torch.equal(torch.rand(3), torch.rand(3, generator=fresh))
    assert random.random() == random.Random(12345).random()


def test_sampling_order_does_not_matter() -> None:
    tasks = SinusoidTasks(3, 3, seed=5)
    later = tasks.sample(4, index=9)
    tasks.sample(4, index=0)
    tasks.sample(100, index=9)
    assert_same(later, tasks.sample(4, index=9))


def test_a_larger_batch_starts_with_the_tasks_of_a_smaller_one() -> None:
    tasks = SinusoidTasks(5, 10, seed=11)
    small, large = tasks.sample(3, index=1), tasks.sample(8, index=1)
    for name in ("support_x", "support_y", "query_x", "query_y", "amplitude", "phase"):
        assert torch.equal(getattr(small, name), getattr(large, name)[:3]), name


def test_batches_iterate_over_indices() -> None:
    tasks = SinusoidTasks(2, 3, seed=9)
    stream = tasks.batches(4)
    for index, batch in enumerate(itertools.islice(stream, 3)):
        assert_same(batch, tasks.sample(4, index))
    resumed = next(tasks.batches(4, start=5))
    assert_same(resumed, tasks.sample(4, 5))


def test_evaluate_grid() -> None:
    tasks = SinusoidTasks(5, 5, seed=0)
    x, y = tasks.evaluate_grid(2.0, 0.5)
    assert x.shape == y.shape == (100, 1)
    assert x.dtype == y.dtype == torch.float32
    assert x[0].item() == -5.0 and x[-1].item() == 5.0
    assert torch.all(x[1:] > x[:-1])
    torch.testing.assert_close(y, 2.0 * torch.sin(x - 0.5))
    x, y = SinusoidTasks(1, 1, seed=0, x_range=(0.0, 1.0)).evaluate_grid(1.0, 0.0, num=11)
    torch.testing.assert_close(x[:, 0], torch.linspace(0.0, 1.0, 11))


def test_to_device() -> None:
    batch = SinusoidTasks(2, 2, seed=0).sample(3)
    moved = batch.to("cpu")
    assert_same(batch, moved)
    assert moved.support_x.device.type == "cpu"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shots": 0}, "shots must be an integer >= 1"),
        ({"shots": 2.0}, "shots must be an integer >= 1"),
        ({"shots": True}, "shots must be an integer >= 1"),
        ({"queries": -1}, "queries must be an integer >= 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"amplitude_range": (5.0, 0.1)}, r"amplitude_range must be finite with low <= high"),
        ({"phase_range": (0.0, math.inf)}, r"phase_range must be finite"),
        ({"x_range": (math.nan, 1.0)}, r"x_range must be finite"),
        ({"x_range": (1.0, 2.0, 3.0)}, r"x_range must be a \(low, high\) pair"),
        ({"x_range": "ab"}, r"x_range must be a \(low, high\) pair"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"shots": 5, "queries": 5, "seed": 0, **kwargs}
    with pytest.raises(EpisodeError, match=message):
        SinusoidTasks(**arguments)  # type: ignore[arg-type]


def test_invalid_sample_arguments() -> None:
    tasks = SinusoidTasks(5, 5, seed=0)
    with pytest.raises(EpisodeError, match="tasks must be an integer >= 1"):
        tasks.sample(0)
    with pytest.raises(EpisodeError, match="index must be an integer >= 0"):
        tasks.sample(4, index=-1)
    with pytest.raises(EpisodeError, match="tasks must be an integer >= 1"):
        tasks.batches(0)  # raised at the call, not at the first next()
    with pytest.raises(EpisodeError, match="start must be an integer >= 0"):
        tasks.batches(2, start=-3)
    with pytest.raises(EpisodeError, match="num must be an integer >= 2"):
        tasks.evaluate_grid(1.0, 0.0, num=1)
    assert issubclass(EpisodeError, MetarchError)
