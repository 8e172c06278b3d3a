from __future__ import annotations

import io
import logging
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metarch.data import archive as archive_module
from metarch.data import omniglot as omniglot_module
from metarch.data.formats import discover_datasets, load_image_set
from metarch.data.omniglot import OmniglotSet, find_omniglot_source, load_omniglot
from metarch.data.resolve import load_pool
from metarch.errors import DataError
from tests.fixtures import omniglot_png, write_omniglot_set

ALPHABETS = {"Alpha": 3, "Beta": 2}


@pytest.mark.parametrize(
    ("set_name", "alphabets", "characters", "images"),
    [
        ("background", 30, 964, 19280),
        ("background_small1", 5, 136, 2720),
        ("background_small2", 5, 156, 3120),
    ],
)
def test_official_counts(
    shared_data_root: Path,
    session_cache: Path,
    set_name: str,
    alphabets: int,
    characters: int,
    images: int,
) -> None:
    dataset = load_omniglot(set_name, shared_data_root, cache_dir=session_cache)
    assert len(dataset.alphabets) == alphabets
    assert dataset.num_classes == characters
    assert dataset.num_images == images
    assert dataset.images.shape == (images, 1, 28, 28)
    assert np.all(dataset.class_sizes == 20)


def test_background_ids_and_drawings(background: OmniglotSet) -> None:
    dataset = background
    characters = dataset.characters
    assert [c.id for c in characters] == list(range(1, 965))
    latin = [c for c in characters if c.alphabet == "Latin"]
    assert (latin[0].id, latin[-1].id, len(latin)) == (683, 708, 26)
    assert dataset.drawers("Latin/character01") == list(range(1, 21))
    drawings = dataset.drawings("Latin/character01")
    assert drawings.shape == (20, 1, 28, 28)
    # Ink is bright on a dark background, and antialiasing leaves grey edges.
    assert drawings.mean() < 60 and drawings.max() == 255
    assert len(np.unique(drawings)) > 2


def test_small_sets_share_pixels_with_background(
    shared_data_root: Path, session_cache: Path, background: OmniglotSet
) -> None:
    small = load_omniglot("background_small1", shared_data_root, cache_dir=session_cache)
    for name in ("Greek/character01", "Korean/character07"):
        assert np.array_equal(small.drawings(name), background.drawings(name))


def test_zip_and_folder_decode_identically(tmp_path: Path) -> None:
    write_omniglot_set(tmp_path / "z", "images_background", ALPHABETS)
    write_omniglot_set(tmp_path / "f", "images_background", ALPHABETS, as_zip=False)
    from_zip = load_omniglot("background", tmp_path / "z")
    from_folder = load_omniglot("background", tmp_path / "f")
    assert np.array_equal(from_zip.images, from_folder.images)
    assert from_zip.class_names == from_folder.class_names
    assert from_zip.class_names[0] == "Alpha/character01"
    assert from_zip.alphabets == ("Alpha", "Beta")


def test_omniglot_subfolder_and_env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_omniglot_set(tmp_path / "omniglot", "images_evaluation", ALPHABETS, first_id=965)
    monkeypatch.setenv("METARCH_DATA", str(tmp_path))
    dataset = load_omniglot("evaluation")
    assert dataset.class_ids.tolist() == [965, 966, 967, 968, 969]


def test_image_size_is_configurable(tmp_path: Path) -> None:
    write_omniglot_set(tmp_path, "images_background", {"Alpha": 1}, drawings=2)
    assert load_omniglot("background", tmp_path, image_size=105).image_shape == (1, 105, 105)
    assert load_omniglot("background", tmp_path, image_size=14).image_shape == (1, 14, 14)


def test_second_load_reads_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    write_omniglot_set(tmp_path, "images_background", ALPHABETS)
    calls = []
    original = omniglot_module._decode

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(omniglot_module, "_decode", counting)
    first = load_omniglot("background", tmp_path)
    second = load_omniglot("background", tmp_path)
    assert len(calls) == 1
    assert np.array_equal(first.images, second.images)
    load_omniglot("background", tmp_path, image_size=20)  # another size is another entry
    assert len(calls) == 2
    # A damaged entry is a miss, not a crash.
    for entry in isolated_cache.glob("omniglot-background-*.npz"):
        entry.write_bytes(b"garbage")
    assert np.array_equal(load_omniglot("background", tmp_path).images, first.images)
    assert len(calls) == 3


