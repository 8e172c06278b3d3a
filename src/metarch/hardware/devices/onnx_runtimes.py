"""ONNX runtimes on the CPU: ONNX Runtime, and OpenVINO when it is installed.

Both run the network exported by :func:`metarch.hardware.onnx.export_onnx`, so they
time what a user deploying the exported file gets (graph optimisations such as folding
batch norm into the convolution included).
"""

from __future__ import annotations

import importlib.metadata
import os
from abc import abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext

import numpy as np
from torch import nn

from metarch.hardware.devices.base import LOCAL_DEVICES, LocalDevice, Runner
from metarch.hardware.onnx import export_onnx_many, onnxruntime_session
from metarch.registry import PositiveInt

__all__ = ["OnnxRuntimeCPU", "OpenVINOCPU"]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


class _ThreadedRuntime(LocalDevice):
    """A CPU runtime from a Python package that runs ONNX models, on ``threads`` threads.

    Many modules are exported in one go (:func:`export_onnx_many`) and loaded by a pool of
    threads: a layer table's 400 layers are ready in a fraction of the time one by one
    would take, which is what a device's first ``metarch adapt`` waits for. Loading in
    parallel does not touch the timings, which run one module at a time afterwards.

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

    @abstractmethod
    def load(self, model: bytes, x: np.ndarray) -> Callable[[], object]:
        """``model`` (ONNX) ready to run on the input batch ``x``: the call to time."""

    def runner(
        self, module: nn.Module, input_shape: tuple[int, ...], batch: int
    ) -> AbstractContextManager[Runner]:
        return self.runners([(module, input_shape)], batch)[0]

    def runners(
        self, modules: Sequence[tuple[nn.Module, tuple[int, ...]]], batch: int
    ) -> list[AbstractContextManager[Runner]]:
        models = export_onnx_many(modules, batch)
        rng = np.random.default_rng(0)
        inputs = [rng.random((batch, *shape), np.float32) for _, shape in modules]
        workers = max(1, min(len(models), os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            calls = list(pool.map(self.load, models, inputs))
        return [nullcontext(Runner(call)) for call in calls]


@LOCAL_DEVICES.register("onnxruntime-cpu")
class OnnxRuntimeCPU(_ThreadedRuntime):
    """ONNX Runtime's CPU execution provider, all graph optimisations on.

    Args:
        threads: Intra-op threads.
    """

    package = "onnxruntime"
    install = "pip install onnxruntime"

    def load(self, model: bytes, x: np.ndarray) -> Callable[[], object]:  # noqa: D102
        session = onnxruntime_session(model, self.threads)
        feed = {"input": x}
        return lambda: session.run(None, feed)


@LOCAL_DEVICES.register("openvino-cpu")
class OpenVINOCPU(_ThreadedRuntime):
    """Intel OpenVINO on the CPU, compiled for latency.

    Args:
        threads: Inference threads.
    """

    package = "openvino"
    install = "pip install 'metarch[openvino]'"

    def load(self, model: bytes, x: np.ndarray) -> Callable[[], object]:  # noqa: D102
        import openvino

        core = openvino.Core()
        compiled = core.compile_model(
            core.read_model(model),
            "CPU",
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(self.threads)},
        )
        request = compiled.create_infer_request()
        return lambda: request.infer([x])
