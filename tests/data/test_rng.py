from __future__ import annotations

import numpy as np
import pytest

from metarch.data.rng import sample_without_replacement, task_keys, uniform


def test_uniform_is_a_pure_function_of_key_stream_and_position() -> None:
    keys = task_keys(3, np.arange(4))
    block = uniform(keys, 0, (5, 6))
    assert block.shape == (4, 5, 6)
    assert np.array_equal(block, uniform(keys, 0, (5, 6)))
    # A task's numbers do not depend on which other tasks are drawn with it.
    assert np.array_equal(block[2], uniform(keys[2:3], 0, (5, 6))[0])
    assert not np.array_equal(block, uniform(keys, 1, (5, 6)))
    assert not np.array_equal(block, uniform(task_keys(4, np.arange(4)), 0, (5, 6)))


def test_uniform_looks_uniform() -> None:
    values = uniform(task_keys(0, np.arange(1000)), 0, (100,)).ravel()
    assert values.min() >= 0.0 and values.max() < 1.0
    counts = np.histogram(values, bins=10, range=(0, 1))[0]
    expected = len(values) / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30.0  # 9 degrees of freedom; p ~ 4e-4


@pytest.mark.parametrize(
    ("population", "count"), [(3856, 5), (3856, 20), (20, 20), (55, 20), (600, 16)]
)
def test_sample_without_replacement_is_distinct_and_in_range(population: int, count: int) -> None:
    keys = task_keys(1, np.arange(500))
    picks = sample_without_replacement(keys, 0, np.full(500, population), count)
    assert picks.shape == (500, count)
    assert picks.min() >= 0 and picks.max() < population
    assert all(len(set(row)) == count for row in picks.tolist())


def test_sample_without_replacement_respects_ragged_populations() -> None:
    keys = task_keys(2, np.arange(300))
    population = np.tile([20, 26, 55], 100)
    picks = sample_without_replacement(keys, 0, population, 20)
    assert np.all(picks < population[:, None])
    assert all(len(set(row)) == 20 for row in picks.tolist())


def test_sample_without_replacement_is_roughly_uniform() -> None:
    keys = task_keys(5, np.arange(20000))
    picks = sample_without_replacement(keys, 0, np.full(20000, 100), 5)
    counts = np.bincount(picks.ravel(), minlength=100)
    assert counts.min() > 800 and counts.max() < 1200  # expected 1000 each
    # Every position of the output is equally likely to hold any class (random label order).
    first = np.bincount(picks[:, 0], minlength=100)
    assert first.min() > 120 and first.max() < 290  # expected 200 each


def test_purposes_never_share_draws() -> None:
    from metarch.data.rng import PURPOSES, purpose_key, seed_key

    # Episodes keep the unsalted keys every published result was drawn with.
    assert purpose_key(0, "episodes").tolist() == seed_key(0).tolist()
    keys = {name: int(purpose_key(0, name)[0]) for name in PURPOSES}
    assert len(set(keys.values())) == len(PURPOSES)
    draws = {name: uniform(purpose_key(0, name), 0, (8,)) for name in PURPOSES}
    names = list(draws)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(draws[a], draws[b]), (a, b)
    with pytest.raises(KeyError, match="unknown random purpose 'sampling'"):
        purpose_key(0, "sampling")


def test_test_time_augmentation_does_not_reuse_the_sampler_draws() -> None:
    from metarch.data.rng import purpose_key
    from metarch.meta.test_time import TestTimeAugmentation

    sampler_key = task_keys(purpose_key(0, "episodes"), np.asarray([0]))
    tta_key = TestTimeAugmentation(copies=1, seed=0).key(0)
    assert not np.array_equal(sampler_key, tta_key)
    for stream in (0, 1):
        assert not np.array_equal(
            uniform(sampler_key, stream, (6,)), uniform(tta_key, stream, (6,))
        )
