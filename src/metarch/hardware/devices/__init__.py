"""Devices that measure latency on this machine, in a registry (:data:`LOCAL_DEVICES`).

``torch-cpu`` and ``torch-cuda`` (PyTorch eager), ``onnxruntime-cpu`` and
``openvino-cpu`` (the exported ONNX model). A new runtime: subclass
:class:`~metarch.hardware.devices.base.LocalDevice` in a module here and register it.
"""

from metarch.hardware.devices import onnx_runtimes, torch_eager
from metarch.hardware.devices.base import (
    LOCAL_DEVICES,
    DeviceError,
    LocalDevice,
    Measurement,
    Runner,
    create_device,
    machine_fingerprint,
)

__all__ = [
    "LOCAL_DEVICES",
    "DeviceError",
    "LocalDevice",
    "Measurement",
    "Runner",
    "create_device",
    "machine_fingerprint",
    "onnx_runtimes",
    "torch_eager",
]
