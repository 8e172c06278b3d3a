"""Generic class-per-folder image sets: ``<set>/<class>/<image files>``, as a folder or a zip.

A set is a folder (or a zip archive ``<set>.zip`` whose top folder is ``<set>/``, the way
such sets are usually shipped) whose subfolders are classes, each holding its images directly
(``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif`` and ``.webp``, in any letter case). One
level of grouping is also accepted, ``<set>/<group>/<class>/<image files>``: a subfolder
with no images of its own but with class subfolders is a group, and its classes are named
``<group>/<class>`` with ``<group>`` as their group. Hidden files and folders (``.*``,
``__MACOSX``) and files with other extensions are ignored.

Images are decoded once with an explicit mode (``L`` for 1 channel, ``RGB`` for 3; colour
images become grey by luma, transparent pixels are laid on white, EXIF orientation is
applied), resized with antialiasing (Lanczos) to the requested size, and cached.

A ``classes.tsv`` file at the top of a set (``<class>``, a tab, a description per line, as
Tiny ImageNet's ``words.txt``) gives its classes readable names; ``metarch data info``
shows them. Sets are found directly in the data root and one folder below it
(``ROOT/tiny_imagenet_fs/tiny_imagenet_fs_background.zip``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from metarch.data.archive import FileTree, ZipTree, open_tree
from metarch.data.base import ImageClassDataset
from metarch.data.cache import cached_dataset
from metarch.data.formats import DATA_FORMATS, DataFormat, DatasetSummary
from metarch.errors import DataError
from metarch.utils.progress import report_progress

__all__ = [
    "CLASS_DESCRIPTIONS_FILE",
    "IMAGE_EXTENSIONS",
    "ImageFolderClass",
    "ImageFolderFormat",
    "decode_image",
    "image_to_array",
    "is_colour_image",
    "is_image_file",
    "load_image_folder",
    "normalize_image_size",
    "read_class_descriptions",
    "read_image",
    "scan_image_folder",
    "scan_image_tree",
]

#: File extensions read as images (compared in lower case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})

# Folder names that belong to other formats (Omniglot sets, Lake's one-shot runs).
_FOREIGN_PREFIXES = ("images_", "all_runs", "omniglot")
# Modes whose pixels have no colour; "P" (palette) images are checked pixel by pixel.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_MAX_SIDE = 1024
#: Optional file at the top of a set: ``<class>\t<description>`` per line.
CLASS_DESCRIPTIONS_FILE = "classes.tsv"


@dataclass(frozen=True)
class ImageFolderClass:
    """One class folder of an image set.

    Attributes:
        name: Class name: the folder name, or ``<group>/<class>`` in a grouped set.
        group: Group folder name, ``""`` in a flat set.
        files: Image files, as POSIX paths relative to the set's top folder, sorted by name.
    """

    name: str
    group: str
    files: tuple[str, ...]


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


def read_image(
    path: Path | str, *, min_size: tuple[int, int] | None = None, data: bytes | None = None
) -> Image.Image:
    """Open and fully decode one image file, with its EXIF orientation applied.

    Args:
        path: Image file (or, with ``data``, where the bytes come from, for messages).
        min_size: ``(height, width)`` the caller will resize to. JPEGs are then decoded at a
            reduced scale (a power of two, the decoder's own antialiased downscaling) that
            keeps both sides at least twice the larger of these, which makes decoding large
            photos several times faster without visible loss after the final resize.
        data: The file's bytes, when they come from an archive rather than from ``path``.

    Raises:
        DataError: Naming the file, if it cannot be read or is not a valid image.
    """
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            if min_size is not None and image.format == "JPEG":
                side = 2 * max(min_size)  # square: EXIF may rotate the image by 90 degrees
                image.draft(None, (side, side))
            image.load()
            # exif_transpose returns a new, loaded image independent of the file handle.
            return ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"{path}: refused as a possible decompression bomb ({exc}); few-shot images are "
            "small, so remove or shrink this file"
        ) from exc
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


def _folder_listing(path: Path) -> list[str]:
    """Relative paths of the files two levels below ``path`` (all a set's layout can use).

    Folders are listed too, with a trailing ``/``, so that an empty class folder is seen.
    """
    names: list[str] = []
    for sub in _subfolders(path):
        names.append(f"{sub.name}/")
        with os.scandir(sub) as entries:
            for entry in entries:
                if _is_hidden(entry.name):
                    continue
                if entry.is_file():
                    names.append(f"{sub.name}/{entry.name}")
                elif entry.is_dir():
                    names.append(f"{sub.name}/{entry.name}/")
                    with os.scandir(entry.path) as inner:
                        names.extend(
                            f"{sub.name}/{entry.name}/{f.name}" for f in inner if f.is_file()
                        )
    return names


def scan_image_tree(
    names: Iterable[str], where: str, *, strict: bool = True
) -> list[ImageFolderClass]:
    """The classes of an image set from the relative paths of its files (no decoding).

    Args:
        names: POSIX paths relative to the set's top folder (``class/file`` or
            ``group/class/file``; folders end in ``/``); other files, hidden ones and deeper
            paths are ignored.
        where: The set's folder or archive, for messages.
        strict: Raise on a folder that is neither a class nor a group; otherwise skip it.

    Returns:
        Classes sorted by name (group first in a grouped set).

    Raises:
        DataError: If there are no class folders with images, or (``strict``) a folder
            holds both images and class folders, or a class folder holds no images.
    """
    direct: dict[str, list[str]] = {}
    nested: dict[str, dict[str, list[str]]] = {}
    for name in names:
        parts = name.split("/")
        if any(_is_hidden(p) for p in parts if p):
            continue
        if name.endswith("/"):  # a folder: a class or group even if it holds no images
            if len(parts) == 2:
                direct.setdefault(parts[0], [])
            elif len(parts) == 3:
                nested.setdefault(parts[0], {}).setdefault(parts[1], [])
            continue
        if len(parts) not in (2, 3):
            continue
        images = is_image_file(Path(parts[-1]))
        if len(parts) == 2:
            files = direct.setdefault(parts[0], [])
            if images:
                files.append(name)
        else:
            files = nested.setdefault(parts[0], {}).setdefault(parts[1], [])
            if images:
                files.append(name)
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    classes: list[ImageFolderClass] = []
    for sub in sorted(set(direct) | set(nested)):
        files = direct.get(sub, [])
        inner = nested.get(sub, {})
        if files and any(inner.values()):
            if strict:
                raise DataError(
                    f"{where}/{sub}: holds both images and class folders with images; a class "
                    "folder holds images only, a group folder holds class folders only"
                )
            continue
        if files:
            classes.append(ImageFolderClass(name=sub, group="", files=tuple(sorted(files))))
        elif any(inner.values()):
            for child in sorted(inner):
                if inner[child]:
                    classes.append(
                        ImageFolderClass(
                            name=f"{sub}/{child}", group=sub, files=tuple(sorted(inner[child]))
                        )
                    )
                elif strict:
                    raise DataError(
                        f"class folder {where}/{sub}/{child} has no images ({extensions}); "
                        "remove it or add images"
                    )
        elif strict:
            raise DataError(
                f"class folder {where}/{sub} has no images ({extensions}); remove it or add images"
            )
    if not classes:
        top = Path(where).name.removesuffix(".zip")
        raise DataError(
            f"{where} has no class folders with images; expected "
            f"{top}/<class>/<image files> or {top}/<group>/<class>/<image files>"
        )
    return classes


def scan_image_folder(path: Path, *, strict: bool = True) -> list[ImageFolderClass]:
    """List the classes of an image set folder from its structure (no decoding).

    See :func:`scan_image_tree`; raises :class:`DataError` if ``path`` is not a folder.
    """
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist or is not a folder")
    return scan_image_tree(_folder_listing(path), str(path), strict=strict)


def read_class_descriptions(tree: FileTree) -> dict[str, str]:
    """``class -> description`` from a set's ``classes.tsv`` (empty if it has none).

    Raises:
        DataError: Naming the file and line of a line without a tab.
    """
    if CLASS_DESCRIPTIONS_FILE not in tree.names():
        return {}
    where = tree.where(CLASS_DESCRIPTIONS_FILE)
    try:
        text = tree.read(CLASS_DESCRIPTIONS_FILE).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text ({exc})") from None
    descriptions: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, tab, description = line.partition("\t")
        if not tab:
            raise DataError(f"{where}:{number}: expected '<class><TAB><description>', got {line!r}")
        descriptions[name.strip()] = description.strip()
    return descriptions


def _open_set(source: Path) -> FileTree:
    """The files of a set from its folder or its ``NAME.zip`` (members below ``NAME/``).

    Raises:
        DataError: If a zip's members do not sit below the folder named after it.
    """
    if source.is_dir():
        return open_tree(source, source.name)
    top = source.name.removesuffix(".zip")
    tree = ZipTree(source, prefix=f"{top}/")
    if not tree.names():
        found = sorted({n.split("/")[0] for n in ZipTree(source).names() if "/" in n})
        tree.close()
        hint = (
            f"its top folder is {found[0]!r}: rename the archive to {found[0]}.zip"
            if len(found) == 1
            else f"top folders found: {', '.join(found) or 'none (files at the top level)'}"
        )
        raise DataError(
            f"{source}: an image-set archive must hold its files below '{top}/' (the "
            f"archive's name), as {top}/<class>/<image files>; {hint}"
        )
    return tree


def _set_name(source: Path) -> str:
    return source.name.removesuffix(".zip") if source.is_file() else source.name


def _decode(
    tree: FileTree,
    classes: list[ImageFolderClass],
    image_size: tuple[int, int],
    channels: int | None,
) -> ImageClassDataset:
    name = _set_name(tree.source)
    from_folder = tree.source.is_dir()
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
            if from_folder:
                image = read_image(tree.source / file, min_size=image_size)
            else:
                image = read_image(tree.where(file), min_size=image_size, data=tree.read(file))
            if channels is None and not any_colour:
                any_colour = is_colour_image(image)
            images[cursor] = image_to_array(image, mode=mode, image_size=image_size)
            image_names.append(file)
            cursor += 1
            if cursor % 256 == 0 or cursor == total:
                report_progress(f"decoding {name}", cursor, total)
        offsets[c + 1] = cursor
    if channels is None and not any_colour:
        images = np.ascontiguousarray(images[:, :1])
    descriptions = read_class_descriptions(tree)
    return ImageClassDataset(
        name=name,
        images=images,
        class_offsets=offsets,
        class_names=tuple(c.name for c in classes),
        class_groups=tuple(c.group for c in classes),
        class_ids=np.arange(len(classes), dtype=np.int64),
        image_names=tuple(image_names),
        class_descriptions=tuple(descriptions.get(c.name, "") for c in classes),
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
        path: The set's folder, ``<set>/<class>/<images>`` or ``<set>/<group>/<class>/<images>``,
            or a zip archive ``<set>.zip`` holding that folder.
        image_size: Output size, ``side`` or ``(height, width)``; images are resized with
            antialiasing regardless of their aspect ratio.
        channels: ``1`` (grey) or ``3`` (RGB); by default ``3`` if any image is in colour,
            else ``1`` (a set mixing grey and colour images gives 3 channels throughout).
        cache_dir: Cache folder (default :func:`metarch.data.paths.cache_root`).

    Returns:
        The decoded set, named after the folder; classes sorted by name with ids ``0..n-1``.

    Raises:
        DataError: If the folder or archive is missing or malformed, has no class folders,
            has a class folder without images, or holds an unreadable image (the message
            names the file).
    """
    source = Path(os.path.abspath(path))  # so that "." still has a name
    size = normalize_image_size(image_size)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None (automatic), got {channels!r}")
    if not source.exists():
        raise DataError(f"image folder {source} does not exist or is not a folder")
    if source.is_file() and source.suffix.lower() != ".zip":
        raise DataError(f"{source}: an image set is a folder or a .zip archive")
    with _open_set(source) as tree:
        if source.is_dir():
            classes = scan_image_folder(source)  # its listing also shows empty class folders
        else:
            classes = scan_image_tree(tree.names(), str(source))

        def decode() -> ImageClassDataset:
            return _decode(tree, classes, size, channels)

        params = {"image_size": list(size), "channels": channels}
        return cached_dataset(
            "folder", _set_name(source), source, params, decode, cache_dir=cache_dir
        )


def _claimed_elsewhere(path: Path) -> bool:
    if path.name.lower().startswith(_FOREIGN_PREFIXES) or _is_hidden(path.name):
        return True
    # Imported here because these modules import this one's decoders (or its imports').
    from metarch.data.lake import is_lake_run_folder
    from metarch.data.miniimagenet import is_mini_imagenet_folder

    return path.is_dir() and (is_mini_imagenet_folder(path) or is_lake_run_folder(path))


def _zip_summary(path: Path) -> tuple[list[ImageFolderClass], dict[str, str]] | None:
    """Classes and descriptions of ``NAME.zip`` if it holds an image set below ``NAME/``."""
    try:
        with _open_set(path) as tree:
            return scan_image_tree(tree.names(), str(path), strict=False), (
                read_class_descriptions(tree)
            )
    except DataError:  # not an image-set archive (or not readable): not ours to report
        return None


@DATA_FORMATS.register("image-folder")
class ImageFolderFormat(DataFormat):
    """Class-per-folder image sets, as folders or zips (see the module docstring).

    Sets are looked for in the data root and in its subfolders that are not sets
    themselves. When a set is both a folder and a zip, the one with more images is used
    (a partly extracted folder never hides its complete archive), the folder on a tie.
    """

    name = "image-folder"

    def discover(self, root: Path) -> list[DatasetSummary]:  # noqa: D102
        found: dict[str, DatasetSummary] = {}

        def add(summary: DatasetSummary | None) -> None:
            if summary is None:
                return
            known = found.get(summary.name)
            if known is None or summary.images > known.images:
                found[summary.name] = summary

        def add_children(folder: Path) -> None:
            for inner in sorted(folder.iterdir(), key=lambda p: p.name):
                if not _claimed_elsewhere(inner):
                    add(self._summarise(inner))

        for entry in sorted(root.iterdir(), key=lambda p: p.name):
            if _claimed_elsewhere(entry):
                continue
            # A folder holding set archives (tiny_imagenet_fs/) holds sets, it is not one.
            if entry.is_dir() and any(
                _zip_summary(z) is not None
                for z in entry.glob("*.zip")
                if not _claimed_elsewhere(z)
            ):
                add_children(entry)
                continue
            summary = self._summarise(entry)
            if summary is None and entry.is_dir():
                add_children(entry)
            add(summary)
        return sorted(found.values(), key=lambda s: s.name)

    def _summarise(self, entry: Path) -> DatasetSummary | None:
        descriptions: dict[str, str] = {}
        if entry.is_dir():
            try:
                classes = scan_image_folder(entry, strict=False)
            except DataError:  # no class folders with images: not an image set
                return None
            descriptions_file = entry / CLASS_DESCRIPTIONS_FILE
            if descriptions_file.is_file():
                try:
                    descriptions = read_class_descriptions(open_tree(entry, entry.name))
                except DataError:
                    descriptions = {}
        elif entry.suffix.lower() == ".zip":
            scanned = _zip_summary(entry)
            if scanned is None:
                return None
            classes, descriptions = scanned
        else:
            return None
        groups = {c.group for c in classes if c.group}
        details: dict[str, object] = {"groups": len(groups)} if groups else {}
        if descriptions:
            details["class_names"] = {
                c.name: descriptions[c.name] for c in classes if c.name in descriptions
            }
        return DatasetSummary(
            name=_set_name(entry),
            format=self.name,
            path=entry,
            alphabets=None,
            classes=len(classes),
            images=sum(len(c.files) for c in classes),
            details=details,
        )

    def load(  # noqa: D102
        self,
        summary: DatasetSummary,
        *,
        image_size: int,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> ImageClassDataset:
        return load_image_folder(summary.path, image_size=image_size, cache_dir=cache_dir)

    def diagnose(self, root: Path, name: str) -> str | None:  # noqa: D102
        for parent in [root, *(p for p in root.iterdir() if p.is_dir())]:
            archive = parent / f"{name}.zip"
            if archive.is_file():
                try:
                    with _open_set(archive) as tree:
                        scan_image_tree(tree.names(), str(archive))
                except DataError as exc:
                    return str(exc)
        return None
