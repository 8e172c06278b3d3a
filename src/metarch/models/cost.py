"""What a network costs: parameters, FLOPs per image and measured latency.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass
of one image: convolutions and matrix products, two FLOPs per multiply-accumulate (the
convention of most architecture-search papers, which count multiply-adds and double them);
normalisation, activations and pooling are not counted. Latency is wall-clock time of a
forward pass in inference mode, the median of repeats after a warm-up (slow outliers
rejected, :func:`metarch.utils.timing.time_calls`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from metarch.utils.timing import time_calls

__all__ = ["LatencyMeasurement", "count_parameters", "flops_per_image", "measure_latency"]


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
