"""What a network costs: parameters, FLOPs and peak activation memory per image, latency.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass
of one image: convolutions and matrix products, two FLOPs per multiply-accumulate (the
convention of most architecture-search papers, which count multiply-adds and double them);
normalisation, activations and pooling are not counted. Peak activation memory is the
most bytes of tensors alive at once during an inference pass of one image (the input and
every tensor an operation creates, until it is freed; parameters and the kernels' own
scratch buffers not counted): what an inference engine that frees tensors as soon as
they are dead needs beside the weights, as on a microcontroller. Latency is wall-clock time of a
forward pass in inference mode, the median of repeats after a warm-up (slow outliers
rejected, :func:`metarch.utils.timing.time_calls`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from metarch.utils.timing import time_calls

__all__ = [
    "LatencyMeasurement",
    "count_parameters",
    "flops_per_image",
    "measure_latency",
    "peak_activation_bytes",
]


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def flops_per_image(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of one image ``input_shape`` (``(C, H, W)``)."""
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, *input_shape, device=_device_of(model)))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def peak_activation_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Most bytes of activations alive at once in an inference pass of one image.

    Every tensor an operation returns is followed until its last reference dies (views
    share their base's storage and are counted once); the input counts, parameters and
    buffers do not.
    """
    was_training = model.training
    model.eval()
    weights = {
        tensor.untyped_storage().data_ptr() for tensor in [*model.parameters(), *model.buffers()]
    }
    x = torch.zeros(1, *input_shape, device=_device_of(model))
    tracker = _LiveTensors(ignore=weights)
    tracker.track(x)
    try:
        with torch.no_grad(), tracker:
            model(x)
    finally:
        model.train(was_training)
    return tracker.peak


class _LiveTensors(TorchDispatchMode):
    """Counts the bytes of the storages that operations' outputs keep alive."""

    def __init__(self, ignore: set[int]) -> None:
        super().__init__()
        self.ignore = ignore
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors on it]
        self.current = 0
        self.peak = 0

    def track(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        address, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or address in self.ignore:
            return
        entry = self.live.setdefault(address, [size, 0])
        if entry[1] == 0:
            self.current += size
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(tensor, self._release, address)

    def _release(self, address: int) -> None:
        entry = self.live.get(address)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[address]

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self.track(leaf)
        return out


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@dataclass(frozen=True)
class LatencyMeasurement:
    """Forward-pass latency of a network, in milliseconds.

    Attributes:
        median_ms: Median over the repeats.
        p10_ms: 10th percentile.
        p90_ms: 90th percentile.
        repeats: Timed forward passes.
        batch: Images per forward pass.
        threads: Intra-op threads used.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    batch: int
    threads: int


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch: int = 1,
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 100,
) -> LatencyMeasurement:
    """Time forward passes of ``batch`` images with ``threads`` intra-op threads.

    The inputs are made on the model's device (a CUDA model is synchronised around every
    pass); the thread count is restored afterwards.
    """
    if repeats < 1 or warmup < 0 or batch < 1 or threads < 1:
        raise ValueError("need repeats >= 1, warmup >= 0, batch >= 1 and threads >= 1")
    previous = torch.get_num_threads()
    was_training = model.training
    torch.set_num_threads(threads)
    model.eval()
    device = _device_of(model)
    x = torch.rand(batch, *input_shape, device=device)
    synchronise = torch.cuda.synchronize if device.type == "cuda" else None
    try:
        with torch.inference_mode():
            timing = time_calls(
                lambda: model(x), warmup=warmup, repeats=repeats, synchronise=synchronise
            )
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
    return LatencyMeasurement(
        median_ms=timing.median_ms,
        p10_ms=timing.p10_ms,
        p90_ms=timing.p90_ms,
        repeats=repeats,
        batch=batch,
        threads=threads,
    )
