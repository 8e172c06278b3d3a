"""The in-memory form every image data set is decoded into.

Readers (Omniglot, image folders, mini-ImageNet, ...) decode their files once into an
:class:`ImageClassDataset`: one contiguous ``uint8`` array holding every image, with the
images of each class stored next to each other. Class pools and episode samplers only ever
index this array, which is what makes episode sampling fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from metarch.errors import DataError

__all__ = ["ImageClassDataset"]


@dataclass(frozen=True, eq=False)
class ImageClassDataset:
    """Labelled images grouped by class.

    Attributes:
        name: Short name of the set (``background``, ``evaluation``, a folder name, ...).
        images: ``uint8`` array of shape ``(num_images, channels, height, width)``. Images of
            class ``c`` are ``images[class_offsets[c]:class_offsets[c + 1]]``.
        class_offsets: ``int64`` array of shape ``(num_classes + 1,)``, starting at 0.
        class_names: Unique name of each class (Omniglot: ``Alphabet/characterNN``).
        class_groups: Group of each class (Omniglot: the alphabet; ``""`` for flat sets).
        class_ids: Global id of each class (Omniglot: the character id in the file names).
        image_names: Name of each image, relative to the set (for provenance and debugging).
        class_descriptions: Readable name of each class (``"goose"`` for ``n01855672``;
            ``""`` where unknown), or empty if the set has none.
    """

    name: str
    images: np.ndarray
    class_offsets: np.ndarray
    class_names: tuple[str, ...]
    class_groups: tuple[str, ...]
    class_ids: np.ndarray
    image_names: tuple[str, ...] = field(repr=False)
    class_descriptions: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        num_classes = len(self.class_names)
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(
                f"{self.name}: images must be uint8 (N, C, H, W), "
                f"got {self.images.dtype} {self.images.shape}"
            )
        if self.class_offsets.shape != (num_classes + 1,):
            raise DataError(f"{self.name}: class_offsets must have {num_classes + 1} entries")
        if self.class_offsets[0] != 0 or self.class_offsets[-1] != len(self.images):
            raise DataError(f"{self.name}: class_offsets must span all {len(self.images)} images")
        if np.any(np.diff(self.class_offsets) <= 0):
            raise DataError(f"{self.name}: every class needs at least one image")
        if len(self.class_groups) != num_classes or len(self.class_ids) != num_classes:
            raise DataError(f"{self.name}: one group and one id per class are required")
        if len(self.image_names) != len(self.images):
            raise DataError(f"{self.name}: one name per image is required")
        if self.class_descriptions and len(self.class_descriptions) != num_classes:
            raise DataError(f"{self.name}: class_descriptions needs one entry per class")
        if len(set(self.class_names)) != num_classes:
            raise DataError(f"{self.name}: class names must be unique")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        """Number of images over all classes."""
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of every image."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    @cached_property
    def class_sizes(self) -> np.ndarray:
        """Number of images of each class."""
        return np.diff(self.class_offsets)

    @cached_property
    def groups(self) -> tuple[str, ...]:
        """Distinct groups (alphabets) in order of first appearance."""
        return tuple(dict.fromkeys(self.class_groups))

    @cached_property
    def class_index(self) -> dict[str, int]:
        """Map from class name to class index."""
        return {name: i for i, name in enumerate(self.class_names)}

    def describe(self, class_index: int) -> str:
        """The class's name, with its description if the set has one (``n01855672 goose``)."""
        name = self.class_names[class_index]
        description = self.class_descriptions[class_index] if self.class_descriptions else ""
        return f"{name} {description}" if description else name

    def classes_in_group(self, group: str) -> np.ndarray:
        """Indices of the classes of ``group``, in storage order."""
        indices = [i for i, g in enumerate(self.class_groups) if g == group]
        if not indices:
            known = ", ".join(self.groups)
            raise DataError(f"{self.name}: unknown group {group!r}; known groups: {known}")
        return np.asarray(indices, dtype=np.int64)

    def images_of(self, class_index: int) -> np.ndarray:
        """The images of one class, shape ``(size, C, H, W)`` (a view, not a copy)."""
        start, stop = self.class_offsets[class_index], self.class_offsets[class_index + 1]
        return self.images[start:stop]

    @staticmethod
    def concat(name: str, parts: Sequence[ImageClassDataset]) -> ImageClassDataset:
        """Join several sets into one (for example background + evaluation Omniglot).

        Raises:
            DataError: If image shapes differ or class names collide.
        """
        if not parts:
            raise DataError("cannot concatenate an empty list of data sets")
        shapes = {p.image_shape for p in parts}
        if len(shapes) != 1:
            raise DataError(f"cannot join sets with different image shapes: {sorted(shapes)}")
        offsets = [np.zeros(1, dtype=np.int64)]
        start = 0
        for part in parts:
            offsets.append(part.class_offsets[1:] + start)
            start += part.num_images
        return ImageClassDataset(
            name=name,
            images=np.concatenate([p.images for p in parts]),
            class_offsets=np.concatenate(offsets),
            class_names=tuple(n for p in parts for n in p.class_names),
            class_groups=tuple(g for p in parts for g in p.class_groups),
            class_ids=np.concatenate([p.class_ids for p in parts]),
            image_names=tuple(n for p in parts for n in p.image_names),
            class_descriptions=(
                tuple(d for p in parts for d in (p.class_descriptions or ("",) * p.num_classes))
                if any(p.class_descriptions for p in parts)
                else ()
            ),
        )
