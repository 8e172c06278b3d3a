"""Backbones by name: ``create_model("conv4", ...)``, as in timm.

Every backbone maps images ``(N, C, H, W)`` to features ``(N, D)``. Classifiers for
optimisation-based meta-learners put a linear head on top (:class:`FewShotClassifier`);
metric-based learners use the features directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from metarch.models.conv4 import Conv4
from metarch.models.groups import WEIGHTS, group_of
from metarch.models.mlp import MLP
from metarch.models.resnet12 import ResNet12
from metarch.registry import Registry

__all__ = ["MODELS", "FewShotClassifier", "create_model", "feature_dim"]

MODELS: Registry[Callable[..., nn.Module]] = Registry("backbone")


# Entries are classes, or partials of them, so that configs can check options against the
# class's signature.
# Conv-4 with max-pooling (prototypical networks; MAML on mini-ImageNet).
MODELS.add("conv4", functools.partial(Conv4, pool="max"))
# Conv-4 with strided convolutions instead of pooling (MAML on Omniglot).
MODELS.add("conv4-strided", functools.partial(Conv4, pool="stride"))
# ResNet-12 (TADAM, MetaOptNet); pooled 640-d features by default.
MODELS.add("resnet12", ResNet12)
# A fully connected network (MAML's sinusoid regression: 1-40-40-1).
MODELS.add("mlp", MLP)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` with keyword arguments ``kwargs``."""
    return MODELS.get(name)(**kwargs)


@torch.no_grad()
def feature_dim(backbone: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Length of the feature vector ``backbone`` produces for images of ``image_shape``."""
    was_training = backbone.training
    backbone.eval()
    try:
        parameter = next(backbone.parameters(), None)
        device = parameter.device if parameter is not None else None
        with torch.no_grad():
            features: Tensor = backbone(torch.zeros(1, *image_shape, device=device))
    finally:
        backbone.train(was_training)
    return int(features.shape[1])


class FewShotClassifier(nn.Module):
    """A backbone and a linear head with one output per way.

    The head is a separate child called ``head`` so that head-only adaptation (ANIL)
    selects it by name.

    Args:
        backbone: Feature extractor.
        ways: Classes per episode.
        image_shape: ``(C, H, W)`` of the inputs, used to size the head.
    """

    def __init__(self, backbone: nn.Module, ways: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim(backbone, image_shape), ways)

    def parameter_group(self, name: str) -> str:
        """The backbone's group of its parameters (see :mod:`metarch.models.groups`)."""
        if name.startswith("backbone."):
            return group_of(self.backbone, name.removeprefix("backbone."))
        return WEIGHTS

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, ways)`` for images ``(N, C, H, W)``."""
        logits: Tensor = self.head(self.backbone(x))
        return logits
