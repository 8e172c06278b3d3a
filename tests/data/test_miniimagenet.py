"""Tests of the mini-ImageNet reader (``metarch.data.miniimagenet``), on generated folders."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metarch.data import miniimagenet
from metarch.data.folder import ImageFolderFormat, decode_image
from metarch.data.formats import DATA_FORMATS, discover_datasets, load_image_set
from metarch.data.miniimagenet import (
    MINI_IMAGENET_SPLITS,
    MiniImageNetFormat,
    is_mini_imagenet_folder,
    load_mini_imagenet,
    load_mini_imagenet_split,
    read_mini_imagenet_index,
)
from metarch.errors import DataError

SPLIT_CLASSES = {"train": 3, "val": 2, "test": 2}
PER_CLASS = 6


def wnid(number: int) -> str:
    return f"n{number:08d}"


def write_mini_imagenet(
    root: Path,
    name: str = "mini",
    classes: Mapping[str, int] = SPLIT_CLASSES,
    per_class: int = PER_CLASS,
) -> Path:
    """Write a small mini-ImageNet folder: random 20x16 images, rows of classes interleaved.

    Every third image is a PNG and every fifth is grey, so decoding sees several formats
    and modes.
    """
    path = root / name
    (path / "images").mkdir(parents=True)
    number = 1
    for split, count in classes.items():
        rows = []
        for index in range(per_class):
            for c in range(count):  # interleave: classes are not contiguous in the csv
                label = wnid(number + c)
                rng = np.random.default_rng(1000 * (number + c) + index)
                pixels = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
                image = Image.fromarray(pixels, mode="RGB")
                if index % 5 == 4:
                    image = image.convert("L")
                suffix = ".png" if index % 3 == 2 else ".jpg"
                filename = f"{label}{index + 1:08d}{suffix}"
                image.save(path / "images" / filename)
                rows.append(f"{filename},{label}\n")
        (path / f"{split}.csv").write_text("filename,label\n" + "".join(rows))
        number += count
    return path


@pytest.fixture
def mini(tmp_path: Path) -> Path:
    return write_mini_imagenet(tmp_path / "root")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def replace_line(csv_path: Path, line: int, text: str) -> None:
    """Replace 1-based ``line`` of a csv with ``text``."""
    lines = csv_path.read_text().splitlines()
    lines[line - 1] = text
    csv_path.write_text("\n".join(lines) + "\n")


# --- loading --------------------------------------------------------------------------------


def test_load_train_split(mini: Path, cache: Path) -> None:
    data = load_mini_imagenet(mini, image_size=10, cache_dir=cache)

    assert data.name == "mini:train"
    assert data.images.dtype == np.uint8
    assert data.images.shape == (3 * PER_CLASS, 3, 10, 10)
    assert data.class_names == (wnid(1), wnid(2), wnid(3))  # order of first appearance
    assert data.class_groups == ("", "", "")
    np.testing.assert_array_equal(data.class_ids, [0, 1, 2])
    np.testing.assert_array_equal(data.class_offsets, [0, 6, 12, 18])
    for c, label in enumerate(data.class_names):
        names = data.image_names[c * PER_CLASS : (c + 1) * PER_CLASS]
        assert all(n.startswith(label) for n in names)
        assert list(names) == sorted(names)  # csv order within the class


def test_pixels_match_a_direct_rgb_decode(mini: Path, cache: Path) -> None:
    data = load_mini_imagenet(mini, "val", image_size=12, cache_dir=cache)
    index = data.image_names.index(f"{wnid(5)}00000005.jpg")  # a grey image
    expected = decode_image(
        mini / "images" / data.image_names[index], mode="RGB", image_size=(12, 12)
    )
    np.testing.assert_array_equal(data.images[index], expected)
    assert data.images.shape[1] == 3  # grey images are decoded as RGB too


def test_val_and_test_have_global_class_ids(mini: Path, cache: Path) -> None:
    val = load_mini_imagenet(mini, "val", image_size=8, cache_dir=cache)
    test = load_mini_imagenet(mini, "test", image_size=8, cache_dir=cache)
    assert val.name == "mini:val" and test.name == "mini:test"
    assert val.class_names == (wnid(4), wnid(5))
    np.testing.assert_array_equal(val.class_ids, [3, 4])
    np.testing.assert_array_equal(test.class_ids, [5, 6])
    assert test.num_images == 2 * PER_CLASS


def test_default_image_size_is_84(tmp_path: Path, cache: Path) -> None:
    path = write_mini_imagenet(tmp_path, classes={"train": 1, "val": 1, "test": 1}, per_class=2)
    assert load_mini_imagenet(path, cache_dir=cache).image_shape == (3, 84, 84)


def test_crlf_bom_and_blank_lines_are_accepted(mini: Path, cache: Path) -> None:
    csv_path = mini / "train.csv"
    text = csv_path.read_text()
    csv_path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode() + b"\r\n\r\n")
    assert load_mini_imagenet(mini, image_size=8, cache_dir=cache).num_images == 18


def test_load_by_qualified_name(mini: Path, cache: Path) -> None:
    root = mini.parent
    train = load_mini_imagenet_split("mini", root, image_size=8, cache_dir=cache)
    assert train.name == "mini:train"
    assert load_mini_imagenet_split("mini:train", root, image_size=8, cache_dir=cache).name == (
        "mini:train"
    )
    val = load_mini_imagenet_split("mini:val", root, image_size=8, cache_dir=cache)
    assert val.class_names == (wnid(4), wnid(5))


def test_qualified_name_errors(mini: Path) -> None:
    with pytest.raises(DataError, match=r"unknown mini-ImageNet split 'bogus'"):
        load_mini_imagenet_split("mini:bogus", mini.parent)
    with pytest.raises(DataError, match=r"no mini-ImageNet folder 'nope' .*found: mini"):
        load_mini_imagenet_split("nope:val", mini.parent)
    with pytest.raises(DataError, match=r"no mini-ImageNet folder ''"):
        load_mini_imagenet_split(":val", mini.parent)


def test_qualified_name_uses_the_data_root_environment(
    mini: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METARCH_DATA", str(mini.parent))
    assert load_mini_imagenet_split("mini:test", image_size=8, cache_dir=cache).num_classes == 2


# --- validation errors ----------------------------------------------------------------------


@pytest.mark.parametrize("split", MINI_IMAGENET_SPLITS)
def test_missing_csv(mini: Path, split: str) -> None:
    (mini / f"{split}.csv").unlink()
    with pytest.raises(DataError, match=rf"{split}\.csv: missing; a mini-ImageNet folder needs"):
        load_mini_imagenet(mini)


def test_missing_images_folder(mini: Path) -> None:
    for file in (mini / "images").iterdir():
        file.unlink()
    (mini / "images").rmdir()
    with pytest.raises(DataError, match=r"images: missing"):
        load_mini_imagenet(mini)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_mini_imagenet(tmp_path / "nope")


@pytest.mark.parametrize("header", ["label,filename", "filename", "file,label,extra", ""])
def test_bad_header(mini: Path, header: str) -> None:
    replace_line(mini / "val.csv", 1, header)
    with pytest.raises(DataError, match=r"val\.csv:1: expected the header 'filename,label'"):
        load_mini_imagenet(mini)


def test_empty_csv(mini: Path) -> None:
    (mini / "test.csv").write_text("")
    with pytest.raises(DataError, match=r"test\.csv:1: .* got an empty file"):
        load_mini_imagenet(mini)


def test_header_only_csv(mini: Path) -> None:
    (mini / "test.csv").write_text("filename,label\n")
    with pytest.raises(DataError, match=r"test\.csv: has a header but no rows"):
        load_mini_imagenet(mini)


@pytest.mark.parametrize(
    "row",
    [
        "n0000000100000001.jpg",
        "n0000000100000001.jpg,n00000001,extra",
        "n0000000100000001.jpg,",
        ",n00000001",
    ],
)
def test_malformed_row(mini: Path, row: str) -> None:
    replace_line(mini / "train.csv", 4, row)
    with pytest.raises(DataError, match=r"train\.csv:4: malformed row"):
        load_mini_imagenet(mini)


@pytest.mark.parametrize("filename", ["../secret.jpg", "sub/x.jpg", "..", "a\\b.jpg"])
def test_filename_with_a_path_is_malformed(mini: Path, filename: str) -> None:
    replace_line(mini / "train.csv", 3, f"{filename},{wnid(1)}")
    with pytest.raises(DataError, match=r"train\.csv:3: malformed filename"):
        load_mini_imagenet(mini)


def test_listed_image_missing(mini: Path) -> None:
    (mini / "images" / f"{wnid(6)}00000002.jpg").unlink()
    with pytest.raises(
        DataError, match=rf"test\.csv:4: image .*{wnid(6)}00000002\.jpg does not exist"
    ):
        load_mini_imagenet(mini)


def test_class_in_two_splits_is_a_leak(mini: Path) -> None:
    # Line 3 of val.csv is the first row of class 5; relabel it as train's class 2.
    replace_line(mini / "val.csv", 3, f"{wnid(5)}00000001.jpg,{wnid(2)}")
    with pytest.raises(
        DataError, match=rf"val\.csv:3: class {wnid(2)} is also in train\.csv \(line 3\)"
    ):
        load_mini_imagenet(mini, "test")  # every split is checked, whatever is loaded


def test_filename_in_two_splits(mini: Path) -> None:
    replace_line(mini / "test.csv", 2, f"{wnid(1)}00000001.jpg,{wnid(6)}")
    with pytest.raises(
        DataError,
        match=rf"test\.csv:2: {wnid(1)}00000001\.jpg is already listed in train\.csv:2",
    ):
        load_mini_imagenet(mini)


def test_filename_twice_in_one_split(mini: Path) -> None:
    replace_line(mini / "train.csv", 5, f"{wnid(1)}00000001.jpg,{wnid(1)}")
    with pytest.raises(DataError, match=r"train\.csv:5: .* is listed twice \(first at line 2\)"):
        load_mini_imagenet(mini)


def test_corrupt_image_is_named(mini: Path, cache: Path) -> None:
    bad = mini / "images" / f"{wnid(2)}00000004.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match=rf"{wnid(2)}00000004\.jpg: not a readable image"):
        load_mini_imagenet(mini, image_size=8, cache_dir=cache)


def test_unknown_split(mini: Path) -> None:
    with pytest.raises(DataError, match=r"unknown mini-ImageNet split 'validation'"):
        load_mini_imagenet(mini, "validation")


@pytest.mark.parametrize("size", [0, 2000, 8.5, True, (8, 8)])
def test_bad_image_size(mini: Path, size: object) -> None:
    with pytest.raises(DataError, match="image_size must be"):
        load_mini_imagenet(mini, image_size=size)  # type: ignore[arg-type]


def test_index_reads_all_splits(mini: Path) -> None:
    index = read_mini_imagenet_index(mini)
    assert list(index) == ["train", "val", "test"]
    assert index["train"].classes == (wnid(1), wnid(2), wnid(3))
    assert index["train"].lines[:2] == (2, 3)
    assert len(index["test"].filenames) == 2 * PER_CLASS


# --- cache ----------------------------------------------------------------------------------


def test_second_load_comes_from_the_cache(
    mini: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = decode_image

    def counting(path: Path, *, mode: str, image_size: tuple[int, int]) -> np.ndarray:
        calls.append(path)
        return real(path, mode=mode, image_size=image_size)

    monkeypatch.setattr(miniimagenet, "decode_image", counting)
    first = load_mini_imagenet(mini, "train", image_size=8, cache_dir=cache)
    assert len(calls) == 18
    second = load_mini_imagenet(mini, "train", image_size=8, cache_dir=cache)
    assert len(calls) == 18  # nothing decoded again
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.class_offsets, second.class_offsets)
    np.testing.assert_array_equal(first.class_ids, second.class_ids)
    assert (first.name, first.class_names, first.image_names) == (
        second.name,
        second.class_names,
        second.image_names,
    )

    load_mini_imagenet(mini, "val", image_size=8, cache_dir=cache)  # splits cached apart
    assert len(calls) == 18 + 12
    load_mini_imagenet(mini, "train", image_size=9, cache_dir=cache)
    assert len(calls) == 18 + 12 + 18
    assert not list(cache.glob("*:*"))  # no ':' in cache file names


def test_cache_hit_still_validates(mini: Path, cache: Path) -> None:
    load_mini_imagenet(mini, image_size=8, cache_dir=cache)
    replace_line(mini / "val.csv", 1, "bad,header")
    with pytest.raises(DataError, match="expected the header"):
        load_mini_imagenet(mini, image_size=8, cache_dir=cache)


# --- discovery ------------------------------------------------------------------------------


def test_discover_reports_one_summary_per_folder(mini: Path) -> None:
    write_mini_imagenet(mini.parent, "other", classes={"train": 1, "val": 1, "test": 1})
    found = MiniImageNetFormat().discover(mini.parent)
    assert [s.name for s in found] == ["mini", "other"]
    summary = found[0]
    assert summary.format == "mini-imagenet"
    assert summary.path == mini
    assert (summary.alphabets, summary.classes, summary.images) == (None, 7, 42)
    assert summary.details == {
        "splits": {
            "train": {"classes": 3, "images": 18},
            "val": {"classes": 2, "images": 12},
            "test": {"classes": 2, "images": 12},
        }
    }
    assert summary.to_json()["details"]["splits"]["val"]["classes"] == 2


def test_discover_reports_broken_folders_without_failing(mini: Path) -> None:
    (mini / "val.csv").unlink()
    [summary] = MiniImageNetFormat().discover(mini.parent)
    assert (summary.classes, summary.images) == (0, 0)
    assert "val.csv: missing" in summary.details["error"]
    with pytest.raises(DataError, match=r"val\.csv: missing"):
        MiniImageNetFormat().load(summary, image_size=8)
    # Still claimed as mini-ImageNet, never mistaken for an image-folder set.
    assert is_mini_imagenet_folder(mini)
    assert ImageFolderFormat().discover(mini.parent) == []


def test_detector(tmp_path: Path, mini: Path) -> None:
    assert is_mini_imagenet_folder(mini)
    assert not is_mini_imagenet_folder(tmp_path)
    (tmp_path / "csv_only").mkdir()
    (tmp_path / "csv_only" / "train.csv").write_text("filename,label\n")
    assert not is_mini_imagenet_folder(tmp_path / "csv_only")


def test_registered_and_loadable_by_name(mini: Path, cache: Path) -> None:
    assert DATA_FORMATS.get("mini-imagenet") is MiniImageNetFormat
    summaries = [s for s in discover_datasets(mini.parent) if s.name == "mini"]
    assert [s.format for s in summaries] == ["mini-imagenet"]
    data = load_image_set("mini", mini.parent, image_size=8, cache_dir=cache)
    assert data.name == "mini:train"
    assert data.image_shape == (3, 8, 8)
