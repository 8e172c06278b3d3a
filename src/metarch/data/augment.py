"""Random affine distortions of episode images, reproducible per task.

Few-shot data sets have few drawings per class (Omniglot: 20), so a backbone meta-trained
on them sees every image many times. Small random affine distortions of every training
image (rotation, shear, scale, translation), as in Koch et al.'s one-shot siamese networks
on Omniglot, make each episode new; natural images add horizontal mirroring and fill the
borders from the image rather than with black. They are applied to meta-training episodes only;
validation and evaluation episodes are never distorted.

Each image's distortion is drawn from the counter-based generator of its task
(:mod:`metarch.data.rng`), so an augmented task is still a pure function of
``(seed, task_index)``: runs resume bit-identically and every process draws the same
distortions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metarch.errors import EpisodeError

__all__ = ["AffineAugmentation"]


@dataclass(frozen=True)
class AffineAugmentation:
    """Uniformly random affine distortions of images.

    Every parameter is drawn independently for every image from a uniform range centred on
    the identity.

    Attributes:
        rotation: Largest rotation, in degrees (``[-rotation, rotation]``).
        shear: Largest shear factor (``[-shear, shear]``, horizontal).
        scale: Largest relative change of scale along each axis (``[1-scale, 1+scale]``).
        translate: Largest shift along each axis, as a fraction of the image side.
        flip: Mirror half of the images left to right (natural images; never for
            characters, whose mirror images are other characters).
        padding: What pixels from outside the image are: ``zeros`` (Omniglot's
            background), ``border`` (the nearest edge pixel) or ``reflection``.
    """

    rotation: float = 10.0
    shear: float = 0.1
    scale: float = 0.1
    translate: float = 0.08
    flip: bool = False
    padding: Literal["zeros", "border", "reflection"] = "zeros"

    @property
    def draws_per_image(self) -> int:
        """Uniform numbers each image's distortion consumes (one more with ``flip``)."""
        return 7 if self.flip else 6

    def __post_init__(self) -> None:
        limits = {
            "rotation": (self.rotation, 180.0),
            "shear": (self.shear, 1.0),
            "scale": (self.scale, 0.9),
            "translate": (self.translate, 0.5),
        }
        if self.padding not in ("zeros", "border", "reflection"):
            raise EpisodeError(
                f"augmentation padding must be zeros, border or reflection, got {self.padding!r}"
            )
        for name, (value, largest) in limits.items():
            if not 0.0 <= value <= largest:
                raise EpisodeError(
                    f"augmentation {name} must be between 0 and {largest}, got {value}"
                )

    def matrices(self, uniforms: np.ndarray) -> Tensor:
        """Sampling matrices ``(B, 2, 3)`` (``affine_grid``'s form) from uniforms.

        Args:
            uniforms: ``(B, draws_per_image)`` numbers in ``[0, 1)``.
        """
        u = torch.from_numpy(2.0 * uniforms - 1.0)  # [-1, 1)
        angle = u[:, 0] * math.radians(self.rotation)
        shear = u[:, 1] * self.shear
        scale_x = 1.0 + u[:, 2] * self.scale
        if self.flip:  # a negative x scale samples the image mirrored
            scale_x = torch.where(u[:, 6] < 0, -scale_x, scale_x)
        scale_y = 1.0 + u[:, 3] * self.scale
        # Normalised coordinates span [-1, 1], so a shift of f image sides is 2f.
        shift = u[:, 4:6] * (2.0 * self.translate)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # rotation @ shear @ scale, written out.
        linear = torch.stack(
            [
                torch.stack([cos * scale_x, (cos * shear - sin) * scale_y], dim=-1),
                torch.stack([sin * scale_x, (sin * shear + cos) * scale_y], dim=-1),
            ],
            dim=-2,
        )
        return torch.cat([linear, shift.unsqueeze(-1)], dim=-1)

    def __call__(self, images: Tensor, uniforms: np.ndarray) -> Tensor:
        """Distort images ``(B, C, H, W)`` with one distortion per image.

        Args:
            images: Float images.
            uniforms: ``(B, draws_per_image)`` uniform numbers in ``[0, 1)`` that fix the
                distortions.
        """
        if uniforms.shape != (images.shape[0], self.draws_per_image):
            raise EpisodeError(
                f"need {self.draws_per_image} uniform numbers per image, got an array of shape "
                f"{uniforms.shape} for {images.shape[0]} images"
            )
        theta = self.matrices(uniforms).to(images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode=self.padding, align_corners=False
        )
