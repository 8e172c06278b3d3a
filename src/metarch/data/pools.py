"""Class pools: which classes (and rotations of them) episodes are drawn from.

A :class:`ClassPool` is a list of *entries*, each a class of a decoded set together with a
rotation by a multiple of 90 degrees. Rotated copies count as classes of their own, as in
Vinyals et al. (2016). Pools come from

* a whole set (``background``),
* a named alphabet-disjoint split of a set (``background:train``, see :data:`NAMED_SPLITS`),
* a split file with one ``Alphabet/characterNN`` or ``Alphabet/characterNN/rotDDD`` per
  line, the form of the published Vinyals split lists.

Splits are written as split files, so every experiment names exactly the classes it used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from metarch.data.base import ImageClassDataset
from metarch.errors import DataError
from metarch.utils.io import atomic_write_text

__all__ = [
    "NAMED_SPLITS",
    "ROTATION_DEGREES",
    "ClassPool",
    "NamedSplit",
    "alphabet_split",
    "class_split",
    "parse_split_file",
]

ROTATION_DEGREES = (0, 90, 180, 270)


@dataclass(frozen=True, eq=False)
class ClassPool:
    """Classes of one decoded set that episodes are drawn from.

    Attributes:
        dataset: The decoded set the entries index into.
        classes: ``int64`` class index (into ``dataset``) of each entry.
        rotations: ``int64`` quarter turns (0-3, counter-clockwise) of each entry.
        name: What the pool is, for messages and reports (``background:train``, ...).
    """

    dataset: ImageClassDataset
    classes: np.ndarray
    rotations: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        if self.classes.shape != self.rotations.shape or self.classes.ndim != 1:
            raise DataError("a class pool needs one rotation per class")
        if len(self.classes) == 0:
            raise DataError(f"class pool {self.name or self.dataset.name!r} is empty")
        if self.classes.min() < 0 or self.classes.max() >= self.dataset.num_classes:
            raise DataError("class pool entries must index classes of its data set")
        if self.rotations.min() < 0 or self.rotations.max() > 3:
            raise DataError("rotations are quarter turns 0-3")
        _, h, w = self.dataset.image_shape
        if h != w and np.any(self.rotations % 2 == 1):
            raise DataError(f"rotations by 90 or 270 degrees need square images, got {h}x{w}")
        keys = self.classes * 4 + self.rotations
        if len(np.unique(keys)) != len(keys):
            raise DataError(f"class pool {self.name!r} lists a class and rotation twice")

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def whole(cls, dataset: ImageClassDataset, name: str | None = None) -> ClassPool:
        """Every class of ``dataset``, unrotated."""
        classes = np.arange(dataset.num_classes, dtype=np.int64)
        return cls(dataset, classes, np.zeros_like(classes), name or dataset.name)

    @classmethod
    def from_groups(
        cls, dataset: ImageClassDataset, groups: Iterable[str], name: str | None = None
    ) -> ClassPool:
        """Every class of the given groups (alphabets), unrotated."""
        groups = list(groups)
        classes = np.concatenate([dataset.classes_in_group(g) for g in groups])
        return cls(dataset, classes, np.zeros_like(classes), name or dataset.name)

    @classmethod
    def from_split_file(
        cls, dataset: ImageClassDataset, path: str | os.PathLike[str], name: str | None = None
    ) -> ClassPool:
        """The entries listed in a split file (see :func:`parse_split_file`)."""
        classes, rotations = parse_split_file(dataset, path)
        return cls(dataset, classes, rotations, name or Path(path).name)

    def with_rotations(self, degrees: Sequence[int] = (90, 180, 270)) -> ClassPool:
        """Add rotated copies of every unrotated entry as extra classes.

        Args:
            degrees: Rotations to add, from 90, 180 and 270.
        """
        turns = []
        for degree in degrees:
            if degree not in ROTATION_DEGREES[1:]:
                raise DataError(f"rotations must be 90, 180 or 270 degrees, got {degree}")
            turns.append(degree // 90)
        base = self.classes[self.rotations == 0]
        classes = [self.classes] + [base for _ in turns]
        rotations = [self.rotations] + [np.full_like(base, t) for t in turns]
        merged_classes = np.concatenate(classes)
        merged_rotations = np.concatenate(rotations)
        # Entries already listed with that rotation are kept once.
        _, first = np.unique(merged_classes * 4 + merged_rotations, return_index=True)
        keep = np.sort(first)
        return ClassPool(
            self.dataset, merged_classes[keep], merged_rotations[keep], f"{self.name}+rot"
        )

    @cached_property
    def entry_names(self) -> tuple[str, ...]:
        """``Alphabet/characterNN/rotDDD`` of each entry (the split file form)."""
        names = self.dataset.class_names
        return tuple(
            f"{names[c]}/rot{int(r) * 90:03d}"
            for c, r in zip(self.classes.tolist(), self.rotations.tolist(), strict=True)
        )

    def entry_label(self, entry: int) -> str:
        """A readable name of one entry: its class, description and any rotation."""
        c, r = int(self.classes[entry]), int(self.rotations[entry])
        label = self.dataset.describe(c).split(",")[0]  # the first of a description's names
        return f"{label} rot{r * 90:03d}" if r else label

    @cached_property
    def entry_groups(self) -> np.ndarray:
        """Group (alphabet) index of each entry, indexing :attr:`group_names`."""
        lookup = {g: i for i, g in enumerate(self.group_names)}
        return np.asarray([lookup[g] for g in self._entry_group_names])

    @cached_property
    def group_names(self) -> tuple[str, ...]:
        """Distinct groups of the entries, in order of first appearance.

        A rotated alphabet is a group of its own (``Greek@rot090``): rotations are new
        classes, and a within-alphabet episode must not tell characters apart by their
        rotation, which the upright test alphabets never allow.
        """
        return tuple(dict.fromkeys(self._entry_group_names))

    @cached_property
    def _entry_group_names(self) -> list[str]:
        groups = self.dataset.class_groups
        return [
            groups[c] if r == 0 else f"{groups[c]}@rot{r * 90:03d}"
            for c, r in zip(self.classes.tolist(), self.rotations.tolist(), strict=True)
        ]

    @cached_property
    def class_sizes(self) -> np.ndarray:
        """Number of images of each entry's class."""
        sizes: np.ndarray = self.dataset.class_sizes[self.classes]
        return sizes

    def write_split_file(self, path: str | os.PathLike[str]) -> None:
        """Write the entries as a split file (atomically), one per line."""
        atomic_write_text(path, "".join(f"{n}\n" for n in self.entry_names))


