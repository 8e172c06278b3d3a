"""Omniglot (Lake et al., 2015) in its official layout.

Each set is ``images_<part>/<Alphabet>/characterNN/IIII_DD.png``, as a zip archive or an
extracted folder, where ``IIII`` is the character's global id and ``DD`` the drawer. Images
are 105x105 1-bit PNGs with black ink on white. They are decoded once into ink intensities
(0 = background, 255 = ink), resized with antialiasing, and cached.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from metarch.data.archive import FileTree, open_tree
from metarch.data.base import ImageClassDataset
from metarch.data.cache import cached_dataset
from metarch.data.formats import DATA_FORMATS, DataFormat, DatasetSummary
from metarch.data.paths import candidate_dirs, resolve_data_root
from metarch.errors import DataError
from metarch.utils.progress import report_progress

__all__ = [
    "OMNIGLOT_DRAWERS",
    "OMNIGLOT_ORIGINAL_SIZE",
    "OMNIGLOT_SETS",
    "Character",
    "OmniglotFormat",
    "OmniglotSet",
    "OmniglotSetInfo",
    "decode_omniglot_png",
    "find_omniglot_source",
    "load_omniglot",
    "load_omniglot_source",
]

OMNIGLOT_ORIGINAL_SIZE = 105
#: Drawings of every character (drawers 01-20) in the official sets.
OMNIGLOT_DRAWERS = 20

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OmniglotSetInfo:
    """One official Omniglot set and its expected size."""

    name: str
    folder: str
    alphabets: int
    characters: int

    @property
    def archive(self) -> str:
        """File name of the official archive."""
        return f"{self.folder}.zip"

    @property
    def images(self) -> int:
        """Number of images in the official set."""
        return self.characters * OMNIGLOT_DRAWERS

    def incompleteness(
        self, source: Path, alphabets: int, characters: int, images: int
    ) -> str | None:
        """Why an extracted folder with these counts looks partly extracted, else ``None``.

        Only folders are judged: a zip is the official archive (a truncated one is
        unreadable, not short), while a folder with fewer files is usually an interrupted
        extraction.
        """
        if not source.is_dir() or (
            alphabets >= self.alphabets and characters >= self.characters and images >= self.images
        ):
            return None
        return (
            f"{source} holds {alphabets} alphabets, {characters:,} characters and {images:,} "
            f"images, but the official {self.name} set has {self.alphabets}, "
            f"{self.characters:,} and {self.images:,}: it looks partly extracted; extract "
            f"{self.archive} again, or place the archive next to it (the more complete one "
            "is read)"
        )


OMNIGLOT_SETS: dict[str, OmniglotSetInfo] = {
    info.name: info
    for info in (
        OmniglotSetInfo("background", "images_background", 30, 964),
        OmniglotSetInfo("evaluation", "images_evaluation", 20, 659),
        OmniglotSetInfo("background_small1", "images_background_small1", 5, 136),
        OmniglotSetInfo("background_small2", "images_background_small2", 5, 156),
    )
}

_MEMBER = re.compile(
    r"^(?P<alphabet>[^/]+)/(?P<character>character\d+)/(?P<id>\d+)_(?P<drawer>\d+)\.png$"
)
_IGNORED = re.compile(r"(^|/)(\.DS_Store|Thumbs\.db|__MACOSX/.*|\._.*)$")


@dataclass(frozen=True)
class Character:
    """One Omniglot character.

    Attributes:
        alphabet: Alphabet folder name, e.g. ``Latin``.
        name: Character folder name, e.g. ``character01``.
        id: Global character id from the file names (1-964 background, 965-1623 evaluation).
        index: Class index in the set's arrays.
    """

    alphabet: str
    name: str
    id: int
    index: int

    @property
    def path(self) -> str:
        """``Alphabet/characterNN``, the form used by split files."""
        return f"{self.alphabet}/{self.name}"


class OmniglotSet(ImageClassDataset):
    """A decoded Omniglot set: alphabets, characters and the drawings of each."""

    @property
    def alphabets(self) -> tuple[str, ...]:
        """Alphabet names, in order of character id."""
        return self.groups

    @property
    def characters(self) -> list[Character]:
        """Every character with its global id and class index."""
        return [
            Character(alphabet=path.split("/")[0], name=path.split("/")[1], id=int(cid), index=i)
            for i, (path, cid) in enumerate(zip(self.class_names, self.class_ids, strict=True))
        ]

    def drawings(self, character: str | int) -> np.ndarray:
        """Drawings of one character, ``(20, 1, H, W)`` uint8 ink intensities.

        Args:
            character: ``Alphabet/characterNN`` or a class index.
        """
        index = self.class_index[character] if isinstance(character, str) else character
        return self.images_of(index)

    def drawers(self, character: str | int) -> list[int]:
        """Drawer numbers (1-20) of a character's drawings, in storage order."""
        index = self.class_index[character] if isinstance(character, str) else character
        start, stop = self.class_offsets[index], self.class_offsets[index + 1]
        return [int(n.rsplit("_", 1)[1][:-4]) for n in self.image_names[start:stop]]


