"""ONNX: export a network, run it in ONNX Runtime, check it against PyTorch."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper
import torch
from torch import nn

from metarch.errors import MetarchError
from metarch.models.norm import with_plain_batch_norms

__all__ = [
    "EXPORT_REVISION",
    "OnnxError",
    "export_onnx",
    "export_onnx_many",
    "max_abs_difference",
    "onnxruntime_session",
]

#: The ONNX opset exported (ONNX Runtime and OpenVINO of 2024 on read it).
OPSET = 17

#: Changes whenever exported graphs do (2: batch norms folded into their convolutions), so
#: that latencies timed on the graphs of an older export are not reused from a cache.
EXPORT_REVISION = 2


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
    return _export([(module, input_shape)], batch)[0]


def export_onnx_many(
    modules: Sequence[tuple[nn.Module, tuple[int, ...]]], batch: int = 1
) -> list[bytes]:
    """The ONNX models of many ``(module, input_shape)`` pairs, as :func:`export_onnx` each.

    Traces them once, side by side, and splits the graph into one model per module: most
    of an export's cost is per call, so a layer table's 400 layers export in a third of
    the time (measured: 13 ms a layer against 30 ms one by one). The modules must not
    share parameters. If the joint export fails, each module is exported alone, so the
    error names the one that cannot be.
    """
    if len(modules) <= 1:
        return _export(modules, batch)
    try:
        joint = onnx.load_model_from_string(_export(modules, batch, joint=True)[0])
        return [_split(joint, index) for index in range(len(modules))]
    except OnnxError:
        return [_export([pair], batch)[0] for pair in modules]


class _SideBySide(nn.Module):
    """Modules run side by side on inputs of their own: one trace exports them all."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(part(x) for part, x in zip(self.parts, inputs, strict=True))


def _export(
    modules: Sequence[tuple[nn.Module, tuple[int, ...]]], batch: int, *, joint: bool = False
) -> list[bytes]:
    """One model per module; with ``joint``, one model of all (inputs ``input<i>``, ...)."""
    if not joint and len(modules) != 1:
        return [_export([pair], batch)[0] for pair in modules]
    if joint:
        network: nn.Module = _SideBySide([with_plain_batch_norms(m) for m, _ in modules])
        inputs = [f"input{index}" for index in range(len(modules))]
        outputs = [f"output{index}" for index in range(len(modules))]
    else:
        network, inputs, outputs = with_plain_batch_norms(modules[0][0]), ["input"], ["output"]
    network.eval()
    try:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            path = Path(folder) / "model.onnx"
            torch.onnx.export(
                network,
                tuple(torch.rand(batch, *shape) for _, shape in modules),
                path,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
                opset_version=OPSET,
                dynamo=False,
            )
            return [path.read_bytes()]
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        what = "modules" if joint else type(modules[0][0]).__name__
        raise OnnxError(f"cannot export {what} to ONNX: {exc}") from exc


def _split(joint: onnx.ModelProto, index: int) -> bytes:
    """The part of a :class:`_SideBySide` export that computes output ``index``.

    Its nodes are those the output depends on (in the joint graph's order, which is
    topological), with the initialisers they read; input and output are renamed
    ``input`` and ``output`` as :func:`export_onnx` names them.
    """
    graph = joint.graph
    rename = {f"input{index}": "input", f"output{index}": "output"}
    producer = {name: node for node in graph.node for name in node.output}
    needed: set[str] = {f"output{index}"}
    kept: set[int] = set()
    stack = [f"output{index}"]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in kept:
            continue
        kept.add(id(node))
        for name in node.input:
            if name and name not in needed:
                needed.add(name)
                stack.append(name)
    nodes = []
    for node in graph.node:
        if id(node) in kept:
            part = onnx.NodeProto()
            part.CopyFrom(node)
            part.input[:] = [rename.get(name, name) for name in node.input]
            part.output[:] = [rename.get(name, name) for name in node.output]
            nodes.append(part)
    given = [value for value in graph.input if value.name == f"input{index}"]
    result = [value for value in graph.output if value.name == f"output{index}"]
    if len(given) != 1 or len(result) != 1:  # e.g. a module whose output ignores its input
        raise OnnxError(f"module {index} of a joint export has no input or output of its own")
    model_input, model_output = onnx.ValueInfoProto(), onnx.ValueInfoProto()
    model_input.CopyFrom(given[0])
    model_input.name = "input"
    model_output.CopyFrom(result[0])
    model_output.name = "output"
    part_graph = onnx.helper.make_graph(
        nodes,
        graph.name,
        [model_input],
        [model_output],
        initializer=[tensor for tensor in graph.initializer if tensor.name in needed],
    )
    model = onnx.helper.make_model(part_graph, opset_imports=joint.opset_import)
    model.ir_version = joint.ir_version
    model.producer_name, model.producer_version = joint.producer_name, joint.producer_version
    return bytes(model.SerializeToString())


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
