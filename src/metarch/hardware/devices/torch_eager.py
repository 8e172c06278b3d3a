"""PyTorch eager mode: on the CPU (thread count and memory layout as settings) and CUDA."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from metarch.hardware.devices.base import LOCAL_DEVICES, LocalDevice, Runner
from metarch.registry import PositiveInt

__all__ = ["TorchCPU", "TorchCUDA"]


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@LOCAL_DEVICES.register("torch-cpu")
class TorchCPU(LocalDevice):
    """PyTorch eager on this machine's CPU.

    Args:
        threads: Intra-op threads (restored after measuring).
        channels_last: Run convolutions on channels-last (NHWC) tensors.
    """

    def __init__(self, *, threads: PositiveInt = 1, channels_last: bool = False) -> None:
        self.threads = threads
        self.channels_last = channels_last

    @contextmanager
    def runner(  # noqa: D102
        self, module: nn.Module, input_shape: tuple[int, ...], batch: int
    ) -> Iterator[Runner]:
        x = torch.rand(batch, *input_shape)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
            # Module.to takes memory_format; its type stubs do not say so.
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

        # Runners of several modules are open at once: each sets the same thread count,
        # and they are closed in reverse, so the caller's count comes back last.
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with _eval_mode(module), torch.inference_mode():
                yield Runner(lambda: module(x))
        finally:
            torch.set_num_threads(previous)


@LOCAL_DEVICES.register("torch-cuda")
class TorchCUDA(LocalDevice):
    """PyTorch eager on a CUDA GPU (the queue synchronised around every timed pass).

    Args:
        index: The GPU's index.
    """

    def __init__(self, *, index: int = 0) -> None:
        self.index = index

    def unavailable(self) -> str | None:  # noqa: D102
        if not torch.cuda.is_available():
            return "no CUDA GPU (torch.cuda.is_available() is False)"
        if self.index >= torch.cuda.device_count():
            return f"no GPU {self.index}: this machine has {torch.cuda.device_count()}"
        return None

    def libraries(self) -> dict[str, str]:  # noqa: D102
        versions = super().libraries()
        if torch.cuda.is_available():
            versions["cuda"] = str(torch.version.cuda)
            versions["gpu"] = torch.cuda.get_device_name(self.index)
        return versions

    @contextmanager
    def runner(  # noqa: D102
        self, module: nn.Module, input_shape: tuple[int, ...], batch: int
    ) -> Iterator[Runner]:
        device = torch.device("cuda", self.index)
        original = next(module.parameters(), torch.empty(0)).device
        x = torch.rand(batch, *input_shape, device=device)
        module.to(device)

        try:
            with _eval_mode(module), torch.inference_mode():
                yield Runner(lambda: module(x), lambda: torch.cuda.synchronize(device))
        finally:
            module.to(original)