def decode_omniglot_png(data: bytes, where: str, image_size: int) -> np.ndarray:
    """Decode one official Omniglot PNG into an ``(image_size, image_size)`` ink array.

    Raises:
        DataError: If the bytes are not a 105x105 1-bit PNG.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            # Checked from the header, before decoding: a file claiming a huge size (a
            # decompression bomb) is refused without allocating its pixels.
            size, mode = image.size, image.mode
            if size != (OMNIGLOT_ORIGINAL_SIZE, OMNIGLOT_ORIGINAL_SIZE) or mode != "1":
                raise DataError(
                    f"{where}: expected a {OMNIGLOT_ORIGINAL_SIZE}x{OMNIGLOT_ORIGINAL_SIZE} "
                    f"1-bit PNG as in the official Omniglot archives, got {size[0]}x{size[1]} "
                    f"mode {mode!r}"
                )
            image.load()
            ink = ImageOps.invert(image.convert("L"))
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"{where}: refused as a possible decompression bomb ({exc}); official Omniglot "
            f"images are {OMNIGLOT_ORIGINAL_SIZE}x{OMNIGLOT_ORIGINAL_SIZE}: remove or replace "
            "this file"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: not a readable PNG image ({exc})") from exc
    if image_size != OMNIGLOT_ORIGINAL_SIZE:
        ink = ink.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(ink, dtype=np.uint8)


def find_omniglot_source(set_name: str, data_root: Path) -> Path | None:
    """Locate a set's extracted folder or zip below a data root (``root`` or ``root/omniglot``).

    When there are several (a folder and its zip, or copies in both places), the one with
    the most images is read, so a partly extracted folder never hides its complete archive;
    an unreadable archive counts as empty, and ties go to the first found (folder before
    zip, ``root`` before ``root/omniglot``).
    """
    info = _info(set_name)
    found = [
        candidate
        for folder in candidate_dirs(data_root, "omniglot")
        for candidate in (folder / info.folder, folder / info.archive)
        if candidate.exists()
    ]
    if len(found) <= 1:
        return found[0] if found else None

    def images(source: Path) -> int:
        try:
            return _count(source, info)[2]
        except DataError:
            return -1

    return max(found, key=images)  # max keeps the first of equal counts


def _count(source: Path, info: OmniglotSetInfo) -> tuple[int, int, int]:
    """``(alphabets, characters, images)`` of a source, from its file listing."""
    with open_tree(source, info.folder) as tree:
        matches = [m for m in map(_MEMBER.match, tree.names()) if m is not None]
    characters = {(m["alphabet"], m["character"]) for m in matches}
    return len({a for a, _ in characters}), len(characters), len(matches)


def _info(set_name: str) -> OmniglotSetInfo:
    try:
        return OMNIGLOT_SETS[set_name]
    except KeyError:
        known = ", ".join(OMNIGLOT_SETS)
        raise DataError(f"unknown Omniglot set {set_name!r}; known sets: {known}") from None


def _decode(tree: FileTree, info: OmniglotSetInfo, image_size: int) -> OmniglotSet:
    # character path -> list of (drawer, image name, file name); ids are checked per character.
    members: dict[str, list[tuple[int, str]]] = defaultdict(list)
    ids: dict[str, int] = {}
    for name in tree.names():
        if _IGNORED.search(name):
            continue
        match = _MEMBER.match(name)
        if match is None:
            if name.lower().endswith(".png"):
                raise DataError(
                    f"{tree.where(name)}: unexpected file; the official layout is "
                    f"{info.folder}/<Alphabet>/characterNN/IIII_DD.png"
                )
            continue
        path = f"{match['alphabet']}/{match['character']}"
        char_id = int(match["id"])
        if ids.setdefault(path, char_id) != char_id:
            raise DataError(
                f"{tree.where(name)}: character id {char_id} differs from id {ids[path]} "
                f"of the other drawings of {path}"
            )
        members[path].append((int(match["drawer"]), name))
    if not members:
        raise DataError(
            f"{tree.source}: no Omniglot images found; expected "
            f"{info.folder}/<Alphabet>/characterNN/IIII_DD.png"
        )
    id_owner: dict[int, str] = {}
    for path, char_id in ids.items():
        if id_owner.setdefault(char_id, path) != path:
            raise DataError(
                f"{tree.source}: character id {char_id} is used by both "
                f"{id_owner[char_id]} and {path}"
            )

    order = sorted(members, key=lambda p: (ids[p], p))
    total = sum(len(v) for v in members.values())
    images = np.empty((total, 1, image_size, image_size), dtype=np.uint8)
    offsets = np.zeros(len(order) + 1, dtype=np.int64)
    image_names: list[str] = []
    cursor = 0
    for c, path in enumerate(order):
        for _, name in sorted(members[path]):
            images[cursor, 0] = decode_omniglot_png(tree.read(name), tree.where(name), image_size)
            image_names.append(name.rsplit("/", 1)[1])
            cursor += 1
            if cursor % 256 == 0 or cursor == total:
                report_progress(f"decoding Omniglot {info.name}", cursor, total)
        offsets[c + 1] = cursor
    return OmniglotSet(
        name=info.name,
        images=images,
        class_offsets=offsets,
        class_names=tuple(order),
        class_groups=tuple(p.split("/")[0] for p in order),
        class_ids=np.asarray([ids[p] for p in order], dtype=np.int64),
        image_names=tuple(image_names),
    )


def load_omniglot(
    set_name: str = "background",
    data_root: str | os.PathLike[str] | None = None,
    *,
    image_size: int = 28,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> OmniglotSet:
    """Load one official Omniglot set, decoding it once and caching the result.

    Args:
        set_name: ``background``, ``evaluation``, ``background_small1`` or
            ``background_small2``.
        data_root: Folder holding ``images_<part>.zip`` or ``images_<part>/`` (directly or in
            an ``omniglot/`` subfolder); see :func:`metarch.data.paths.resolve_data_root`.
        image_size: Side of the square output images (resized with antialiasing).
        download: Fetch the official archive when it is missing.
        cache_dir: Cache folder (default :func:`metarch.data.paths.cache_root`).

    Returns:
        The decoded set; images are ink intensities (0 background, 255 ink).

    Raises:
        DataError: If the set is missing (and not downloaded) or not in the official layout.
    """
    info = _info(set_name)
    root = resolve_data_root(data_root)
    source = find_omniglot_source(set_name, root)
    if source is None and download:
        from metarch.data.download import download_omniglot

        download_omniglot(root, [set_name])
        source = find_omniglot_source(set_name, root)
    if source is None:
        from metarch.data.download import download_advice

        raise DataError(
            f"Omniglot set {set_name!r} not found: place {info.archive} (or the extracted "
            f"{info.folder}/ folder) in {root / 'omniglot'} or {root}, pass --data-root, set "
            f"METARCH_DATA, or download it: {download_advice(root)}"
        )

    return load_omniglot_source(set_name, source, image_size=image_size, cache_dir=cache_dir)


def load_omniglot_source(
    set_name: str,
    source: Path,
    *,
    image_size: int = 28,
    cache_dir: str | os.PathLike[str] | None = None,
) -> OmniglotSet:
    """Load one Omniglot set from a known zip archive or extracted folder.

    Args:
        set_name: Official set name (decides the expected top folder inside a zip).
        source: ``images_<part>.zip`` or the extracted ``images_<part>/`` folder.
        image_size: Side of the square output images.
        cache_dir: Cache folder (default :func:`metarch.data.paths.cache_root`).
    """
    info = _info(set_name)
    if not 1 <= image_size <= 1024:
        raise DataError(f"image_size must be between 1 and 1024, got {image_size}")

    def decode() -> ImageClassDataset:
        with open_tree(source, info.folder) as tree:
            return _decode(tree, info, image_size)

    dataset = cached_dataset(
        "omniglot", set_name, source, {"image_size": image_size}, decode, cache_dir=cache_dir
    )
    warning = info.incompleteness(
        source, len(set(dataset.class_groups)), dataset.num_classes, dataset.num_images
    )
    if warning is not None:
        log.warning("%s", warning)
    # Cache entries hold the base class; re-wrap to expose the Omniglot accessors.
    return OmniglotSet(
        name=dataset.name,
        images=dataset.images,
        class_offsets=dataset.class_offsets,
        class_names=dataset.class_names,
        class_groups=dataset.class_groups,
        class_ids=dataset.class_ids,
        image_names=dataset.image_names,
    )


@DATA_FORMATS.register("omniglot")
class OmniglotFormat(DataFormat):
    """The four official Omniglot sets, as zips or folders, in ``root`` or ``root/omniglot``."""

    name = "omniglot"

    def discover(self, root: Path) -> list[DatasetSummary]:  # noqa: D102
        found = []
        for set_name, info in OMNIGLOT_SETS.items():
            source = find_omniglot_source(set_name, root)
            if source is None:
                continue
            try:
                alphabets, characters, images = _count(source, info)
            except DataError as exc:  # listed, so that only loading this set fails
                found.append(DatasetSummary.unreadable(set_name, self.name, source, str(exc)))
                continue
            found.append(
                DatasetSummary(
                    name=set_name,
                    format=self.name,
                    path=source,
                    alphabets=alphabets,
                    classes=characters,
                    images=images,
                    warning=info.incompleteness(source, alphabets, characters, images),
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
        return load_omniglot_source(
            summary.name, summary.path, image_size=image_size, cache_dir=cache_dir
        )
