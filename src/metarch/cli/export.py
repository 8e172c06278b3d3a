"""``metarch export``: a trained run's network as an ONNX model, checked in ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from torch import Tensor, nn

from metarch.data.normalize import ChannelNormalization
from metarch.engine.evaluate import load_trained_learner
from metarch.errors import ConfigError
from metarch.hardware.onnx import export_onnx, max_abs_difference
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


def export(
    run: Path = typer.Option(..., "--run", help="Run directory written by 'metarch train'."),
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

    The model takes images of the run's shape scaled to [0, 1] (the normalisation it was
    trained with is part of it) and returns the head's outputs. It is run in ONNX Runtime
    on random images against PyTorch, and the largest difference is reported.
    """
    if format_ != "onnx":
        raise ConfigError(f"--format {format_!r}: only onnx is supported")
    trained = load_trained_learner(run, checkpoint)
    model_of_run = trained.learner.model
    assert isinstance(model_of_run, nn.Module)
    network: nn.Module = model_of_run
    if trained.inputs.normalization is not None:
        network = _Normalised(network, trained.inputs.normalization)
    network.eval()
    shape = trained.inputs.shape
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
        "normalization_included": trained.inputs.normalization is not None,
        "bytes": len(model),
        "max_abs_difference": difference,
    }
    if as_json:
        typer.echo(json.dumps(record))
        return
    typer.echo(
        f"wrote {record['out']} ({len(model):,} bytes): input 1x{'x'.join(map(str, shape))} "
        f"images in [0, 1]; ONNX Runtime vs PyTorch on {check_batch} random images: max abs "
        f"difference {difference:.2e}"
    )
