"""Small models and hand-built episode batches for meta-learner tests."""

from __future__ import annotations

import torch
from torch import Tensor

from metarch.data.episodes import EpisodeBatch
from metarch.models import FewShotClassifier, create_model

__all__ = ["make_batch", "tiny_classifier"]


def make_batch(
    tasks: int = 4,
    ways: int = 3,
    shots: int = 2,
    queries: int = 3,
    size: int = 12,
    dtype: torch.dtype = torch.float64,
    seed: int = 1,
) -> EpisodeBatch:
    """Random images with episode-shaped labels (support and query class-major)."""
    generator = torch.Generator().manual_seed(seed)
    support = torch.rand(tasks, ways * shots, 1, size, size, generator=generator, dtype=dtype)
    query = torch.rand(tasks, ways * queries, 1, size, size, generator=generator, dtype=dtype)
    # Make classes separable enough that learning changes the loss.
    for way in range(ways):
        support[:, way * shots : (way + 1) * shots, :, way * 3 : way * 3 + 3] += 1.0
        query[:, way * queries : (way + 1) * queries, :, way * 3 : way * 3 + 3] += 1.0
    labels = torch.arange(ways)
    zeros = torch.zeros(tasks, 1, dtype=torch.long)
    return EpisodeBatch(
        support_images=support,
        support_labels=labels.repeat_interleave(shots).expand(tasks, -1).contiguous(),
        query_images=query,
        query_labels=labels.repeat_interleave(queries).expand(tasks, -1).contiguous(),
        entries=zeros,
        support_image_ids=zeros,
        query_image_ids=zeros,
        task_indices=torch.arange(tasks),
    )


def tiny_classifier(
    ways: int = 3, steps: int = 1, per_step_norm: bool = False, hidden: int = 6, size: int = 12
) -> FewShotClassifier:
    """A float64 strided Conv-4 with few filters (fast finite differences)."""
    torch.manual_seed(0)
    backbone = create_model(
        "conv4-strided", hidden=hidden, steps=steps, per_step_norm=per_step_norm
    )
    return FewShotClassifier(backbone, ways, (1, size, size)).double()


def flat_grad(parameters: list[torch.nn.Parameter]) -> Tensor:
    """All gradients concatenated (zeros where a parameter has none)."""
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in parameters]
    )
