"""``metarch export``: a trained run's network as an ONNX model, checked in ONNX Runtime."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import typer
from torch import Tensor, nn

from metarch.data.normalize import ChannelNormalization
from metarch.engine.evaluate import load_trained_learner
from metarch.errors import ConfigError
from metarch.hardware.onnx import export_onnx, max_abs_difference
from metarch.models.cost import count_parameters, flops_per_image
from metarch.nas.spaces.base import Relaxation
from metarch.utils.io import atomic_write_bytes, display_path

__all__ = ["export"]


class _Normalised(nn.Module):
    """A network behind the per-channel normalisation it was trained with.

    The exported model then takes images scaled to [0, 1], as a deployment has them.
    """

    def __init__(self, network: nn.Module, normalization: ChannelNormalization) -> None:
        super().__init__()
        self.network = network
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(normalization.mean)[None, :, None, None])
        self.register_buffer("std", torch.tensor(normalization.std)[None, :, None, None])

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.network((x - self.mean) / self.std)
        return out


def _restricted(model: nn.Module, architecture: str, shape: tuple[int, int, int]) -> nn.Module:
    """A copy of an architecture-search run's network that computes only ``architecture``.

    The run's weights of the chosen operations, and nothing else: the discrete network.

    Raises:
        ConfigError: The run's network holds no relaxation (it has one architecture).
    """
    restricted = copy.deepcopy(model)
    relaxation = next((m for m in restricted.modules() if isinstance(m, Relaxation)), None)
    if relaxation is None:
        raise ConfigError(
            f"--arch needs a run of an architecture-search learner; this run's "
            f"{type(model).__name__} has one architecture (export it without --arch)"
        )
    space = relaxation.search_space(shape)
    relaxation.restrict_to(space.decode(architecture))
    return restricted


def export(
    run: Path = typer.Option(..., "--run", help="Run directory written by 'metarch train'."),
    architecture: str | None = typer.Option(
        None,
        "--arch",
        help="Architecture-search runs: export this architecture (its canonical string, "
        "e.g. from 'metarch nas adapt' or 'metarch evaluate') with the run's weights "
        "(default: the whole network).",
    ),
    checkpoint: str = typer.Option(
        "best", "--checkpoint", help="best, last, or a checkpoint's .json sidecar."
    ),
    format_: str = typer.Option("onnx", "--format", help="Output format (onnx)."),
    out: Path = typer.Option(..., "--out", help="The model file to write."),
    check_batch: int = typer.Option(
        4, "--check-batch", min=1, help="Random images the ONNX model is checked on."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Export a trained run's network (meta-trained weights, inference mode) to ONNX.

    With --arch, an architecture-search run's network restricted to one architecture: the
    discrete network of it, with the run's weights.

    The model takes images of the run's shape scaled to [0, 1] (the normalisation it was
    trained with is part of it) and returns the head's outputs. It is run in ONNX Runtime
    on random images against PyTorch, and the largest difference is reported.
    """
    if format_ != "onnx":
        raise ConfigError(f"--format {format_!r}: only onnx is supported")
    trained = load_trained_learner(run, checkpoint)
    model_of_run = trained.learner.model
    assert isinstance(model_of_run, nn.Module)
    shape = trained.inputs.shape
    network: nn.Module = model_of_run
    if architecture is not None:
        network = _restricted(network, architecture, shape)
    chosen = _architecture_record(network, architecture, shape)
    if trained.inputs.normalization is not None:
        network = _Normalised(network, trained.inputs.normalization)
    network.eval()
    model = export_onnx(network, shape)
    x = torch.rand(check_batch, *shape, generator=torch.Generator().manual_seed(0))
    difference = max_abs_difference(network, model, x)
    atomic_write_bytes(out, model)
    record = {
        "out": display_path(out),
        "run": display_path(run),
        "checkpoint": display_path(trained.checkpoint),
        "step": trained.step,
        "input_shape": list(shape),
        **chosen,
        "normalization_included": trained.inputs.normalization is not None,
        "bytes": len(model),
        "max_abs_difference": difference,
    }
    if as_json:
        typer.echo(json.dumps(record))
        return
    if architecture is not None:
        typer.echo(
            f"architecture {record['architecture']}: {record['parameters']:,} parameters, "
            f"{record['flops'] / 1e6:.2f} MFLOPs per image"
        )
    typer.echo(
        f"wrote {record['out']} ({len(model):,} bytes): input 1x{'x'.join(map(str, shape))} "
        f"images in [0, 1]; ONNX Runtime vs PyTorch on {check_batch} random images: max abs "
        f"difference {difference:.2e}"
    )


def _architecture_record(
    network: nn.Module, architecture: str | None, shape: tuple[int, int, int]
) -> dict[str, Any]:
    """The exported architecture and what it costs (only with ``--arch``)."""
    if architecture is None:
        return {}
    relaxation = next(m for m in network.modules() if isinstance(m, Relaxation))
    space = relaxation.search_space(shape)
    classes = getattr(getattr(network, "head", None), "out_features", None)
    discrete = space.build(space.decode(architecture), num_classes=classes)
    return {
        "architecture": space.encode(space.decode(architecture)),
        "parameters": count_parameters(discrete),
        "flops": flops_per_image(discrete, shape),
    }
