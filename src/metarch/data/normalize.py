"""Per-channel input normalisation, with statistics taken from the training classes only.

Natural images train better centred: every channel of every image is shifted by the mean and
divided by the standard deviation of that channel over the *training* pool's images (never
the validation or test classes', so nothing leaks). A run records the numbers it trained
with, and evaluation applies the same ones to any set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metarch.data.pools import ClassPool
from metarch.errors import DataError

__all__ = ["ChannelNormalization"]


@dataclass(frozen=True)
class ChannelNormalization:
    """``(x - mean) / std`` per channel, for images scaled to [0, 1].

    Attributes:
        mean: Mean of each channel.
        std: Standard deviation of each channel (positive).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise DataError(
                f"normalisation needs one mean and one std per channel, got {len(self.mean)} "
                f"means and {len(self.std)} stds"
            )
        if any(not s > 0 for s in self.std):
            raise DataError(f"normalisation stds must be positive, got {list(self.std)}")

    @classmethod
    def of_pool(cls, pool: ClassPool) -> ChannelNormalization:
        """The channel statistics of every image of the pool's classes (rotations aside)."""
        classes = np.unique(pool.classes)
        channels = pool.dataset.image_shape[0]
        total = np.zeros(channels, dtype=np.float64)
        squares = np.zeros(channels, dtype=np.float64)
        count = 0
        for c in classes.tolist():
            pixels = pool.dataset.images_of(c).transpose(1, 0, 2, 3).reshape(channels, -1)
            values = pixels.astype(np.float64) / 255.0
            total += values.sum(axis=1)
            squares += np.square(values).sum(axis=1)
            count += values.shape[1]
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
        if np.any(std == 0):
            raise DataError(f"pool {pool.name!r} has a constant channel; it cannot be normalised")
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))

    @property
    def channels(self) -> int:
        """Number of channels."""
        return len(self.mean)

    def __call__(self, images: Tensor) -> Tensor:
        """Normalise images ``(..., C, H, W)`` (a new tensor)."""
        if images.shape[-3] != self.channels:
            raise DataError(
                f"normalisation is for {self.channels}-channel images, got shape "
                f"{tuple(images.shape)}"
            )
        shape = (self.channels, 1, 1)
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(shape)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(shape)
        return (images - mean) / std

    def to_json(self) -> dict[str, list[float]]:
        """``{"mean": [...], "std": [...]}``."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence[Any]]) -> ChannelNormalization:
        """Read :meth:`to_json`'s form.

        Raises:
            DataError: If a key is missing or a value is not a number.
        """
        try:
            return cls(tuple(float(m) for m in data["mean"]), tuple(float(s) for s in data["std"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed normalisation {dict(data)!r} ({exc})") from None
