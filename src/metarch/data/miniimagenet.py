"""mini-ImageNet (Vinyals et al., 2016) in the split files of Ravi & Larochelle (2017).

A mini-ImageNet folder holds ``train.csv``, ``val.csv`` and ``test.csv`` (header
``filename,label``, rows such as ``n0153282900000005.jpg,n01532829``) and an ``images/``
folder with every image. The standard split has 64, 16 and 20 classes of 600 images each.
Images are decoded as RGB, resized with antialiasing to ``image_size x image_size`` and
cached; each split is decoded and cached on its own.

The three csvs are validated together before anything is decoded: a missing csv, a bad
header, a malformed row, a listed image that does not exist, a filename listed twice, and a
class in two splits (a train/test leak) are errors that name the file and line.

Naming: :meth:`MiniImageNetFormat.discover` reports one summary per folder (named after the
folder, with per-split counts in ``details``), because the three splits are one data set:
listing them as three sets would count every folder three times in ``metarch data info``.
Loading that set by name (``--dataset <folder>``) gives the *train* split, the pool that
meta-training draws from. The other splits are addressed as ``<folder>:val`` and
``<folder>:test`` (``<folder>:train`` also works) through :func:`load_mini_imagenet_split`,
or directly with :func:`load_mini_imagenet`. Class ids are global across splits (train
first, then val, then test), so joined splits keep distinct ids.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from metarch.data.base import ImageClassDataset
from metarch.data.cache import cached_dataset
from metarch.data.folder import decode_image, normalize_image_size
from metarch.data.formats import DATA_FORMATS, DataFormat, DatasetSummary
from metarch.data.paths import resolve_data_root
from metarch.errors import DataError
from metarch.utils.progress import report_progress

__all__ = [
    "MINI_IMAGENET_SPLITS",
    "MiniImageNetFormat",
    "MiniImageNetSplit",
    "is_mini_imagenet_folder",
    "load_mini_imagenet",
    "load_mini_imagenet_split",
    "read_mini_imagenet_index",
]

#: Split names, in the order their class ids are numbered.
MINI_IMAGENET_SPLITS: tuple[str, ...] = ("train", "val", "test")

_HEADER = ("filename", "label")
_LAYOUT = "train.csv, val.csv, test.csv (header 'filename,label') and an images/ folder"


@dataclass(frozen=True)
class MiniImageNetSplit:
    """The rows of one split csv.

    Attributes:
        name: ``train``, ``val`` or ``test``.
        csv_path: The csv file.
        filenames: Image file names (inside ``images/``), in row order.
        labels: Class label (WordNet id) of each row.
        lines: Line number of each row in the csv, for error messages.
    """

    name: str
    csv_path: Path
    filenames: tuple[str, ...]
    labels: tuple[str, ...]
    lines: tuple[int, ...]

    @cached_property
    def classes(self) -> tuple[str, ...]:
        """Class labels in order of first appearance."""
        return tuple(dict.fromkeys(self.labels))


def is_mini_imagenet_folder(path: Path) -> bool:
    """Whether ``path`` looks like a mini-ImageNet folder: ``images/`` and a split csv.

    One csv is enough, so that an incomplete folder is still treated as mini-ImageNet (and
    reported as broken) rather than taken for a class-per-folder set with one class.
    """
    return (path / "images").is_dir() and any(
        (path / f"{split}.csv").is_file() for split in MINI_IMAGENET_SPLITS
    )


def _read_split(path: Path, split: str) -> MiniImageNetSplit:
    csv_path = path / f"{split}.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: missing; a mini-ImageNet folder needs {_LAYOUT}")
    filenames: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    first: dict[str, int] = {}
    try:
        # utf-8-sig: csvs saved by spreadsheet tools often start with a byte order mark.
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or tuple(f.strip() for f in header) != _HEADER:
                got = "an empty file" if header is None else repr(",".join(header))
                raise DataError(f"{csv_path}:1: expected the header 'filename,label', got {got}")
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                fields = [f.strip() for f in row]
                if len(fields) != 2 or not all(fields):
                    raise DataError(
                        f"{csv_path}:{line}: malformed row {','.join(row)!r}; expected "
                        "'filename,label' such as 'n0153282900000005.jpg,n01532829'"
                    )
                filename, label = fields
                if "/" in filename or "\\" in filename or filename in (".", ".."):
                    raise DataError(
                        f"{csv_path}:{line}: malformed filename {filename!r}; expected a plain "
                        "file name inside images/"
                    )
                if filename in first:
                    raise DataError(
                        f"{csv_path}:{line}: {filename} is listed twice "
                        f"(first at line {first[filename]})"
                    )
                first[filename] = line
                filenames.append(filename)
                labels.append(label)
                lines.append(line)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: cannot read the csv ({exc})") from exc
    if not filenames:
        raise DataError(f"{csv_path}: has a header but no rows")
    return MiniImageNetSplit(split, csv_path, tuple(filenames), tuple(labels), tuple(lines))


def read_mini_imagenet_index(path: Path) -> dict[str, MiniImageNetSplit]:
    """Read and cross-check the three split csvs of a mini-ImageNet folder (no decoding).

    Returns:
        ``train``, ``val`` and ``test`` split rows, in that order.

    Raises:
        DataError: Naming the file and line, for a missing csv or ``images/`` folder, a bad
            header, a malformed row, a missing image, a filename listed twice, or a class
            that appears in two splits.
    """
    if not path.is_dir():
        raise DataError(f"mini-ImageNet folder {path} does not exist or is not a folder")
    splits = {split: _read_split(path, split) for split in MINI_IMAGENET_SPLITS}
    images_dir = path / "images"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: missing; a mini-ImageNet folder needs {_LAYOUT}")
    with os.scandir(images_dir) as entries:
        present = {e.name for e in entries}

    file_owner: dict[str, tuple[MiniImageNetSplit, int]] = {}
    class_owner: dict[str, tuple[MiniImageNetSplit, int]] = {}
    for split in splits.values():
        for filename, label, line in zip(split.filenames, split.labels, split.lines, strict=True):
            owner, owner_line = file_owner.setdefault(filename, (split, line))
            if owner is not split:
                raise DataError(
                    f"{split.csv_path}:{line}: {filename} is already listed in "
                    f"{owner.csv_path.name}:{owner_line}; each image belongs to one split"
                )
            owner, owner_line = class_owner.setdefault(label, (split, line))
            if owner is not split:
                raise DataError(
                    f"{split.csv_path}:{line}: class {label} is also in "
                    f"{owner.csv_path.name} (line {owner_line}); the splits must have disjoint "
                    "classes, or test results leak training classes"
                )
            if filename not in present:
                raise DataError(
                    f"{split.csv_path}:{line}: image {images_dir / filename} does not exist"
                )
    return splits


def _check_split(split: str) -> None:
    if split not in MINI_IMAGENET_SPLITS:
        raise DataError(
            f"unknown mini-ImageNet split {split!r}; known splits: "
            f"{', '.join(MINI_IMAGENET_SPLITS)}"
        )


def _decode(
    path: Path,
    splits: Mapping[str, MiniImageNetSplit],
    split: str,
    image_size: tuple[int, int],
) -> ImageClassDataset:
    rows = splits[split]
    classes = rows.classes
    first_id = 0
    for name in MINI_IMAGENET_SPLITS[: MINI_IMAGENET_SPLITS.index(split)]:
        first_id += len(splits[name].classes)
    # Group rows by class (images of a class must be contiguous), keeping csv order.
    members: dict[str, list[str]] = {label: [] for label in classes}
    for filename, label in zip(rows.filenames, rows.labels, strict=True):
        members[label].append(filename)

    images = np.empty((len(rows.filenames), 3, *image_size), dtype=np.uint8)
    offsets = np.zeros(len(classes) + 1, dtype=np.int64)
    image_names: list[str] = []
    cursor = 0
    for c, label in enumerate(classes):
        for filename in members[label]:
            images[cursor] = decode_image(
                path / "images" / filename, mode="RGB", image_size=image_size
            )
            image_names.append(filename)
            cursor += 1
            if cursor % 256 == 0 or cursor == len(rows.filenames):
                report_progress(f"decoding {path.name}:{split}", cursor, len(rows.filenames))
        offsets[c + 1] = cursor
    return ImageClassDataset(
        name=f"{path.name}:{split}",
        images=images,
        class_offsets=offsets,
        class_names=classes,
        class_groups=("",) * len(classes),
        class_ids=np.arange(first_id, first_id + len(classes), dtype=np.int64),
        image_names=tuple(image_names),
    )


def load_mini_imagenet(
    path: str | os.PathLike[str],
    split: str = "train",
    *,
    image_size: int = 84,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageClassDataset:
    """Load one split of a mini-ImageNet folder, decoding it once and caching the result.

    Args:
        path: Folder with ``train.csv``, ``val.csv``, ``test.csv`` and ``images/``.
        split: ``train``, ``val`` or ``test``.
        image_size: Side of the square RGB output images (resized with antialiasing).
        cache_dir: Cache folder (default :func:`metarch.data.paths.cache_root`).

    Returns:
        The split named ``<folder>:<split>``: classes (WordNet ids) in order of first
        appearance in the csv, images of a class in csv order, 3 channels.

    Raises:
        DataError: If the split is unknown or the folder fails validation (see
            :func:`read_mini_imagenet_index`), or an image cannot be decoded.
    """
    source = Path(os.path.abspath(path))  # so that "." still has a name
    _check_split(split)
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise DataError(f"image_size must be an int, got {image_size!r}")
    size = normalize_image_size(image_size)
    splits = read_mini_imagenet_index(source)

    def decode() -> ImageClassDataset:
        return _decode(source, splits, split, size)

    return cached_dataset(
        "mini-imagenet",
        f"{source.name}-{split}",  # no ':' in cache file names
        source,
        {"split": split, "image_size": image_size},
        decode,
        cache_dir=cache_dir,
    )


def load_mini_imagenet_split(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    *,
    image_size: int = 84,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageClassDataset:
    """Load a split by set name: ``<folder>`` (the train split) or ``<folder>:<split>``.

    Args:
        name: ``<folder>``, ``<folder>:train``, ``<folder>:val`` or ``<folder>:test``, where
            ``<folder>`` is a mini-ImageNet folder directly in the data root.
        data_root: See :func:`metarch.data.paths.resolve_data_root`.
        image_size: Side of the square RGB output images.
        cache_dir: Cache folder (default :func:`metarch.data.paths.cache_root`).

    Raises:
        DataError: If the split is unknown or no such mini-ImageNet folder is in the root
            (the message lists those that are).
    """
    folder, _, split = name.partition(":")
    split = split or "train"
    _check_split(split)
    root = resolve_data_root(data_root)
    path = root / folder
    if not folder or not is_mini_imagenet_folder(path):
        found = ", ".join(s.name for s in MiniImageNetFormat().discover(root)) or "none"
        raise DataError(
            f"no mini-ImageNet folder {folder!r} in {root} (found: {found}); expected "
            f"{root}/<folder>/ with {_LAYOUT}"
        )
    return load_mini_imagenet(path, split, image_size=image_size, cache_dir=cache_dir)


@DATA_FORMATS.register("mini-imagenet")
class MiniImageNetFormat(DataFormat):
    """mini-ImageNet folders directly in the data root (see the module docstring).

    A folder that looks like mini-ImageNet but fails validation is still reported, with no
    classes and the problem in ``details["error"]`` and ``problem``, so that listing never
    fails and loading it raises the full message.
    """

    name = "mini-imagenet"

    def discover(self, root: Path) -> list[DatasetSummary]:  # noqa: D102
        found = []
        with os.scandir(root) as entries:
            folders = sorted(Path(e.path) for e in entries if e.is_dir())
        for folder in folders:
            if folder.name.startswith(".") or not is_mini_imagenet_folder(folder):
                continue
            try:
                splits = read_mini_imagenet_index(folder)
            except DataError as exc:
                found.append(
                    DatasetSummary(
                        name=folder.name,
                        format=self.name,
                        path=folder,
                        alphabets=None,
                        classes=0,
                        images=0,
                        details={"error": str(exc)},
                        problem=str(exc),
                    )
                )
                continue
            counts = {
                name: {"classes": len(s.classes), "images": len(s.filenames)}
                for name, s in splits.items()
            }
            found.append(
                DatasetSummary(
                    name=folder.name,
                    format=self.name,
                    path=folder,
                    alphabets=None,
                    classes=sum(c["classes"] for c in counts.values()),
                    images=sum(c["images"] for c in counts.values()),
                    details={"splits": counts},
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
        return load_mini_imagenet(summary.path, "train", image_size=image_size, cache_dir=cache_dir)

    def load_part(  # noqa: D102
        self,
        summary: DatasetSummary,
        part: str,
        *,
        image_size: int,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> ImageClassDataset:
        return load_mini_imagenet(summary.path, part, image_size=image_size, cache_dir=cache_dir)
