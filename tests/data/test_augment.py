from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metarch.data.augment import AffineAugmentation
from metarch.data.episodes import EpisodeSampler
from metarch.data.omniglot import load_omniglot
from metarch.data.pools import ClassPool
from metarch.errors import EpisodeError
from tests.fixtures import write_omniglot_set


@pytest.fixture
def pool(tmp_path: Path) -> ClassPool:
    write_omniglot_set(tmp_path, "images_background", {"Alpha": 6, "Beta": 5})
    return ClassPool.whole(load_omniglot("background", tmp_path)).with_rotations()


def centroid(image: torch.Tensor) -> tuple[float, float]:
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = image.sum()
    return float((rows * image).sum() / mass), float((cols * image).sum() / mass)


def test_midpoint_draws_are_the_identity() -> None:
    images = torch.rand(3, 1, 28, 28)
    identity = np.full((3, 6), 0.5)
    out = AffineAugmentation(rotation=30, shear=0.5, scale=0.5, translate=0.3)(images, identity)
    assert torch.allclose(out, images, atol=1e-5)  # grid rounding only


def test_translation_moves_the_content_by_the_expected_pixels() -> None:
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10:14, 10:14] = 1.0
    augment = AffineAugmentation(rotation=0, shear=0, scale=0, translate=4 / 28)
    draws = np.array([[0.5, 0.5, 0.5, 0.5, 1.0, 0.5]])  # largest shift of the x sampling grid
    moved = augment(image, draws)[0, 0]
    row, col = centroid(moved)
    # Sampling 4 pixels to the right shows content that sat 4 pixels to the right:
    # the picture moves left.
    assert row == pytest.approx(11.5, abs=1e-4) and col == pytest.approx(7.5, abs=1e-4)
    assert float(moved.sum()) == pytest.approx(16.0, abs=1e-4)


def test_rotation_by_the_largest_angle() -> None:
    augment = AffineAugmentation(rotation=90, shear=0, scale=0, translate=0)
    matrix = augment.matrices(np.array([[1.0, 0.5, 0.5, 0.5, 0.5, 0.5]]))[0]
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]], dtype=matrix.dtype)
    assert torch.allclose(matrix, expected, atol=1e-12)


def test_invalid_ranges_are_refused() -> None:
    with pytest.raises(EpisodeError, match="rotation must be between 0 and 180"):
        AffineAugmentation(rotation=-1)
    with pytest.raises(EpisodeError, match=r"scale must be between 0 and 0\.9"):
        AffineAugmentation(scale=1.5)
    with pytest.raises(EpisodeError, match="6 uniform numbers per image"):
        AffineAugmentation()(torch.zeros(2, 1, 28, 28), np.zeros((2, 5)))


def test_augmented_tasks_are_pure_functions_of_their_index(pool: ClassPool) -> None:
    augment = AffineAugmentation()
    sampler = EpisodeSampler(pool, 4, 2, 3, seed=5, augment=augment)
    batch = sampler.sample(tasks=4, batch_index=1)
    again = EpisodeSampler(pool, 4, 2, 3, seed=5, augment=augment).tasks([6, 4])
    assert torch.equal(again.support_images, batch.support_images[[2, 0]])
    assert torch.equal(again.query_images, batch.query_images[[2, 0]])
    plain = EpisodeSampler(pool, 4, 2, 3, seed=5).sample(tasks=4, batch_index=1)
    # The same classes and drawings, each distorted differently.
    assert torch.equal(plain.entries, batch.entries)
    assert torch.equal(plain.query_image_ids, batch.query_image_ids)
    assert not torch.equal(plain.support_images, batch.support_images)
    differences = (plain.support_images - batch.support_images).abs().flatten(2).amax(dim=2)
    assert bool((differences > 0).all())  # every single image is distorted
    assert float(batch.support_images.min()) >= 0.0
    assert float(batch.support_images.max()) <= 1.0 + 1e-6
