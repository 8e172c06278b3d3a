"""Adapt a trained run to one user task: a class-per-folder support set on disk.

The support images are read and normalised as the run's training images were (shape and
per-channel normalisation recorded in its checkpoint). An architecture-search run adapts
weights and architecture; what it adapted to is written out atomically: the architecture
(canonical string and JSON), its cost, and the adapted weights (safetensors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import Tensor

from metarch.data.folder import load_image_folder
from metarch.engine.evaluate import TrainedModel
from metarch.errors import ConfigError, DataError
from metarch.nas.methods.metanas import AdaptedArchitecture, MetaNAS
from metarch.utils.io import atomic_write_bytes, atomic_write_text

__all__ = ["SupportSet", "adapt_architecture_to", "load_support_folder", "write_adapted"]


@dataclass(frozen=True)
class SupportSet:
    """A user's labelled examples of one task.

    Attributes:
        images: ``(N, C, H, W)`` float images, normalised as the run's training images.
        labels: ``(N,)`` class indices, in the order of ``classes``.
        classes: Class names (the folder names), sorted.
    """

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]


def load_support_folder(path: Path, trained: TrainedModel, *, shots: int | None) -> SupportSet:
    """The support set in ``path`` (one folder of images per class), ready for the run.

    Args:
        path: ``<folder>/<class>/<images>``.
        trained: The run it is for (image shape, normalisation, number of outputs).
        shots: Images per class to use (the first, by name), or ``None`` for all of them.

    Raises:
        DataError: A folder that is missing, holds fewer than 2 classes or more classes
            than the model has outputs, or a class with fewer images than ``shots``.
    """
    channels, height, width = trained.inputs.shape
    data = load_image_folder(path, image_size=(height, width), channels=channels)
    classes = data.class_names
    outputs = trained.config.episodes.ways
    if len(classes) < 2:
        raise DataError(f"{path}: a task needs at least 2 class folders, found {len(classes)}")
    if len(classes) > outputs:
        raise DataError(
            f"{path}: {len(classes)} classes, but the run's classifier has {outputs} outputs "
            f"(it was trained {outputs}-way); use at most {outputs} class folders"
        )
    offsets = data.class_offsets.tolist()
    images, labels = [], []
    for index, name in enumerate(classes):
        first, end = offsets[index], offsets[index + 1]
        available = end - first
        if shots is not None and available < shots:
            raise DataError(
                f"{path}: class {name!r} has {available} image(s), fewer than --shots {shots}; "
                f"add images or lower --shots"
            )
        take = available if shots is None else shots
        images.append(torch.from_numpy(data.images[first : first + take]))
        labels += [index] * take
    stacked = torch.cat(images).float() / 255.0
    if trained.inputs.normalization is not None:
        stacked = trained.inputs.normalization(stacked)
    return SupportSet(stacked, torch.tensor(labels), tuple(classes))


def adapt_architecture_to(trained: TrainedModel, support: SupportSet) -> AdaptedArchitecture:
    """Adapt an architecture-search run (MetaNAS) to ``support``.

    Raises:
        ConfigError: For a run of a learner that does not adapt architectures.
    """
    learner = trained.learner
    if not isinstance(learner, MetaNAS):
        raise ConfigError(
            f"the run trained method {trained.config.method.name!r}, which does not adapt "
            "architectures; 'metarch nas adapt' needs a MetaNAS run (method: metanas)"
        )
    learner.eval()
    return learner.adapt_architecture(support.images, support.labels)


def write_adapted(
    out: Path, trained: TrainedModel, support: SupportSet, adapted: AdaptedArchitecture
) -> dict[str, Any]:
    """Write ``architecture.json``, ``architecture.txt`` and ``weights.safetensors`` to ``out``.

    Returns:
        The record written to ``architecture.json``.
    """
    assert isinstance(trained.learner, MetaNAS)
    space = trained.learner.space(trained.inputs.shape)
    architecture = space.decode(adapted.predictor.architecture)
    cost = space.cost(architecture, num_classes=len(support.classes))
    record: dict[str, Any] = {
        "space": space.registered_name,
        "architecture": adapted.predictor.architecture,
        "genotype": space.to_json(architecture),
        "meta_architecture": trained.learner.meta_architecture(),
        "parameters": cost.parameters,
        "flops": cost.flops,
        "peak_activation_bytes": cost.peak_activation_bytes,
        "input_shape": list(cost.input_shape),
        "classes": list(support.classes),
        "support_images": len(support.labels),
        "run": str(trained.checkpoint.parent),
        "checkpoint": str(trained.checkpoint),
        "step": trained.step,
        "weights": "weights.safetensors",
    }
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: value.detach().contiguous()
        for name, value in {**adapted.params, **adapted.buffers}.items()
    }
    # Weights first: the JSON that points to them appears only once they are complete.
    atomic_write_bytes(out / "weights.safetensors", save_safetensors(tensors))
    atomic_write_text(out / "architecture.txt", adapted.predictor.architecture + "\n")
    atomic_write_text(out / "architecture.json", json.dumps(record, indent=2) + "\n")
    return record