def parse_split_file(
    dataset: ImageClassDataset, path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Read a split file against ``dataset``.

    Each non-blank line that does not start with ``#`` is ``Group/class`` or
    ``Group/class/rotDDD`` with DDD one of 000, 090, 180, 270.

    Returns:
        ``(classes, rotations)``: class indices and quarter turns of each listed entry.

    Raises:
        DataError: Naming the file and line of an unknown group or class, a malformed line,
            a bad rotation or a repeated entry.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read split file {path} ({exc})") from exc
    known_groups = set(dataset.groups)
    classes: list[int] = []
    rotations: list[int] = []
    seen: dict[tuple[int, int], int] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        parts = line.split("/")
        turns = 0
        if len(parts) == 3:
            rot = parts.pop()
            degrees = int(rot[3:]) if rot.startswith("rot") and rot[3:].isdigit() else -1
            if degrees not in ROTATION_DEGREES:
                raise DataError(
                    f"{where}: bad rotation {rot!r}; use rot000, rot090, rot180 or rot270"
                )
            turns = degrees // 90
        if len(parts) != 2 or not all(parts):
            raise DataError(
                f"{where}: expected 'Alphabet/characterNN' or 'Alphabet/characterNN/rotDDD', "
                f"got {line!r}"
            )
        if parts[0] not in known_groups:
            raise DataError(
                f"{where}: unknown alphabet {parts[0]!r}; the set {dataset.name!r} has "
                f"{len(known_groups)} alphabets ({', '.join(sorted(known_groups)[:5])}, ...)"
            )
        class_name = "/".join(parts)
        if class_name not in dataset.class_index:
            raise DataError(f"{where}: alphabet {parts[0]!r} has no {parts[1]!r}")
        index = dataset.class_index[class_name]
        if (index, turns) in seen:
            raise DataError(f"{where}: {line!r} repeats line {seen[index, turns]}")
        seen[index, turns] = number
        classes.append(index)
        rotations.append(turns)
    if not classes:
        raise DataError(f"split file {path} lists no classes")
    return np.asarray(classes, dtype=np.int64), np.asarray(rotations, dtype=np.int64)


def alphabet_split(
    dataset: ImageClassDataset,
    sizes: Mapping[str, int],
    *,
    seed: int = 0,
    min_classes: Mapping[str, int] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Split the groups (alphabets) of a set into disjoint named parts, deterministically.

    Groups are sorted by name and shuffled with ``seed``; parts are then filled in the
    order of ``sizes``, each taking the next groups that have at least ``min_classes[part]``
    classes. Groups left over go to the last part only if its size is ``-1``.

    Args:
        dataset: The set whose groups are split.
        sizes: Part name -> number of groups; one part may be ``-1`` for "the rest".
        seed: Shuffle seed.
        min_classes: Part name -> fewest classes a group of that part needs (for example 20
            for a within-alphabet 20-way test part).

    Returns:
        Part name -> sorted group names.
    """
    _check_part_sizes(sizes, "alphabets")
    if sum(1 for n in sizes.values() if n == -1) > 1:
        raise DataError("at most one split part can take the remaining alphabets (-1)")
    min_classes = dict(min_classes or {})
    counts = {g: len(dataset.classes_in_group(g)) for g in dataset.groups}
    order = sorted(counts)
    permutation = np.random.default_rng(seed).permutation(len(order))
    remaining = [order[i] for i in permutation]
    parts: dict[str, tuple[str, ...]] = {}
    # Fixed-size parts first, so "the rest" gets what they leave.
    for part, size in sorted(sizes.items(), key=lambda item: item[1] == -1):
        if size == -1:
            chosen = list(remaining)
        else:
            chosen = [g for g in remaining if counts[g] >= min_classes.get(part, 0)][:size]
            if len(chosen) < size:
                raise DataError(
                    f"split part {part!r} needs {size} alphabets with at least "
                    f"{min_classes.get(part, 0)} characters; only {len(chosen)} are left"
                )
        remaining = [g for g in remaining if g not in chosen]
        parts[part] = tuple(sorted(chosen))
    return {part: parts[part] for part in sizes}


def _check_part_sizes(sizes: Mapping[str, int], unit: str) -> None:
    """Refuse part sizes that are neither a positive count nor -1 ("the rest")."""
    for part, size in sizes.items():
        if size != -1 and size < 1:
            raise DataError(
                f"split part {part!r}: {size} {unit} is not a size; give a positive number, "
                f"or -1 for the {unit} the other parts leave"
            )


def class_split(
    dataset: ImageClassDataset, sizes: Mapping[str, int], *, seed: int = 0
) -> dict[str, tuple[str, ...]]:
    """Split the classes of a flat set into disjoint named parts, deterministically.

    Class names are sorted and shuffled with ``seed``; parts then take the next classes in
    the order of ``sizes``. One part may be ``-1``: the classes the others leave.

    Returns:
        Part name -> sorted class names.
    """
    _check_part_sizes(sizes, "classes")
    if sum(1 for n in sizes.values() if n == -1) > 1:
        raise DataError("at most one split part can take the remaining classes (-1)")
    fixed = sum(n for n in sizes.values() if n != -1)
    if fixed > dataset.num_classes:
        raise DataError(
            f"split parts need {fixed} classes; {dataset.name!r} has {dataset.num_classes}"
        )
    order = sorted(dataset.class_names)
    permutation = np.random.default_rng(seed).permutation(len(order))
    remaining = [order[i] for i in permutation]
    parts: dict[str, tuple[str, ...]] = {}
    for part, size in sorted(sizes.items(), key=lambda item: item[1] == -1):
        chosen = list(remaining) if size == -1 else remaining[:size]
        remaining = remaining[len(chosen) :]
        parts[part] = tuple(sorted(chosen))
    return {part: parts[part] for part in sizes}


@dataclass(frozen=True)
class NamedSplit:
    """A fixed split of one set into disjoint parts, usable as ``SET:PART`` anywhere.

    Omniglot is split by alphabet (a test alphabet is never seen in training); a flat set
    such as Tiny ImageNet by class.

    Attributes:
        set_name: The set it splits (``background``).
        parts: Part name -> alphabets (``unit="groups"``) or classes (``unit="classes"``).
        seed: Seed :func:`alphabet_split` or :func:`class_split` reproduces the parts with.
        sizes: Sizes that function reproduces the parts with.
        min_classes: Minimum classes per alphabet, per part (alphabet splits only).
        unit: What the parts list: ``groups`` (alphabets) or ``classes``.
    """

    set_name: str
    parts: Mapping[str, tuple[str, ...]]
    seed: int
    sizes: Mapping[str, int]
    min_classes: Mapping[str, int]
    unit: Literal["groups", "classes"] = "groups"

    def reproduce(self, dataset: ImageClassDataset) -> dict[str, tuple[str, ...]]:
        """The parts, computed again from ``dataset`` with the recorded seed and sizes."""
        if self.unit == "classes":
            return class_split(dataset, self.sizes, seed=self.seed)
        return alphabet_split(dataset, self.sizes, seed=self.seed, min_classes=self.min_classes)

    def pool(self, dataset: ImageClassDataset, part: str) -> ClassPool:
        """The pool of one part, or of several joined by ``+`` (``train+val``).

        Joined parts serve a final model trained on everything but the test alphabets,
        once the number of steps has been chosen on a run validated on ``val``.
        """
        names = part.split("+")
        for name in names:
            if name not in self.parts:
                raise DataError(
                    f"split of {self.set_name!r} has no part {name!r}; parts: "
                    f"{', '.join(self.parts)} (join several with '+', e.g. train+val)"
                )
        if len(set(names)) != len(names):
            raise DataError(f"part {part!r} of {self.set_name!r} names a part twice")
        members = [member for name in names for member in self.parts[name]]
        if self.unit == "groups":
            return ClassPool.from_groups(dataset, members, f"{self.set_name}:{part}")
        missing = [m for m in members if m not in dataset.class_index]
        if missing:
            raise DataError(
                f"{dataset.name!r} lacks {len(missing)} classes of the published split of "
                f"{self.set_name!r} (e.g. {missing[0]!r}); is it the original set?"
            )
        classes = np.asarray([dataset.class_index[m] for m in members], dtype=np.int64)
        return ClassPool(dataset, classes, np.zeros_like(classes), f"{self.set_name}:{part}")


# The held-out alphabets every Omniglot result in BENCHMARKS.md is measured on. Produced by
# alphabet_split(background, sizes, seed=0, min_classes) and frozen here so that a change of
# numpy's shuffle can never move them; tests check the two still agree.
NAMED_SPLITS: dict[str, NamedSplit] = {
    "background": NamedSplit(
        set_name="background",
        parts={
            "train": (
                "Alphabet_of_the_Magi",
                "Anglo-Saxon_Futhorc",
                "Armenian",
                "Balinese",
                "Blackfoot_(Canadian_Aboriginal_Syllabics)",
                "Braille",
                "Burmese_(Myanmar)",
                "Futurama",
                "Grantha",
                "Greek",
                "Gujarati",
                "Inuktitut_(Canadian_Aboriginal_Syllabics)",
                "Japanese_(katakana)",
                "Korean",
                "Malay_(Jawi_-_Arabic)",
                "N_Ko",
                "Ojibwe_(Canadian_Aboriginal_Syllabics)",
                "Syriac_(Estrangelo)",
                "Tagalog",
                "Tifinagh",
            ),
            "val": ("Arcadian", "Cyrillic", "Early_Aramaic", "Latin", "Sanskrit"),
            "test": (
                "Asomtavruli_(Georgian)",
                "Bengali",
                "Hebrew",
                "Japanese_(hiragana)",
                "Mkhedruli_(Georgian)",
            ),
        },
        seed=0,
        sizes={"train": -1, "val": 5, "test": 5},
        min_classes={"val": 20, "test": 20},
    ),
    # Tiny ImageNet few-shot background set (160 classes): a class-disjoint 96/32/32 split,
    # class_split(set, sizes, seed=0), frozen here like Omniglot's alphabets.
    "tiny_imagenet_fs_background": NamedSplit(
        set_name="tiny_imagenet_fs_background",
        parts={
            "train": (
                "n01641577",
                "n01770393",
                "n01774384",
                "n01784675",
                "n01855672",
                "n01910747",
                "n01917289",
                "n01950731",
                "n01984695",
                "n02002724",
                "n02058221",
                "n02085620",
                "n02094433",
                "n02106662",
                "n02113799",
                "n02123394",
                "n02124075",
                "n02129165",
                "n02132136",
                "n02206856",
                "n02226429",
                "n02231487",
                "n02233338",
                "n02236044",
                "n02268443",
                "n02321529",
                "n02364673",
                "n02437312",
                "n02509815",
                "n02669723",
                "n02730930",
                "n02769748",
                "n02802426",
                "n02814533",
                "n02843684",
                "n02883205",
                "n02892201",
                "n02906734",
                "n02917067",
                "n02927161",
                "n02950826",
                "n02963159",
                "n02988304",
                "n03014705",
                "n03026506",
                "n03085013",
                "n03100240",
                "n03126707",
                "n03201208",
                "n03355925",
                "n03393912",
                "n03400231",
                "n03424325",
                "n03447447",
                "n03544143",
                "n03617480",
                "n03637318",
                "n03649909",
                "n03706229",
                "n03770439",
                "n03804744",
                "n03814639",
                "n03891332",
                "n03902125",
                "n03937543",
                "n03970156",
                "n03983396",
                "n03992509",
                "n04070727",
                "n04133789",
                "n04149813",
                "n04251144",
                "n04254777",
                "n04275548",
                "n04311004",
                "n04328186",
                "n04398044",
                "n04399382",
                "n04417672",
                "n04456115",
                "n04486054",
                "n04507155",
                "n04562935",
                "n04596742",
                "n04597913",
                "n07579787",
                "n07614500",
                "n07615774",
                "n07715103",
                "n07734744",
                "n07747607",
                "n07749582",
                "n07873807",
                "n07920052",
                "n09193705",
                "n09428293",
            ),
            "val": (
                "n01774750",
                "n01944390",
                "n02056570",
                "n02486410",
                "n02814860",
                "n02837789",
                "n02841315",
                "n02999410",
                "n03089624",
                "n03160309",
                "n03179701",
                "n03255030",
                "n03584254",
                "n03662601",
                "n03670208",
                "n03763968",
                "n03930313",
                "n03976657",
                "n03977966",
                "n04008634",
                "n04023962",
                "n04099969",
                "n04179913",
                "n04285008",
                "n04532106",
                "n04560804",
                "n06596364",
                "n07711569",
                "n07720875",
                "n07753592",
                "n07871810",
                "n09332890",
            ),
            "test": (
                "n01644900",
                "n01742172",
                "n01945685",
                "n01983481",
                "n02099601",
                "n02123045",
                "n02395406",
                "n02410509",
                "n02415577",
                "n02423022",
                "n02504458",
                "n02666196",
                "n02788148",
                "n02808440",
                "n03250847",
                "n03444034",
                "n03599486",
                "n03733131",
                "n03796401",
                "n04067472",
                "n04146614",
                "n04259630",
                "n04356056",
                "n04366367",
                "n04376876",
                "n04465501",
                "n04487081",
                "n04540053",
                "n07583066",
                "n07768694",
                "n07875152",
                "n09256479",
            ),
        },
        seed=0,
        sizes={"train": -1, "val": 32, "test": 32},
        min_classes={},
        unit="classes",
    ),
}