def test_changed_archive_is_decoded_again(tmp_path: Path) -> None:
    write_omniglot_set(tmp_path, "images_background", {"Alpha": 1}, drawings=2)
    first = load_omniglot("background", tmp_path)
    write_omniglot_set(tmp_path, "images_background", {"Alpha": 2}, drawings=2)
    assert load_omniglot("background", tmp_path).num_classes == first.num_classes + 1


def _rewrite_member(zip_path: Path, member_suffix: str, data: bytes) -> None:
    with zipfile.ZipFile(zip_path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    target = next(name for name in files if name.endswith(member_suffix))
    files[target] = data
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)


def _png(size: tuple[int, int], mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_png((64, 64), "1"), "expected a 105x105 1-bit PNG"),
        (_png((105, 105), "RGB"), "mode 'RGB'"),
        (b"not a png", "not a readable PNG"),
    ],
)
def test_bad_images_are_rejected_and_nothing_is_cached(
    tmp_path: Path, isolated_cache: Path, data: bytes, message: str
) -> None:
    archive = write_omniglot_set(tmp_path, "images_background", ALPHABETS)
    _rewrite_member(archive, "0002_05.png", data)
    before = set(isolated_cache.glob("*")) if isolated_cache.exists() else set()
    with pytest.raises(DataError, match=message) as info:
        load_omniglot("background", tmp_path)
    assert "Alpha/character02/0002_05.png" in str(info.value)
    after = set(isolated_cache.glob("*")) if isolated_cache.exists() else set()
    assert after == before


def test_truncated_archive(tmp_path: Path) -> None:
    archive = write_omniglot_set(tmp_path, "images_background", ALPHABETS)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_omniglot("background", tmp_path)


def test_corrupt_member(tmp_path: Path) -> None:
    archive = write_omniglot_set(tmp_path, "images_background", {"Alpha": 1}, drawings=2)
    raw = bytearray(archive.read_bytes())
    # Flip bytes inside the first member's data (just past its local header): CRC fails.
    raw[60:70] = bytes(10)
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt"):
        load_omniglot("background", tmp_path)


