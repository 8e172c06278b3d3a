"""Generic class-per-folder image sets: ``<set>/<class>/<image files>``.

A set is a folder whose subfolders are classes, each holding its images directly
(``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif`` and ``.webp``, in any letter case). One
level of grouping is also accepted, ``<set>/<group>/<class>/<image files>``: a subfolder
with no images of its own but with class subfolders is a group, and its classes are named
``<group>/<class>`` with ``<group>`` as their group. Hidden files and folders (``.*``,
``__MACOSX``) and files with other extensions are ignored.

Images are decoded once with an explicit mode (``L`` for 1 channel, ``RGB`` for 3; colour
images become grey by luma, transparent pixels are laid on white, EXIF orientation is
applied), resized with antialiasing (Lanczos) to the requested size, and cached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from metarch.data.base import ImageClassDataset
from metarch.data.cache import cached_dataset
from metarch.data.formats import DATA_FORMATS, DataFormat, DatasetSummary
from metarch.errors import DataError
from metarch.utils.progress import report_progress

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderClass",
    "ImageFolderFormat",
    "decode_image",
    "image_to_array",
    "is_colour_image",
    "is_image_file",
    "load_image_folder",
    "normalize_image_size",
    "read_image",
    "scan_image_folder",
]

#: File extensions read as images (compared in lower case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})

# Folder names that belong to other formats (Omniglot sets, Lake's one-shot runs).
_FOREIGN_PREFIXES = ("images_", "all_runs", "omniglot")
# Modes whose pixels have no colour; "P" (palette) images are checked pixel by pixel.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_MAX_SIDE = 1024


@dataclass(frozen=True)
class ImageFolderClass:
    """One class folder of an image set.

    Attributes:
        name: Class name: the folder name, or ``<group>/<class>`` in a grouped set.
        group: Group folder name, ``""`` in a flat set.
        files: Image files, sorted by name.
    """

    name: str
    group: str
    files: tuple[Path, ...]


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image file this module reads (by extension; not hidden)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def normalize_image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` from an int (square) or a pair, checked to be in ``1..1024``.

    Raises:
        DataError: If a side is out of range or the value is not an int or a pair of ints.
    """
    if isinstance(image_size, int):
        candidates: tuple[object, ...] = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)):
        candidates = tuple(image_size)
    else:
        candidates = ()
    sides = [
        s
        for s in candidates
        if isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= _MAX_SIDE
    ]
    if len(candidates) != 2 or len(sides) != 2:
        raise DataError(
            f"image_size must be an int or an (height, width) pair of ints between 1 and "
            f"{_MAX_SIDE}, got {image_size!r}"
        )
    return sides[0], sides[1]


