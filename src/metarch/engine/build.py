"""The composition root: what a config describes, built from the registries.

Every object a run is made of (backbone, classifier head, meta-learner) is built here and
nowhere else, from a :class:`~metarch.engine.config.TrainConfig` and the shape of the
inputs, so the trainer only trains and evaluation rebuilds exactly what was trained.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metarch.data.normalize import ChannelNormalization
from metarch.engine.checkpoint import CheckpointError, load_checkpoint
from metarch.engine.config import TrainConfig
from metarch.errors import ConfigError
from metarch.meta.base import META_LEARNERS, MetaLearner
from metarch.models.registry import MODELS, FewShotClassifier, create_model

__all__ = ["ModelInputs", "build_learner", "load_backbone"]


@dataclass(frozen=True)
class ModelInputs:
    """What a trained model takes: the image shape and the normalisation it was trained with.

    Recorded in every checkpoint, so that evaluation rebuilds the model for 3-channel
    images and normalises any set exactly as training did, with no extra options.

    Attributes:
        shape: ``(channels, height, width)``.
        normalization: Per-channel normalisation, or ``None``.
    """

    shape: tuple[int, int, int]
    normalization: ChannelNormalization | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"shape": [C, H, W], "normalization": {...} or None}``."""
        normalization = None if self.normalization is None else self.normalization.to_json()
        return {"shape": list(self.shape), "normalization": normalization}

    @classmethod
    def from_json(cls, data: dict[str, Any], config: TrainConfig) -> ModelInputs:
        """Read :meth:`to_json`'s form.

        An empty record (a run saved before inputs were recorded, always 1-channel and
        unnormalised) falls back to the config's image size.
        """
        if not data:
            size = config.data.image_size
            return cls((1, size, size))
        shape = data.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3):
            raise CheckpointError(f"checkpoint inputs.shape must be [C, H, W], got {shape!r}")
        normalization = data.get("normalization")
        return cls(
            (int(shape[0]), int(shape[1]), int(shape[2])),
            None if normalization is None else ChannelNormalization.from_json(normalization),
        )


def build_learner(
    config: TrainConfig, image_shape: tuple[int, int, int], *, initialise: bool = False
) -> MetaLearner:
    """The meta-learner a config describes, initialised from ``config.seed``.

    Everything is built from the config's validated options (``inner_lr: "1e-3"`` arrives
    as the float ``0.001``). With ``initialise``, a backbone named by ``model.init`` is
    loaded into it (a run's start; never on resume or evaluation, whose weights come from
    the run's own checkpoint).

    Raises:
        ConfigError: For options the config accepts one by one but a constructor rejects
            together (Reptile's ``adam_state: sequential`` with ``inner_optimizer: sgd``).
    """
    torch.manual_seed(config.seed)
    options = dict(config.model.options)
    names = {o.name for o in MODELS.options(config.model.name)}
    if "in_channels" in names:
        options.setdefault("in_channels", image_shape[0])
    if "image_size" in names:  # a model whose layers depend on it (a supernet's head)
        options.setdefault("image_size", image_shape[1])
    with _options_of("model"):
        backbone = create_model(config.model.name, **options)
    if initialise and config.model.init is not None:
        load_backbone(backbone, Path(config.model.init), config)
    if config.model.channels_last:
        # Weights in NHWC make oneDNN choose NHWC kernels for every convolution they meet.
        for parameter in backbone.parameters():
            if parameter.dim() == 4:
                parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
    learner_class = META_LEARNERS.get(config.method.name)
    model: nn.Module = backbone
    if learner_class.needs_classifier_head:
        model = FewShotClassifier(backbone, config.episodes.ways, image_shape)
    with _options_of("method"):
        return learner_class(model, **config.method.options)


@contextlib.contextmanager
def _options_of(section: str) -> Iterator[None]:
    """Report a constructor's ``ValueError`` as an error of ``section.options``."""
    try:
        yield
    except ValueError as exc:
        raise ConfigError(f"{section}.options: {exc}") from exc


def load_backbone(backbone: nn.Module, source: Path, config: TrainConfig) -> None:
    """Load the backbone of a trained run (``model.init``) into ``backbone``.

    ``source`` is a run directory (its ``best`` checkpoint, else ``last``) or a
    checkpoint's sidecar. The source's backbone is found inside whatever learner trained
    it (a classifier's ``backbone``, a prototypical network's model, a supernet's), by
    the names and shapes of ``backbone``'s own tensors: every one must be there.

    Raises:
        ConfigError: A missing source, or one whose backbone is not ``backbone``'s.
    """
    sidecar = source
    if source.is_dir():
        sidecar = source / "best.json"
        if not sidecar.exists():
            sidecar = source / "last.json"
    try:
        checkpoint = load_checkpoint(sidecar)
    except CheckpointError as exc:
        raise ConfigError(f"model.init: {exc}") from None
    wanted = backbone.state_dict()
    prefix = _backbone_prefix(wanted, checkpoint.model_state)
    if prefix is None:
        trained = checkpoint.config.get("model", {})
        raise ConfigError(
            f"model.init: {sidecar} holds no backbone like this config's (model "
            f"{config.model.name} {config.model.options}); it trained model "
            f"{trained.get('name')} {trained.get('options')}. Start from a run of the same "
            "model and options"
        )
    with torch.no_grad():
        backbone.load_state_dict({key: checkpoint.model_state[prefix + key] for key in wanted})


def _backbone_prefix(wanted: Mapping[str, Tensor], saved: Mapping[str, Tensor]) -> str | None:
    """The prefix under which ``saved`` holds every tensor of ``wanted``, shapes equal."""
    if not wanted:
        return None
    first = next(iter(wanted))
    candidates = [
        key[: -len(first)]
        for key in saved
        if key.endswith(first) and (len(key) == len(first) or key[-len(first) - 1] == ".")
    ]
    for prefix in sorted(candidates, key=len):
        if all(
            prefix + key in saved and saved[prefix + key].shape == tensor.shape
            for key, tensor in wanted.items()
        ):
            return prefix
    return None