def test_wrong_layout_inside_zip(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as archive:
        archive.writestr("images_background/Alpha/0001_01.png", omniglot_png(1))
    with pytest.raises(DataError, match="official layout"):
        load_omniglot("background", tmp_path)
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as archive:
        archive.writestr("other_top/Alpha/character01/0001_01.png", omniglot_png(1))
    with pytest.raises(DataError, match="no files below 'images_background/'"):
        load_omniglot("background", tmp_path)


def test_inconsistent_character_ids(tmp_path: Path) -> None:
    folder = write_omniglot_set(tmp_path, "images_background", {"Alpha": 1}, as_zip=False)
    (folder / "Alpha/character01/0001_02.png").rename(folder / "Alpha/character01/0007_02.png")
    with pytest.raises(DataError, match="character id 7 differs"):
        load_omniglot("background", tmp_path)


def test_missing_set_names_the_files_to_place(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_omniglot("evaluation", tmp_path)
    message = str(info.value)
    assert "images_evaluation.zip" in message and str(tmp_path / "omniglot") in message


def test_unknown_set_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="known sets: background"):
        load_omniglot("backgrund", tmp_path)


def test_discovery_counts_without_decoding(tmp_path: Path) -> None:
    write_omniglot_set(tmp_path / "omniglot", "images_background", ALPHABETS)
    write_omniglot_set(tmp_path, "images_background_small1", {"Gamma": 2}, as_zip=False)
    found = {s.name: s for s in discover_datasets(tmp_path)}
    assert found["background"].to_json() | {"path": ""} == {
        "name": "background",
        "format": "omniglot",
        "path": "",
        "alphabets": 2,
        "classes": 5,
        "images": 100,
    }
    assert (found["background_small1"].alphabets, found["background_small1"].images) == (1, 40)


# --- damaged and partial sets ---------------------------------------------------------------


def _header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` 1-bit pixels, with almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_corrupt_archive_of_another_set_does_not_block(tmp_path: Path) -> None:
    write_omniglot_set(tmp_path, "images_background", ALPHABETS)
    evaluation = write_omniglot_set(tmp_path, "images_evaluation", {"Gamma": 2}, first_id=10)
    evaluation.write_bytes(evaluation.read_bytes()[: evaluation.stat().st_size // 2])
    found = {s.name: s for s in discover_datasets(tmp_path)}
    assert found["background"].problem is None and found["background"].classes == 5
    problem = found["evaluation"].problem
    assert problem is not None and "truncated or corrupt" in problem
    assert found["evaluation"].to_json()["problem"] == problem
    assert load_image_set("background", tmp_path, image_size=28).num_classes == 5
    pool = load_pool("background", tmp_path)  # the path every command takes
    assert len(pool) == 5
    with pytest.raises(DataError, match=r"images_evaluation\.zip is not a readable zip"):
        load_image_set("evaluation", tmp_path, image_size=28)


def test_partly_extracted_folder_does_not_hide_the_complete_zip(tmp_path: Path) -> None:
    archive = write_omniglot_set(tmp_path / "omniglot", "images_background", ALPHABETS)
    write_omniglot_set(tmp_path, "images_background", {"Alpha": 3}, drawings=4, as_zip=False)
    assert find_omniglot_source("background", tmp_path) == archive
    (summary,) = [s for s in discover_datasets(tmp_path) if s.name == "background"]
    assert (summary.path, summary.classes, summary.images) == (archive, 5, 100)
    assert load_omniglot("background", tmp_path).num_classes == 5
    # A complete folder (as many images as the zip) is still read first.
    write_omniglot_set(tmp_path, "images_background", ALPHABETS, as_zip=False)
    assert find_omniglot_source("background", tmp_path) == tmp_path / "images_background"
    # An unreadable zip never wins over a readable folder.
    archive.write_bytes(b"PK\x03\x04 truncated")
    shutil.rmtree(tmp_path / "images_background" / "Beta")
    assert find_omniglot_source("background", tmp_path) == tmp_path / "images_background"


def test_an_incomplete_folder_alone_is_read_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_omniglot_set(tmp_path, "images_background", ALPHABETS, as_zip=False)
    (summary,) = discover_datasets(tmp_path)
    expected = (
        f"{folder} holds 2 alphabets, 5 characters and 100 images, but the official "
        "background set has 30, 964 and 19,280: it looks partly extracted"
    )
    assert summary.warning is not None and summary.warning.startswith(expected)
    with caplog.at_level(logging.WARNING, logger="metarch"):
        assert load_omniglot("background", tmp_path).num_classes == 5
    assert expected in caplog.text
    # Zips are the official archives: no such warning (a truncated one is unreadable).
    write_omniglot_set(tmp_path, "images_background_small1", ALPHABETS)
    small = [s for s in discover_datasets(tmp_path) if s.name == "background_small1"]
    assert small[0].warning is None


def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = write_omniglot_set(tmp_path, "images_background", ALPHABETS)
    # A PNG claiming 30000x30000 pixels: refused from its header (PIL's own bomb check).
    _rewrite_member(archive, "0002_05.png", _header_only_png(30_000, 30_000))
    with pytest.raises(DataError, match="refused as a possible decompression bomb") as info:
        load_omniglot("background", tmp_path)
    assert "Alpha/character02/0002_05.png" in str(info.value)
    # One below PIL's limit but not 105x105: refused before its pixels are decoded.
    _rewrite_member(archive, "0002_05.png", _header_only_png(9_000, 9_000))
    with pytest.raises(DataError, match="got 9000x9000"):
        load_omniglot("background", tmp_path)
    # A member that unpacks to more than the archive limit is not decompressed.
    _rewrite_member(archive, "0002_05.png", omniglot_png(1))
    monkeypatch.setattr(archive_module, "MAX_MEMBER_BYTES", 100)
    with pytest.raises(DataError, match="refused as a possible decompression bomb: it unpacks"):
        load_omniglot("background", tmp_path)
