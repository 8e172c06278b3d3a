from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metarch.data.omniglot import OmniglotSet, load_omniglot
from metarch.data.pools import (
    NAMED_SPLITS,
    ClassPool,
    NamedSplit,
    alphabet_split,
    class_split,
    parse_split_file,
)
from metarch.errors import DataError
from tests.fixtures import write_omniglot_set


@pytest.fixture
def small_set(tmp_path: Path) -> OmniglotSet:
    write_omniglot_set(tmp_path, "images_background", {"Alpha": 4, "Beta": 3, "Gamma": 2})
    return load_omniglot("background", tmp_path)


def test_named_background_split_is_reproducible_and_disjoint(background: OmniglotSet) -> None:
    split = NAMED_SPLITS["background"]
    regenerated = alphabet_split(
        background, split.sizes, seed=split.seed, min_classes=split.min_classes
    )
    assert regenerated == dict(split.parts)
    parts = [set(alphabets) for alphabets in split.parts.values()]
    assert sum(len(p) for p in parts) == 30 == len(set().union(*parts))
    pools = {part: split.pool(background, part) for part in split.parts}
    assert sum(len(p) for p in pools.values()) == 964
    entries = [set(p.classes.tolist()) for p in pools.values()]
    assert not (entries[0] & entries[1]) and not (entries[0] & entries[2])
    assert not (entries[1] & entries[2])
    # Every held-out alphabet supports within-alphabet 20-way episodes.
    for part in ("val", "test"):
        for alphabet in split.parts[part]:
            assert len(background.classes_in_group(alphabet)) >= 20
    # Joined parts: exactly the union, named as asked.
    joined = split.pool(background, "train+val")
    assert set(joined.classes.tolist()) == entries[0] | entries[1]
    assert joined.name == "background:train+val"


def test_joined_parts_are_checked(background: OmniglotSet) -> None:
    split = NAMED_SPLITS["background"]
    with pytest.raises(DataError, match=r"no part 'tset'.*join several with"):
        split.pool(background, "train+tset")
    with pytest.raises(DataError, match="names a part twice"):
        split.pool(background, "val+val")


def test_alphabet_split_is_deterministic_and_seeded(small_set: OmniglotSet) -> None:
    sizes = {"train": -1, "test": 1}
    assert alphabet_split(small_set, sizes, seed=1) == alphabet_split(small_set, sizes, seed=1)
    splits = {tuple(alphabet_split(small_set, sizes, seed=s)["test"]) for s in range(20)}
    assert len(splits) > 1
    with pytest.raises(DataError, match="needs 1 alphabets with at least 5"):
        alphabet_split(small_set, sizes, min_classes={"test": 5})


def test_split_file_round_trip_with_rotations(small_set: OmniglotSet, tmp_path: Path) -> None:
    pool = ClassPool.from_groups(small_set, ["Beta"]).with_rotations()
    assert len(pool) == 12
    assert pool.entry_names[:4] == (
        "Beta/character01/rot000",
        "Beta/character02/rot000",
        "Beta/character03/rot000",
        "Beta/character01/rot090",
    )
    path = tmp_path / "split.txt"
    pool.write_split_file(path)
    again = ClassPool.from_split_file(small_set, path)
    assert np.array_equal(again.classes, pool.classes)
    assert np.array_equal(again.rotations, pool.rotations)


def test_split_file_lines_without_rotation(small_set: OmniglotSet, tmp_path: Path) -> None:
    path = tmp_path / "split.txt"
    path.write_text("# comment\nAlpha/character02\n\nGamma/character01/rot270\n")
    classes, rotations = parse_split_file(small_set, path)
    assert [small_set.class_names[c] for c in classes] == ["Alpha/character02", "Gamma/character01"]
    assert rotations.tolist() == [0, 3]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("Alpha/character01\nKlingon/character01\n", r"split.txt:2: unknown alphabet 'Klingon'"),
        ("Alpha/character09\n", r"split.txt:1: alphabet 'Alpha' has no 'character09'"),
        ("Alpha/character01/rot045\n", r"split.txt:1: bad rotation 'rot045'"),
        ("Alpha\n", r"split.txt:1: expected 'Alphabet/characterNN'"),
        ("Alpha/character01\nAlpha/character01/rot000\n", r"split.txt:2: .* repeats line 1"),
        ("# nothing\n", "lists no classes"),
    ],
)
def test_split_file_errors(
    small_set: OmniglotSet, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "split.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        ClassPool.from_split_file(small_set, path)


def test_missing_split_file(small_set: OmniglotSet, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read split file"):
        ClassPool.from_split_file(small_set, tmp_path / "absent.txt")


def test_pool_validation(small_set: OmniglotSet) -> None:
    with pytest.raises(DataError, match="unknown group 'Delta'"):
        ClassPool.from_groups(small_set, ["Delta"])
    with pytest.raises(DataError, match="90, 180 or 270"):
        ClassPool.whole(small_set).with_rotations([45])
    with pytest.raises(DataError, match="twice"):
        ClassPool(small_set, np.array([0, 0]), np.array([1, 1]))


def test_with_rotations_keeps_listed_rotations_once(small_set: OmniglotSet) -> None:
    pool = ClassPool(small_set, np.array([0, 0]), np.array([0, 2]))
    rotated = pool.with_rotations()
    assert sorted(zip(rotated.classes.tolist(), rotated.rotations.tolist(), strict=True)) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
    ]


def test_class_split_is_deterministic_and_disjoint(small_set: OmniglotSet) -> None:
    parts = class_split(small_set, {"train": -1, "val": 2, "test": 3}, seed=4)
    assert parts == class_split(small_set, {"train": -1, "val": 2, "test": 3}, seed=4)
    assert [len(p) for p in parts.values()] == [4, 2, 3]
    assert sorted(sum(parts.values(), ())) == sorted(small_set.class_names)
    with pytest.raises(DataError, match="need 12 classes"):
        class_split(small_set, {"a": 6, "b": 6})


def test_tiny_imagenet_split_is_pinned(shared_data_root: Path, session_cache: Path) -> None:
    """The published class split of the Tiny-ImageNet background set never moves."""
    from metarch.data.formats import load_image_set

    if not (shared_data_root / "tiny_imagenet_fs").is_dir():
        pytest.skip(reason="../shared/data/tiny_imagenet_fs is absent")
    dataset = load_image_set(
        "tiny_imagenet_fs_background", shared_data_root, image_size=8, cache_dir=session_cache
    )
    assert dataset.num_classes == 160 and dataset.num_images == 32_000
    assert dataset.image_shape == (3, 8, 8)
    split = NAMED_SPLITS["tiny_imagenet_fs_background"]
    assert split.reproduce(dataset) == dict(split.parts)
    assert [len(split.parts[p]) for p in ("train", "val", "test")] == [96, 32, 32]
    # Pinned by name: a changed split changes these.
    assert split.parts["test"][:3] == ("n01644900", "n01742172", "n01945685")
    assert split.parts["val"][:2] == ("n01774750", "n01944390")
    pools = [split.pool(dataset, p) for p in ("train", "val", "test")]
    seen = [set(p.classes.tolist()) for p in pools]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert sum(map(len, seen)) == 160
    assert pools[2].name == "tiny_imagenet_fs_background:test"


def test_class_split_pool_names_missing_classes(small_set: OmniglotSet) -> None:
    split = NamedSplit("x", {"a": ("Alpha/character01", "Nope/character09")}, 0, {}, {}, "classes")
    with pytest.raises(DataError, match=r"lacks 1 classes.*'Nope/character09'"):
        split.pool(small_set, "a")
