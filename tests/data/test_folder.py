"""Tests of the class-per-folder image reader (``metarch.data.folder``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from metarch.data import archive, folder
from metarch.data.folder import (
    IMAGE_EXTENSIONS,
    ImageFolderFormat,
    decode_image,
    is_image_file,
    load_image_folder,
    read_image,
    scan_image_folder,
)
from metarch.data.formats import DATA_FORMATS, discover_datasets, load_image_set
from metarch.errors import DataError, MetarchError
from tests.fixtures import write_omniglot_set


def grey(seed: int, size: tuple[int, int] = (12, 10)) -> Image.Image:
    """A random grey image of ``(height, width)`` ``size``."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8), mode="L")


def colour(seed: int, size: tuple[int, int] = (12, 10)) -> Image.Image:
    """A random RGB image of ``(height, width)`` ``size``."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8), mode="RGB")


def write_set(
    root: Path,
    name: str = "shapes",
    classes: Iterable[str] = ("square", "circle", "triangle"),
    *,
    per_class: int = 4,
    rgb: bool = False,
    suffix: str = ".png",
) -> Path:
    """Write ``root/name/<class>/<class>_NN<suffix>`` and return ``root/name``."""
    path = root / name
    for c, cls in enumerate(classes):
        (path / cls).mkdir(parents=True)
        for i in range(per_class):
            image = colour(c * 100 + i) if rgb else grey(c * 100 + i)
            image.save(path / cls / f"{cls}_{i:02d}{suffix}")
    return path


@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    return write_set(tmp_path / "root")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# --- loading --------------------------------------------------------------------------------


def test_load_flat_grey_set(shapes: Path, cache: Path) -> None:
    data = load_image_folder(shapes, image_size=8, cache_dir=cache)

    assert data.name == "shapes"
    assert data.images.dtype == np.uint8
    assert data.images.shape == (12, 1, 8, 8)
    assert data.class_names == ("circle", "square", "triangle")  # sorted
    assert data.class_groups == ("", "", "")
    np.testing.assert_array_equal(data.class_ids, [0, 1, 2])
    np.testing.assert_array_equal(data.class_offsets, [0, 4, 8, 12])
    assert data.image_names[:2] == ("circle/circle_00.png", "circle/circle_01.png")
    # Images of a class are contiguous and in file-name order.
    assert all(n.startswith("square/") for n in data.image_names[4:8])


def test_pixels_match_a_direct_decode(shapes: Path, cache: Path) -> None:
    data = load_image_folder(shapes, image_size=(6, 5), channels=1, cache_dir=cache)
    expected = decode_image(shapes / "square" / "square_02.png", mode="L", image_size=(6, 5))
    np.testing.assert_array_equal(data.images[6], expected)
    assert data.images.shape == (12, 1, 6, 5)  # (height, width)


def test_same_size_images_are_not_resampled(shapes: Path, cache: Path) -> None:
    data = load_image_folder(shapes, image_size=(12, 10), cache_dir=cache)
    original = np.asarray(Image.open(shapes / "circle" / "circle_00.png"))
    np.testing.assert_array_equal(data.images[0, 0], original)


def test_resize_is_antialiased(tmp_path: Path, cache: Path) -> None:
    # A one-pixel checkerboard shrunk 4x must become flat mid-grey, not alias to black/white.
    board = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)
    (tmp_path / "set" / "a").mkdir(parents=True)
    Image.fromarray(board, mode="L").save(tmp_path / "set" / "a" / "board.png")
    data = load_image_folder(tmp_path / "set", image_size=8, cache_dir=cache)
    assert np.all(np.abs(data.images.astype(int) - 127) <= 3)


def test_channels_default_to_three_when_any_image_has_colour(shapes: Path, cache: Path) -> None:
    colour(7).save(shapes / "circle" / "zz_colour.png")
    data = load_image_folder(shapes, image_size=8, cache_dir=cache)
    assert data.images.shape == (13, 3, 8, 8)
    # Grey images become RGB with equal channels.
    first = data.images[0]
    assert np.array_equal(first[0], first[1]) and np.array_equal(first[1], first[2])


def test_channels_default_to_one_for_grey_sets_and_match_explicit_grey(
    shapes: Path, cache: Path
) -> None:
    auto = load_image_folder(shapes, image_size=7, cache_dir=cache)
    explicit = load_image_folder(shapes, image_size=7, channels=1, cache_dir=cache)
    assert auto.images.shape[1] == 1
    assert auto.images.flags.c_contiguous
    np.testing.assert_array_equal(auto.images, explicit.images)


def test_explicit_channels_convert_modes(tmp_path: Path, cache: Path) -> None:
    rgb_set = write_set(tmp_path, "rgb", rgb=True)
    as_grey = load_image_folder(rgb_set, image_size=8, channels=1, cache_dir=cache)
    as_rgb = load_image_folder(rgb_set, image_size=8, channels=3, cache_dir=cache)
    assert as_grey.images.shape == (12, 1, 8, 8)
    assert as_rgb.images.shape == (12, 3, 8, 8)
    grey_set = write_set(tmp_path, "grey")
    forced = load_image_folder(grey_set, image_size=8, channels=3, cache_dir=cache)
    assert forced.images.shape == (12, 3, 8, 8)
    assert np.array_equal(forced.images[:, 0], forced.images[:, 2])


def test_extensions_are_case_insensitive_and_other_files_ignored(
    tmp_path: Path, cache: Path
) -> None:
    path = tmp_path / "mixed" / "only"
    path.mkdir(parents=True)
    suffixes = [".PNG", ".JpEg", ".jpg", ".Bmp", ".GIF"]
    if features.check("webp"):
        suffixes.append(".WebP")
    for i, suffix in enumerate(suffixes):
        grey(i).save(path / f"img{i}{suffix}")
    (path / "notes.txt").write_text("not an image")
    (path / "._img0.png").write_bytes(b"AppleDouble junk")  # hidden: must be skipped
    (path / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "mixed" / "README.md").write_text("top-level files are ignored")
    (tmp_path / "mixed" / ".hidden").mkdir()

    data = load_image_folder(tmp_path / "mixed", image_size=8, cache_dir=cache)
    assert data.num_images == len(suffixes)
    assert data.class_names == ("only",)
    assert {s.lower() for s in suffixes} <= IMAGE_EXTENSIONS


def test_is_image_file() -> None:
    assert is_image_file(Path("a/B.JPG"))
    assert not is_image_file(Path("a/.b.png"))
    assert not is_image_file(Path("a/b.tiff"))


def test_grouped_layout(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "grouped"
    for group, classes in {"birds": ["owl", "crow"], "fish": ["cod"]}.items():
        for cls in classes:
            (path / group / cls).mkdir(parents=True)
            for i in range(2):
                grey(i).save(path / group / cls / f"{i}.png")

    data = load_image_folder(path, image_size=8, cache_dir=cache)
    assert data.class_names == ("birds/crow", "birds/owl", "fish/cod")
    assert data.class_groups == ("birds", "birds", "fish")
    assert data.groups == ("birds", "fish")
    assert data.image_names[0] == "birds/crow/0.png"
    np.testing.assert_array_equal(data.class_ids, [0, 1, 2])


def test_grey_palette_gif_is_grey_and_transparency_lies_on_white(
    tmp_path: Path, cache: Path
) -> None:
    path = tmp_path / "pal" / "a"
    path.mkdir(parents=True)
    grey(1).convert("P").save(path / "grey.gif")
    rgba = np.zeros((12, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent
    Image.fromarray(rgba, mode="RGBA").convert("LA").save(path / "clear.png")

    data = load_image_folder(tmp_path / "pal", image_size=(12, 10), cache_dir=cache)
    assert data.images.shape[1] == 1
    clear = data.images[data.image_names.index("a/clear.png")]
    assert np.all(clear == 255)


def test_exif_orientation_is_applied(tmp_path: Path, cache: Path) -> None:
    stored = np.zeros((8, 16), dtype=np.uint8)
    stored[:, 8:] = 255  # left half black, right half white, as stored
    image = Image.fromarray(stored, mode="L")
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    (tmp_path / "rot" / "a").mkdir(parents=True)
    image.save(tmp_path / "rot" / "a" / "r.jpg", exif=exif, quality=95)

    data = load_image_folder(tmp_path / "rot", image_size=(16, 8), cache_dir=cache)
    shown = data.images[0, 0].astype(int)
    # Rotating clockwise puts the stored left (black) half at the top.
    assert shown[:6].mean() < 40 and shown[10:].mean() > 215


def test_large_jpegs_decode_at_reduced_scale_without_visible_loss(tmp_path: Path) -> None:
    # Smooth content, as in photos: the decoder's downscaling must then match a full decode.
    y, x = np.mgrid[0:240, 0:320]
    smooth = (127 + 120 * np.sin(x / 23.0) * np.cos(y / 31.0)).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth, mode="L").convert("RGB").save(path, quality=95)

    assert read_image(path, min_size=(10, 10)).size == (40, 30)  # scale 1/8 keeps >= 20
    assert read_image(path).size == (320, 240)
    fast = decode_image(path, mode="RGB", image_size=(10, 10)).astype(int)
    full = folder.image_to_array(read_image(path), mode="RGB", image_size=(10, 10)).astype(int)
    assert np.abs(fast - full).max() <= 4


# --- errors ---------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope")


def test_no_class_folders(tmp_path: Path) -> None:
    path = tmp_path / "flat"
    path.mkdir()
    grey(0).save(path / "loose.png")  # images directly in the set folder are no class
    with pytest.raises(DataError, match=r"flat has no class folders with images"):
        load_image_folder(path)


def test_class_folder_without_images(shapes: Path) -> None:
    (shapes / "empty").mkdir()
    (shapes / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*empty has no images"):
        load_image_folder(shapes)


def test_grouped_class_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "g" / "group" / "full").mkdir(parents=True)
    (tmp_path / "g" / "group" / "bare").mkdir()
    grey(0).save(tmp_path / "g" / "group" / "full" / "0.png")
    with pytest.raises(DataError, match=r"class folder .*bare has no images"):
        load_image_folder(tmp_path / "g")


def test_folder_with_images_and_class_folders_is_ambiguous(shapes: Path) -> None:
    (shapes / "circle" / "nested").mkdir()
    grey(0).save(shapes / "circle" / "nested" / "0.png")
    with pytest.raises(DataError, match="both images and class folders"):
        load_image_folder(shapes)


@pytest.mark.parametrize(
    "content", [b"definitely not an image", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"]
)
def test_corrupt_image_is_named(shapes: Path, cache: Path, content: bytes) -> None:
    bad = shapes / "square" / "square_01.png"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=r"square_01\.png: not a readable image") as info:
        load_image_folder(shapes, image_size=8, cache_dir=cache)
    assert str(bad) in str(info.value)


def test_truncated_jpeg_is_named(shapes: Path, cache: Path) -> None:
    good = shapes / "circle" / "photo.jpg"
    colour(3, (64, 64)).save(good, quality=90)
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match=r"photo\.jpg: not a readable image"):
        load_image_folder(shapes, image_size=8, cache_dir=cache)


def test_decompression_bombs_are_refused(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    shapes = write_set(root, "shapes")
    # An image with more pixels than PIL's bomb limit (lowered here to keep the test small).
    grey(7, (100, 100)).save(shapes / "circle" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000)
    with pytest.raises(DataError, match="refused as a possible decompression bomb") as info:
        load_image_folder(shapes, image_size=8, cache_dir=cache)
    assert "huge.png" in str(info.value)
    monkeypatch.undo()
    # In a zip, a member that unpacks past the archive limit is refused before decompressing.
    (shapes / "circle" / "huge.png").unlink()
    zip_folder(shapes, tmp_path / "shapes.zip")
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 64)
    with pytest.raises(DataError, match="decompression bomb: it unpacks to"):
        load_image_folder(tmp_path / "shapes.zip", image_size=8, cache_dir=cache)


@pytest.mark.parametrize("size", [0, 2000, (8,), (8, 0), (8, 8, 8), 8.0, True])
def test_bad_image_size(shapes: Path, size: object) -> None:
    with pytest.raises(DataError, match="image_size must be"):
        load_image_folder(shapes, image_size=size)  # type: ignore[arg-type]


@pytest.mark.parametrize("channels", [0, 2, 4])
def test_bad_channels(shapes: Path, channels: int) -> None:
    with pytest.raises(DataError, match="channels must be 1, 3 or None"):
        load_image_folder(shapes, channels=channels)


def test_errors_are_metarch_errors() -> None:
    assert issubclass(DataError, MetarchError)


# --- cache ----------------------------------------------------------------------------------


def test_second_load_comes_from_the_cache(
    shapes: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = folder.read_image

    def counting(path: Path, *, min_size: tuple[int, int] | None = None) -> Image.Image:
        calls.append(path)
        return real(path, min_size=min_size)

    monkeypatch.setattr(folder, "read_image", counting)
    first = load_image_folder(shapes, image_size=8, cache_dir=cache)
    assert len(calls) == 12
    second = load_image_folder(shapes, image_size=8, cache_dir=cache)
    assert len(calls) == 12  # nothing decoded again
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.class_offsets, second.class_offsets)
    np.testing.assert_array_equal(first.class_ids, second.class_ids)
    assert first.class_names == second.class_names
    assert first.class_groups == second.class_groups
    assert first.image_names == second.image_names
    assert first.name == second.name

    load_image_folder(shapes, image_size=9, cache_dir=cache)  # another size: a new entry
    assert len(calls) == 24
    load_image_folder(shapes, image_size=8, channels=3, cache_dir=cache)
    assert len(calls) == 36


def test_changed_folder_invalidates_the_cache(
    shapes: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_image_folder(shapes, image_size=8, cache_dir=cache)
    grey(99).save(shapes / "circle" / "new.png")
    second = load_image_folder(shapes, image_size=8, cache_dir=cache)
    assert second.num_images == first.num_images + 1


def test_default_cache_is_the_isolated_test_cache(shapes: Path, isolated_cache: Path) -> None:
    load_image_folder(shapes, image_size=8)
    assert list(isolated_cache.glob("folder-shapes-*.npz"))


# --- discovery ------------------------------------------------------------------------------


def _write_mini_imagenet_lookalike(path: Path) -> None:
    (path / "images").mkdir(parents=True)
    grey(0).save(path / "images" / "n0000000100000001.jpg")
    for split in ("train", "val", "test"):
        (path / f"{split}.csv").write_text("filename,label\n")


def test_discover_finds_image_sets_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_set(root, "shapes", per_class=3)
    write_set(root, "colours", ["red", "blue"], per_class=2, rgb=True, suffix=".jpg")
    write_set(root, "images_background")  # Omniglot-like name
    write_set(root, "omniglot_extra")
    write_set(root, "all_runs")
    write_set(root, ".hidden")
    _write_mini_imagenet_lookalike(root / "mini")
    (root / "loose").mkdir()
    grey(0).save(root / "loose" / "a.png")  # images but no class folders
    (root / "docs").mkdir()
    (root / "docs" / "sub").mkdir()
    (root / "docs" / "sub" / "x.txt").write_text("text only")
    (root / "file.png").write_bytes(b"")

    found = ImageFolderFormat().discover(root)
    assert [s.name for s in found] == ["colours", "shapes"]
    shapes = found[1]
    assert shapes.format == "image-folder"
    assert shapes.path == root / "shapes"
    assert (shapes.alphabets, shapes.classes, shapes.images) == (None, 3, 9)
    assert shapes.details == {}
    assert (found[0].classes, found[0].images) == (2, 4)


def test_discover_counts_groups_and_is_lenient(tmp_path: Path) -> None:
    path = tmp_path / "root" / "grouped"
    for group in ("g1", "g2"):
        (path / group / "c").mkdir(parents=True)
        grey(0).save(path / group / "c" / "0.png")
    (path / "g2" / "empty").mkdir()  # load rejects this, listing does not

    [summary] = ImageFolderFormat().discover(tmp_path / "root")
    assert (summary.classes, summary.images, summary.details) == (2, 2, {"groups": 2})
    with pytest.raises(DataError, match="has no images"):
        ImageFolderFormat().load(summary, image_size=8)


def test_scan_is_listing_only(shapes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("scan must not decode images")

    monkeypatch.setattr(folder, "read_image", fail)
    classes = scan_image_folder(shapes)
    assert [c.name for c in classes] == ["circle", "square", "triangle"]
    assert [len(c.files) for c in classes] == [4, 4, 4]
    assert ImageFolderFormat().discover(shapes.parent)[0].images == 12


def test_registered_and_loadable_by_name(shapes: Path, cache: Path) -> None:
    assert DATA_FORMATS.get("image-folder") is ImageFolderFormat
    data = load_image_set("shapes", shapes.parent, image_size=8, cache_dir=cache)
    assert data.name == "shapes"
    assert data.images.shape == (12, 1, 8, 8)


def test_discover_datasets_keeps_formats_apart(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_omniglot_set(root, "images_background", {"Latin": 2}, drawings=2, as_zip=False)
    write_set(root, "shapes")
    formats = {s.name: s.format for s in discover_datasets(root)}
    assert formats["background"] == "omniglot"
    assert formats["shapes"] == "image-folder"
    assert "images_background" not in formats


# --- zip archives, class descriptions, sets one folder down ----------------------------------


def zip_folder(folder: Path, archive: Path, top: str | None = None) -> Path:
    """Zip ``folder`` as ``archive`` with its files below ``top/`` (default: its name)."""
    import zipfile

    top = folder.name if top is None else top
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                handle.write(path, f"{top}/{path.relative_to(folder).as_posix()}")
    return archive


def test_zip_set_matches_its_folder(tmp_path: Path, cache: Path) -> None:
    folder_set = write_set(tmp_path / "a", "mixed", ["red", "grey"], per_class=3, rgb=True)
    for i, path in enumerate(sorted((folder_set / "grey").iterdir())):
        grey(50 + i).save(path)  # a set mixing grey and colour images
    (folder_set / "classes.tsv").write_text("red\tthe colour red\ngrey\ta grey thing\n")
    archive = zip_folder(folder_set, tmp_path / "b" / "mixed.zip")
    from_folder = load_image_folder(folder_set, image_size=8, cache_dir=cache)
    from_zip = load_image_folder(archive, image_size=8, cache_dir=cache)
    assert from_zip.name == from_folder.name == "mixed"
    assert from_zip.images.shape == (6, 3, 8, 8)  # grey images become 3 equal channels
    np.testing.assert_array_equal(from_zip.images, from_folder.images)
    assert from_zip.class_names == from_folder.class_names == ("grey", "red")
    assert from_zip.image_names == from_folder.image_names
    assert from_zip.class_descriptions == ("a grey thing", "the colour red")
    assert from_zip.describe(1) == "red the colour red"
    grey_images = from_zip.images_of(0)
    np.testing.assert_array_equal(grey_images[:, 0], grey_images[:, 1])
    # The cache keeps the descriptions.
    again = load_image_folder(archive, image_size=8, cache_dir=cache)
    assert again.class_descriptions == from_zip.class_descriptions


def test_zip_with_the_wrong_top_folder_is_named(tmp_path: Path) -> None:
    folder_set = write_set(tmp_path / "a", "shapes")
    root = tmp_path / "root"
    root.mkdir()
    zip_folder(folder_set, root / "mine.zip")  # files below shapes/, not mine/
    with pytest.raises(DataError, match=r"mine.zip: .* below 'mine/'.*rename the archive to"):
        load_image_folder(root / "mine.zip")
    # Asked for by name, the message says what is wrong with the archive.
    with pytest.raises(DataError, match=r"mine.zip: .*below 'mine/'"):
        load_image_set("mine", root, image_size=8)
    assert ImageFolderFormat().discover(root) == []


def test_corrupt_image_in_a_zip_is_named(tmp_path: Path, cache: Path) -> None:
    folder_set = write_set(tmp_path / "a", "shapes")
    (folder_set / "circle" / "circle_01.png").write_bytes(b"not a png")
    archive = zip_folder(folder_set, tmp_path / "shapes.zip")
    with pytest.raises(DataError, match=r"shapes.zip:circle/circle_01.png: not a readable"):
        load_image_folder(archive, image_size=8, cache_dir=cache)


def test_discover_finds_zips_and_sets_one_folder_down(tmp_path: Path) -> None:
    root = tmp_path / "root"
    holder = root / "tiny"
    holder.mkdir(parents=True)
    folder_set = write_set(tmp_path / "src", "birds", ["crow", "owl"], per_class=3, rgb=True)
    (folder_set / "classes.tsv").write_text("crow\tcrow, Corvus\nowl\tgreat grey owl\n")
    zip_folder(folder_set, holder / "birds.zip")
    (holder / "README.md").write_text("read me")
    write_set(holder, "fish", ["cod"], per_class=2)
    [birds, fish] = ImageFolderFormat().discover(root)
    assert (birds.name, birds.path, birds.classes, birds.images) == (
        "birds",
        holder / "birds.zip",
        2,
        6,
    )
    assert birds.details == {"class_names": {"crow": "crow, Corvus", "owl": "great grey owl"}}
    assert (fish.name, fish.classes) == ("fish", 1)
    data = load_image_set("birds", root, image_size=8)
    assert data.images.shape == (6, 3, 8, 8)


def test_a_partly_extracted_folder_does_not_hide_its_zip(tmp_path: Path) -> None:
    root = tmp_path / "root"
    folder_set = write_set(root, "shapes")
    zip_folder(folder_set, root / "shapes.zip")
    for path in (folder_set / "circle").iterdir():
        path.unlink()
    (folder_set / "circle").rmdir()
    [summary] = ImageFolderFormat().discover(root)
    assert (summary.path, summary.images) == (root / "shapes.zip", 12)
