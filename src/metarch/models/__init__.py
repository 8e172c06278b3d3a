"""Backbones, reusable layers and classifier heads.

Layout:
    norm.py      batch normalisation with explicit statistics policies
    conv4.py     Conv-4 (max-pool and strided variants)
    resnet12.py  ResNet-12
    registry.py  ``create_model(name)`` and :class:`FewShotClassifier`
"""

from metarch.models.norm import (
    BatchNormContext,
    MetaBatchNorm2d,
    NormPolicy,
    RecordedStatistics,
    batch_norm_context,
)
from metarch.models.registry import MODELS, FewShotClassifier, create_model, feature_dim

__all__ = [
    "MODELS",
    "BatchNormContext",
    "FewShotClassifier",
    "MetaBatchNorm2d",
    "NormPolicy",
    "RecordedStatistics",
    "batch_norm_context",
    "create_model",
    "feature_dim",
]
