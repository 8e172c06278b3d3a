"""Data set formats behind one small interface, found by name in :data:`DATA_FORMATS`.

A format knows how to *discover* its data sets below a data root (cheaply: from file
listings, without decoding images) and how to *load* one of them as an
:class:`~metarch.data.base.ImageClassDataset`. ``metarch data info`` lists what every
registered format discovers; ``--dataset NAME`` anywhere in the CLI loads the named set.

To add a format: subclass :class:`DataFormat` in its own module under ``metarch/data`` and
decorate it with ``@DATA_FORMATS.register("name")``; import the module in
``metarch/data/__init__.py``.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metarch.data.base import ImageClassDataset
from metarch.errors import DataError
from metarch.registry import Registry

__all__ = [
    "DATA_FORMATS",
    "DataFormat",
    "DatasetSummary",
    "discover_datasets",
    "load_image_set",
    "unrecognised_archives",
]


@dataclass(frozen=True)
class DatasetSummary:
    """What ``metarch data info`` reports for one data set found below a data root.

    Attributes:
        name: Set name used by ``--dataset`` (``background``, ``lake_runs``, a folder name, ...).
        format: Registered format name.
        path: Archive or folder it was found at.
        alphabets: Number of alphabets (Omniglot-like sets), else ``None``.
        classes: Number of classes.
        images: Number of images.
        runs: Number of one-shot runs (Lake's runs only), else ``None``.
        details: Format-specific facts (for example per-split counts).
        problem: Why the set cannot be read (a truncated archive, ...), else ``None``.
            ``metarch data info`` shows it as a warning and loading the set raises it;
            commands on other sets are not affected.
        warning: Something to check about a readable set (fewer images than the official
            archive holds, ...), else ``None``.
    """

    name: str
    format: str
    path: Path
    alphabets: int | None
    classes: int
    images: int
    runs: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    warning: str | None = None

    @classmethod
    def unreadable(cls, name: str, format: str, path: Path, problem: str) -> DatasetSummary:
        """A set that was found but cannot be read: listed, so that only loading it fails."""
        return cls(
            name=name,
            format=format,
            path=path,
            alphabets=None,
            classes=0,
            images=0,
            problem=problem,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; ``runs``, ``details``, ``problem`` and ``warning`` only when set."""
        data = asdict(self)
        data["path"] = str(self.path)
        for key in ("runs", "problem", "warning"):
            if data[key] is None:
                del data[key]
        if not self.details:
            del data["details"]
        return data


class DataFormat(ABC):
    """One on-disk data set format."""

    #: Registered name of the format.
    name: str = ""

    @abstractmethod
    def discover(self, root: Path) -> list[DatasetSummary]:
        """Summaries of every set of this format found in ``root`` (no image decoding)."""

    @abstractmethod
    def load(
        self,
        summary: DatasetSummary,
        *,
        image_size: int,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> ImageClassDataset:
        """Decode (or read from the cache) a set found by :meth:`discover`."""

    def load_part(
        self,
        summary: DatasetSummary,
        part: str,
        *,
        image_size: int,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> ImageClassDataset:
        """Load one part (``NAME:PART``) of a set that ships its own splits.

        Raises:
            DataError: For formats without parts (the default).
        """
        raise DataError(f"data set {summary.name!r} ({self.name}) has no part {part!r}")

    def diagnose(self, root: Path, name: str) -> str | None:
        """Why a set called ``name`` that seems to be below ``root`` was not found, if known.

        Called when no format discovered ``name``: a format that sees files meant as that
        set, but malformed (a zip with the wrong top folder, ...), says what is wrong.
        """
        return None


DATA_FORMATS: Registry[type[DataFormat]] = Registry("data format")

log = logging.getLogger(__name__)


def discover_datasets(root: Path) -> list[DatasetSummary]:
    """Every data set that any registered format finds below ``root``.

    A set that cannot be read is listed with its :attr:`DatasetSummary.problem`; it never
    stops the discovery of the others (a format whose whole discovery fails is skipped with
    a logged warning).

    Raises:
        DataError: If ``root`` is not a folder.
    """
    if not root.is_dir():
        raise DataError(
            f"data root {root} is not a folder; pass --data-root DIR or set METARCH_DATA"
        )
    found: list[DatasetSummary] = []
    for name, format_class in DATA_FORMATS.items():
        try:
            found.extend(format_class().discover(root))
        except DataError as exc:
            log.warning("skipping %s data sets in %s: %s", name, root, exc)
    return found


def unrecognised_archives(root: Path, found: list[DatasetSummary]) -> list[str]:
    """What is wrong with each zip in ``root`` (or one folder down) that no set came from.

    A zip no format discovered was most likely meant as a set and is malformed (the wrong
    top folder, ...): each format's :meth:`DataFormat.diagnose` may say why.
    """
    claimed = {summary.path.resolve() for summary in found}
    folders = [root, *(p for p in sorted(root.iterdir()) if p.is_dir())]
    problems = []
    for archive in (a for folder in folders for a in sorted(folder.glob("*.zip"))):
        if archive.resolve() in claimed:
            continue
        for _, format_class in DATA_FORMATS.items():
            problem = format_class().diagnose(root, archive.stem)
            if problem is not None:
                problems.append(problem)
                break
    return problems


def load_image_set(
    name: str,
    root: Path,
    *,
    image_size: int,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageClassDataset:
    """Load the set called ``name`` (or ``name:part``) below ``root``, whatever its format.

    Raises:
        DataError: If no format finds a set of that name (the message lists those found).
    """
    summaries = discover_datasets(root)
    set_name, _, part = name.partition(":")
    for summary in summaries:
        if summary.name == set_name:
            if summary.problem is not None:
                raise DataError(summary.problem)
            data_format = DATA_FORMATS.get(summary.format)()
            if part:
                return data_format.load_part(
                    summary, part, image_size=image_size, cache_dir=cache_dir
                )
            return data_format.load(summary, image_size=image_size, cache_dir=cache_dir)
    for _, format_class in DATA_FORMATS.items():
        problem = format_class().diagnose(root, set_name)
        if problem is not None:
            raise DataError(problem)
    found = ", ".join(s.name for s in summaries) or "none"
    raise DataError(
        f"no data set named {name!r} in {root} (found: {found}); "
        "run 'metarch data info --data-root DIR' to list what is there"
    )
