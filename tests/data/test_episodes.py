from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metarch.data.episodes import EpisodeBatch, EpisodeSampler
from metarch.data.omniglot import OmniglotSet, load_omniglot
from metarch.data.pools import NAMED_SPLITS, ClassPool
from metarch.errors import EpisodeError
from tests.fixtures import write_omniglot_set

ALPHABETS = {"Alpha": 6, "Beta": 5, "Gamma": 3}


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    write_omniglot_set(tmp_path, "images_background", ALPHABETS)
    return tmp_path


@pytest.fixture
def small_set(fixture_root: Path) -> OmniglotSet:
    return load_omniglot("background", fixture_root)


def _digest(batch: EpisodeBatch) -> str:
    digest = hashlib.sha256()
    for tensor in (batch.support_images, batch.query_images, batch.entries, batch.query_image_ids):
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def test_shapes_labels_and_ranges(background: OmniglotSet) -> None:
    pool = ClassPool.whole(background).with_rotations()
    batch = EpisodeSampler(pool, ways=5, shots=2, queries=3, seed=0).sample(tasks=4)
    assert batch.support_images.shape == (4, 10, 1, 28, 28)
    assert batch.query_images.shape == (4, 15, 1, 28, 28)
    assert batch.support_images.dtype == torch.float32
    assert float(batch.support_images.min()) >= 0.0 and float(batch.support_images.max()) <= 1.0
    assert batch.support_labels.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]] * 4
    assert batch.query_labels[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert batch.entries.shape == (4, 5)
    assert all(len(set(row)) == 5 for row in batch.entries.tolist())


def test_support_and_query_never_share_an_image(background: OmniglotSet) -> None:
    pool = ClassPool.whole(background).with_rotations()
    sampler = EpisodeSampler(pool, ways=20, shots=5, queries=15, seed=7)
    for batch_index in range(5):
        batch = sampler.sample(tasks=16, batch_index=batch_index)
        for t in range(batch.num_tasks):
            turns = pool.rotations[batch.entries[t].numpy()]
            # An image is identified by its index in the set and the rotation applied.
            support = set(
                zip(batch.support_image_ids[t].tolist(), np.repeat(turns, 5).tolist(), strict=True)
            )
            query = set(
                zip(batch.query_image_ids[t].tolist(), np.repeat(turns, 15).tolist(), strict=True)
            )
            assert len(support) == 100 and len(query) == 300
            assert not support & query


def test_images_match_their_ids_and_rotations(small_set: OmniglotSet) -> None:
    pool = ClassPool.whole(small_set).with_rotations()
    batch = EpisodeSampler(pool, ways=6, shots=1, queries=2, seed=3).sample(tasks=8)
    for t in range(8):
        for label, entry in enumerate(batch.entries[t].tolist()):
            turns = int(pool.rotations[entry])
            image_id = int(batch.support_image_ids[t, label])
            assert small_set.class_offsets[pool.classes[entry]] <= image_id
            expected = np.rot90(small_set.images[image_id], turns, axes=(-2, -1)) / 255.0
            assert np.allclose(batch.support_images[t, label].numpy(), expected)
            for q in range(2):
                query_id = int(batch.query_image_ids[t, label * 2 + q])
                expected = np.rot90(small_set.images[query_id], turns, axes=(-2, -1)) / 255.0
                assert np.allclose(batch.query_images[t, label * 2 + q].numpy(), expected)


def test_labels_are_assigned_in_random_class_order(small_set: OmniglotSet) -> None:
    pool = ClassPool.whole(small_set)
    entries = EpisodeSampler(pool, ways=3, shots=1, queries=1, seed=0).sample(500).entries
    # Label 0 goes to every class about equally often, and not to the smallest entry.
    counts = np.bincount(entries[:, 0].numpy(), minlength=len(pool))
    assert counts.min() > 10
    assert not torch.all(entries[:, 0] < entries[:, 1])


def test_determinism_and_independence_from_global_rng(small_set: OmniglotSet) -> None:
    pool = ClassPool.whole(small_set).with_rotations()
    first = EpisodeSampler(pool, 5, 1, 5, seed=11).sample(8, batch_index=3)
    np.random.seed(123)
    torch.manual_seed(123)
    np.random.random(1000)
    second = EpisodeSampler(pool, 5, 1, 5, seed=11).sample(8, batch_index=3)
    assert _digest(first) == _digest(second)
    assert _digest(first) != _digest(EpisodeSampler(pool, 5, 1, 5, seed=12).sample(8, 3))


def test_batches_are_slices_of_one_task_stream(small_set: OmniglotSet) -> None:
    sampler = EpisodeSampler(ClassPool.whole(small_set), 4, 2, 3, seed=5)
    batch = sampler.sample(tasks=4, batch_index=2)
    assert batch.task_indices.tolist() == [8, 9, 10, 11]
    singles = [sampler.sample(tasks=1, batch_index=i) for i in range(8, 12)]
    assert torch.equal(batch.support_images, torch.cat([s.support_images for s in singles]))
    assert torch.equal(batch.query_image_ids, torch.cat([s.query_image_ids for s in singles]))
    reordered = sampler.tasks([11, 8])
    assert torch.equal(reordered.entries, batch.entries[[3, 0]])
    stream = sampler.batches(tasks=4, start=2)
    assert torch.equal(next(stream).entries, batch.entries)


def test_identical_across_processes(fixture_root: Path, small_set: OmniglotSet) -> None:
    here = _digest(
        EpisodeSampler(ClassPool.whole(small_set).with_rotations(), 5, 1, 3, seed=9).sample(6, 2)
    )
    script = (
        "import hashlib, sys\n"
        "from metarch.data.omniglot import load_omniglot\n"
        "from metarch.data.pools import ClassPool\n"
        "from metarch.data.episodes import EpisodeSampler\n"
        f"s = load_omniglot('background', {str(fixture_root)!r})\n"
        "b = EpisodeSampler(ClassPool.whole(s).with_rotations(), 5, 1, 3, seed=9).sample(6, 2)\n"
        "d = hashlib.sha256()\n"
        "for t in (b.support_images, b.query_images, b.entries, b.query_image_ids):\n"
        "    d.update(t.numpy().tobytes())\n"
        "print(d.hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert digests == {here}


def test_within_alphabet_episodes(small_set: OmniglotSet) -> None:
    pool = ClassPool.whole(small_set)
    sampler = EpisodeSampler(pool, ways=5, shots=1, queries=1, seed=2, within_group=True)
    batch = sampler.sample(tasks=200)
    groups = pool.entry_groups[batch.entries.numpy()]
    assert np.all(groups == groups[:, :1])
    # Only alphabets with at least 5 characters (Alpha, Beta) are eligible, both are used.
    names = {pool.group_names[g] for g in groups[:, 0].tolist()}
    assert names == {"Alpha", "Beta"}


def test_within_alphabet_episodes_never_mix_rotations(small_set: OmniglotSet) -> None:
    pool = ClassPool.whole(small_set).with_rotations()
    assert "Alpha@rot090" in pool.group_names
    assert len(pool.group_names) == 4 * len(ALPHABETS)
    sampler = EpisodeSampler(pool, ways=5, shots=1, queries=1, seed=0, within_group=True)
    batch = sampler.sample(tasks=100)
    entries = batch.entries.numpy()
    rotations = pool.rotations[entries]
    assert np.all(rotations == rotations[:, :1])
    assert len(set(rotations[:, 0].tolist())) == 4  # every rotation is drawn
    groups = pool.entry_groups[entries]
    assert np.all(groups == groups[:, :1])
    # Only alphabets with at least 5 characters are eligible, in every rotation (with all
    # rotations mixed, every alphabet would have had 4x as many classes).
    alphabets = {small_set.class_groups[c] for c in pool.classes[entries].ravel().tolist()}
    assert alphabets == {"Alpha", "Beta"}


def test_within_alphabet_on_real_held_out_alphabets(background: OmniglotSet) -> None:
    pool = NAMED_SPLITS["background"].pool(background, "test")
    sampler = EpisodeSampler(pool, ways=20, shots=1, queries=1, seed=0, within_group=True)
    batch = sampler.sample(tasks=50)
    groups = pool.entry_groups[batch.entries.numpy()]
    assert np.all(groups == groups[:, :1])
    assert all(len(set(row)) == 20 for row in batch.entries.tolist())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ways": 15}, "15-way episodes need at least 15 classes, but pool 'background' has 14"),
        ({"shots": 10, "queries": 11}, "21 images per class, but class .* has only 20"),
        (
            {"ways": 7, "within_group": True},
            "alphabet with at least 7 classes; the largest .* has 6",
        ),
        ({"ways": 0}, "need ways >= 1"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_impossible_requests(
    small_set: OmniglotSet, kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"ways": 5, "shots": 1, "queries": 1} | kwargs
    with pytest.raises(EpisodeError, match=message):
        EpisodeSampler(ClassPool.whole(small_set), **arguments)  # type: ignore[arg-type]


def test_other_dtypes(small_set: OmniglotSet) -> None:
    batch = EpisodeSampler(ClassPool.whole(small_set), 2, 1, 1, dtype=torch.float64).sample()
    assert batch.support_images.dtype == torch.float64
    with pytest.raises(EpisodeError, match="dtype"):
        EpisodeSampler(ClassPool.whole(small_set), 2, 1, 1, dtype=torch.int32)
