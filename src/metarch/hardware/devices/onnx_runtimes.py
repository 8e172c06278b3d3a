"""ONNX runtimes on the CPU: ONNX Runtime, and OpenVINO when it is installed.

Both run the network exported by :func:`metarch.hardware.onnx.export_onnx`, so they
time what a user deploying the exported file gets (graph optimisations such as folding
batch norm into the convolution included).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from torch import nn

from metarch.hardware.devices.base import LOCAL_DEVICES, LocalDevice, Runner
from metarch.hardware.onnx import export_onnx, onnxruntime_session
from metarch.registry import PositiveInt

__all__ = ["OnnxRuntimeCPU", "OpenVINOCPU"]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


class _ThreadedRuntime(LocalDevice):
    """A CPU runtime from a Python package, run on ``threads`` threads.

    Args:
        threads: Intra-op threads.
    """

    #: The distribution that provides the runtime, and how to install it.
    package = ""
    install = ""

    def __init__(self, *, threads: PositiveInt = 1) -> None:
        self.threads = threads

    def unavailable(self) -> str | None:
        if _version(self.package) is None:
            return f"{self.package} is not installed ({self.install})"
        return None

    def libraries(self) -> dict[str, str]:
        return {**super().libraries(), self.package: _version(self.package) or "missing"}


@LOCAL_DEVICES.register("onnxruntime-cpu")
class OnnxRuntimeCPU(_ThreadedRuntime):
    """ONNX Runtime's CPU execution provider, all graph optimisations on.

    Args:
        threads: Intra-op threads.
    """

    package = "onnxruntime"
    install = "pip install onnxruntime"

    @contextmanager
    def runner(  # noqa: D102
        self, module: nn.Module, input_shape: tuple[int, ...], batch: int
    ) -> Iterator[Runner]:
        session = onnxruntime_session(export_onnx(module, input_shape, batch), self.threads)
        feed = {"input": np.random.default_rng(0).random((batch, *input_shape), np.float32)}
        yield Runner(lambda: session.run(None, feed))


@LOCAL_DEVICES.register("openvino-cpu")
class OpenVINOCPU(_ThreadedRuntime):
    """Intel OpenVINO on the CPU, compiled for latency.

    Args:
        threads: Inference threads.
    """

    package = "openvino"
    install = "pip install 'metarch[openvino]'"

    @contextmanager
    def runner(  # noqa: D102
        self, module: nn.Module, input_shape: tuple[int, ...], batch: int
    ) -> Iterator[Runner]:
        import openvino

        core = openvino.Core()
        model = core.read_model(export_onnx(module, input_shape, batch))
        compiled = core.compile_model(
            model,
            "CPU",
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(self.threads)},
        )
        request = compiled.create_infer_request()
        x = np.random.default_rng(0).random((batch, *input_shape), np.float32)
        yield Runner(lambda: request.infer([x]))
