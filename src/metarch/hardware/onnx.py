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
    return _trace(
        with_plain_batch_norms(module),
        [input_shape],
        batch,
        ["input"],
        ["output"],
        type(module).__name__,
    )


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
    if len(modules) > 1:
        count = len(modules)
        side_by_side = _SideBySide([with_plain_batch_norms(module) for module, _ in modules])
        try:
            joint = _trace(
                side_by_side,
                [shape for _, shape in modules],
                batch,
                [f"input{index}" for index in range(count)],
                [f"output{index}" for index in range(count)],
                "modules",
            )
            return _split(onnx.load_model_from_string(joint), count)
        except OnnxError:
            pass
    return [export_onnx(module, shape, batch) for module, shape in modules]


class _SideBySide(nn.Module):
    """Modules run side by side on inputs of their own: one trace exports them all."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(part(x) for part, x in zip(self.parts, inputs, strict=True))


def _trace(
    network: nn.Module,
    shapes: Sequence[tuple[int, ...]],
    batch: int,
    inputs: list[str],
    outputs: list[str],
    what: str,
) -> bytes:
    """The ONNX model of ``network`` (a copy of the caller's: left in eval mode)."""
    network.eval()
    try:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            path = Path(folder) / "model.onnx"
            torch.onnx.export(
                network,
                tuple(torch.rand(batch, *shape) for shape in shapes),
                path,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
                opset_version=OPSET,
                dynamo=False,
            )
            return path.read_bytes()
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        raise OnnxError(f"cannot export {what} to ONNX: {exc}") from exc


def _split(joint: onnx.ModelProto, count: int) -> list[bytes]:
    """The ``count`` parts of a :class:`_SideBySide` export, one model per output.

    Each part's nodes are those its output depends on (in the joint graph's order, which
    is topological), with the initialisers they read; its input and output are renamed
    ``input`` and ``output`` as :func:`export_onnx` names them.
    """
    graph = joint.graph
    producer = {name: node for node in graph.node for name in node.output}
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    given = {value.name: value for value in graph.input}
    results = {value.name: value for value in graph.output}
    parts = []
    for index in range(count):
        source, sink = f"input{index}", f"output{index}"
        if source not in given or sink not in results:  # e.g. an output ignoring its input
            raise OnnxError(f"module {index} of a joint export has no input or output of its own")
        rename = {source: "input", sink: "output"}
        needed, kept, stack = {sink}, set(), [sink]
        while stack:
            node = producer.get(stack.pop())
            if node is None or id(node) in kept:
                continue
            kept.add(id(node))
            fresh = [name for name in node.input if name and name not in needed]
            needed.update(fresh)
            stack.extend(fresh)
        nodes = []
        for node in graph.node:
            if id(node) in kept:
                part = onnx.NodeProto()
                part.CopyFrom(node)
                part.input[:] = [rename.get(name, name) for name in node.input]
                part.output[:] = [rename.get(name, name) for name in node.output]
                nodes.append(part)
        model_input, model_output = onnx.ValueInfoProto(), onnx.ValueInfoProto()
        model_input.CopyFrom(given[source])
        model_input.name = "input"
        model_output.CopyFrom(results[sink])
        model_output.name = "output"
        part_graph = onnx.helper.make_graph(
            nodes,
            graph.name,
            [model_input],
            [model_output],
            initializer=[initializers[name] for name in sorted(needed) if name in initializers],
        )
        model = onnx.helper.make_model(part_graph, opset_imports=joint.opset_import)
        model.ir_version = joint.ir_version
        model.producer_name = joint.producer_name
        model.producer_version = joint.producer_version
        parts.append(bytes(model.SerializeToString()))
    return parts


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
