"""ONNX: export a network, run it in ONNX Runtime, check it against PyTorch."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metarch.errors import MetarchError

__all__ = ["OnnxError", "export_onnx", "max_abs_difference", "onnxruntime_session"]

#: The ONNX opset exported (ONNX Runtime and OpenVINO of 2024 on read it).
OPSET = 17


class OnnxError(MetarchError):
    """A network cannot be exported to ONNX, or its ONNX model does not run."""


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], batch: int = 1) -> bytes:
    """The ONNX model of ``module`` (in eval mode) on inputs of ``input_shape``.

    Traced at ``batch`` images; the batch dimension stays free (input ``input``, output
    ``output``).

    Uses PyTorch's TorchScript-based exporter: it is deprecated in favour of the
    ``torch.export`` one, but exports our networks in milliseconds where the new one takes
    seconds (profiling exports every layer of a space), and needs no ``onnxscript``.
    """
    was_training = module.training
    module.eval()
    try:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            path = Path(folder) / "model.onnx"
            torch.onnx.export(
                module,
                (torch.rand(batch, *input_shape),),
                path,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
            return path.read_bytes()
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        raise OnnxError(f"cannot export {type(module).__name__} to ONNX: {exc}") from exc
    finally:
        module.train(was_training)


def onnxruntime_session(model: bytes, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session of ``model`` on ``threads`` intra-op threads."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxError("onnxruntime is not installed: pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def max_abs_difference(module: nn.Module, model: bytes, x: torch.Tensor) -> float:
    """Largest absolute difference between ``module``'s output and the ONNX model's on ``x``."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            expected = module(x).numpy()
    finally:
        module.train(was_training)
    session = onnxruntime_session(model)
    (actual,) = session.run(None, {"input": x.numpy()})
    return float(np.max(np.abs(actual - expected))) if expected.size else 0.0