def read_image(path: Path, *, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Open and fully decode one image file, with its EXIF orientation applied.

    Args:
        path: Image file.
        min_size: ``(height, width)`` the caller will resize to. JPEGs are then decoded at a
            reduced scale (a power of two, the decoder's own antialiased downscaling) that
            keeps both sides at least twice the larger of these, which makes decoding large
            photos several times faster without visible loss after the final resize.

    Raises:
        DataError: Naming the file, if it cannot be read or is not a valid image.
    """
    try:
        with Image.open(path) as image:
            if min_size is not None and image.format == "JPEG":
                side = 2 * max(min_size)  # square: EXIF may rotate the image by 90 degrees
                image.draft(None, (side, side))
            image.load()
            # exif_transpose returns a new, loaded image independent of the file handle.
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}); remove or replace it") from exc


def is_colour_image(image: Image.Image) -> bool:
    """Whether an image holds colour: a colour mode, or a palette using non-grey entries."""
    if image.mode in _GREY_MODES:
        return False
    if image.mode in ("P", "PA"):
        rgb = np.asarray(image.convert("RGB"))
        return bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 1] != rgb[..., 2]))
    return True


def image_to_array(image: Image.Image, *, mode: str, image_size: tuple[int, int]) -> np.ndarray:
    """Convert an image to ``mode`` (``L`` or ``RGB``) and resize it with antialiasing.

    Args:
        image: A decoded image (see :func:`read_image`).
        mode: ``"L"`` (1 channel) or ``"RGB"`` (3 channels).
        image_size: ``(height, width)`` of the result.

    Returns:
        ``uint8`` array of shape ``(channels, height, width)``.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info:
        # Dropping alpha would expose whatever colour transparent pixels store; use white.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    converted = image.convert(mode)
    height, width = image_size
    if converted.size != (width, height):
        # reducing_gap=3 box-shrinks by an integer factor first (fast), then Lanczos
        # finishes; the result is practically that of a plain Lanczos resize.
        converted = converted.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    array = np.asarray(converted, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_image(path: Path, *, mode: str, image_size: tuple[int, int]) -> np.ndarray:
    """Read one image file as a ``(channels, height, width)`` ``uint8`` array.

    Raises:
        DataError: Naming the file, if it is not a readable image.
    """
    return image_to_array(read_image(path, min_size=image_size), mode=mode, image_size=image_size)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _subfolders(path: Path) -> list[Path]:
    with os.scandir(path) as entries:
        found = [Path(e.path) for e in entries if e.is_dir() and not _is_hidden(e.name)]
    return sorted(found, key=lambda p: p.name)


def _images_in(path: Path) -> tuple[Path, ...]:
    with os.scandir(path) as entries:
        found = [Path(e.path) for e in entries if e.is_file() and is_image_file(Path(e.name))]
    return tuple(sorted(found, key=lambda p: p.name))


def scan_image_folder(path: Path, *, strict: bool = True) -> list[ImageFolderClass]:
    """List the classes of an image set from its folder structure (no decoding).

    Args:
        path: The set's folder.
        strict: Raise on a folder without images; otherwise skip it.

    Returns:
        Classes sorted by name (group first in a grouped set).

    Raises:
        DataError: If ``path`` is not a folder, holds no class folders, or (``strict``) a
            class folder holds no images.
    """
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist or is not a folder")
    classes: list[ImageFolderClass] = []
    for sub in _subfolders(path):
        files = _images_in(sub)
        inner = [(c, _images_in(c)) for c in _subfolders(sub)]
        if files and any(f for _, f in inner):
            if strict:
                raise DataError(
                    f"{sub}: holds both images and class folders with images; a class folder "
                    "holds images only, a group folder holds class folders only"
                )
            continue
        if files:
            classes.append(ImageFolderClass(name=sub.name, group="", files=files))
        elif any(f for _, f in inner):
            for child, child_files in inner:
                if child_files:
                    classes.append(
                        ImageFolderClass(
                            name=f"{sub.name}/{child.name}", group=sub.name, files=child_files
                        )
                    )
                elif strict:
                    raise DataError(
                        f"class folder {child} has no images "
                        f"({', '.join(sorted(IMAGE_EXTENSIONS))}); remove it or add images"
                    )
        elif strict:
            raise DataError(
                f"class folder {sub} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "remove it or add images"
            )
    if not classes:
        raise DataError(
            f"{path} has no class folders with images; expected "
            f"{path.name}/<class>/<image files> or {path.name}/<group>/<class>/<image files>"
        )
    return classes


def _decode(
    path: Path, classes: list[ImageFolderClass], image_size: tuple[int, int], channels: int | None
) -> ImageClassDataset:
    total = sum(len(c.files) for c in classes)
    # Unknown channel count: decode as RGB and drop to one channel if nothing had colour;
    # a grey image's RGB channels are equal, so channel 0 is exactly its "L" decoding.
    out_channels = 3 if channels is None else channels
    mode = "L" if out_channels == 1 else "RGB"
    images = np.empty((total, out_channels, *image_size), dtype=np.uint8)
    offsets = np.zeros(len(classes) + 1, dtype=np.int64)
    image_names: list[str] = []
    any_colour = False
    cursor = 0
    for c, cls in enumerate(classes):
        for file in cls.files:
            image = read_image(file, min_size=image_size)
            if channels is None and not any_colour:
                any_colour = is_colour_image(image)
            images[cursor] = image_to_array(image, mode=mode, image_size=image_size)
            image_names.append(file.relative_to(path).as_posix())
            cursor += 1
            if cursor % 256 == 0 or cursor == total:
                report_progress(f"decoding {path.name}", cursor, total)
        offsets[c + 1] = cursor
    if channels is None and not any_colour:
        images = np.ascontiguousarray(images[:, :1])
    return ImageClassDataset(
        name=path.name,
        images=images,
        class_offsets=offsets,
        class_names=tuple(c.name for c in classes),
        class_groups=tuple(c.group for c in classes),
        class_ids=np.arange(len(classes), dtype=np.int64),
        image_names=tuple(image_names),
    )


def load_image_folder(
    path: str | os.PathLike[str],
    *,
    image_size: int | tuple[int, int] = 84,
    channels: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageClassDataset:
    """Load a class-per-folder image set, decoding it once and caching the result.

    Args:
        path: The set's folder, ``<set>/<class>/<images>`` or ``<set>/<group>/<class>/<images>``.
        image_size: Output size, ``side`` or ``(height, width)``; images are resized with
            antialiasing regardless of their aspect ratio.
        channels: ``1`` (grey) or ``3`` (RGB); by default ``3`` if any image is in colour,
            else ``1``.
        cache_dir: Cache folder (default :func:`metarch.data.paths.cache_root`).

    Returns:
        The decoded set, named after the folder; classes sorted by name with ids ``0..n-1``.

    Raises:
        DataError: If the folder is missing, has no class folders, has a class folder
            without images, or holds an unreadable image (the message names the file).
    """
    source = Path(os.path.abspath(path))  # so that "." still has a name
    size = normalize_image_size(image_size)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None (automatic), got {channels!r}")
    classes = scan_image_folder(source)

    def decode() -> ImageClassDataset:
        return _decode(source, classes, size, channels)

    params = {"image_size": list(size), "channels": channels}
    return cached_dataset("folder", source.name, source, params, decode, cache_dir=cache_dir)


def _claimed_elsewhere(path: Path) -> bool:
    if path.name.lower().startswith(_FOREIGN_PREFIXES) or _is_hidden(path.name):
        return True
    # Imported here because miniimagenet imports this module's decoders.
    from metarch.data.miniimagenet import is_mini_imagenet_folder

    return is_mini_imagenet_folder(path)


@DATA_FORMATS.register("image-folder")
class ImageFolderFormat(DataFormat):
    """Class-per-folder image sets directly in the data root (see the module docstring)."""

    name = "image-folder"

    def discover(self, root: Path) -> list[DatasetSummary]:  # noqa: D102
        found = []
        for folder in _subfolders(root):
            if _claimed_elsewhere(folder):
                continue
            try:
                classes = scan_image_folder(folder, strict=False)
            except DataError:  # no class folders with images: not an image set
                continue
            groups = {c.group for c in classes if c.group}
            found.append(
                DatasetSummary(
                    name=folder.name,
                    format=self.name,
                    path=folder,
                    alphabets=None,
                    classes=len(classes),
                    images=sum(len(c.files) for c in classes),
                    details={"groups": len(groups)} if groups else {},
                )
            )
        return found

    def load(  # noqa: D102
        self,
        summary: DatasetSummary,
        *,
        image_size: int,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> ImageClassDataset:
        return load_image_folder(summary.path, image_size=image_size, cache_dir=cache_dir)
