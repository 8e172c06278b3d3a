"""Local devices: runtimes that measure a network's latency on the machine they run on.

A device is a runtime and its settings (``torch-cpu`` with 2 threads, ``onnxruntime-cpu``
with 1). :meth:`LocalDevice.measure` times forward passes of a module at batch 1 (or a
given batch), in inference mode; :meth:`LocalDevice.measure_many` times many modules in
interleaved rounds; :meth:`LocalDevice.fingerprint` says what machine and libraries did
it, for the provenance of a latency table. Devices register in :data:`LOCAL_DEVICES`; a
new runtime is one subclass implementing :meth:`LocalDevice.runner` and one decorator
(see ``torch_eager.py``).

Why rounds: on a shared or virtual machine the CPU's speed drifts over seconds (frequency
scaling, a neighbour's load), so the median of repeats taken in one go depends on when it
was taken. Measured here (``onnxruntime-cpu``, 40 NAS-Bench-201 networks timed twice, 30
repeats each): the two timings of the same network differed by 17 % on average and only
35 % were within 10 % of each other. Timing every module a few repeats at a time in
rounds across all of them, and keeping each module's fastest round, spreads every
module's timings over the whole run: the same networks then differed by 4.5 %, 90 %
within 10 %.

A runtime that is not installed stays registered: :meth:`LocalDevice.unavailable` says
why it cannot measure, and what to install.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from metarch.errors import MetarchError
from metarch.registry import NonNegativeInt, PositiveInt, Registry, options_of
from metarch.utils.timing import Timing, time_calls

__all__ = [
    "LOCAL_DEVICES",
    "DeviceError",
    "LocalDevice",
    "Measurement",
    "Runner",
    "create_device",
    "machine_fingerprint",
]


class DeviceError(MetarchError):
    """A device cannot measure (not installed, no GPU, a module it cannot run)."""


@dataclass(frozen=True)
class Measurement:
    """How to time: untimed warm-up calls, timed repeats, images per call, rounds.

    With ``rounds > 1``, :meth:`LocalDevice.measure_many` times every module ``warmup``
    + ``repeats`` calls per round, round after round across all the modules, and keeps
    each module's fastest round (see the module docstring for why).
    """

    warmup: NonNegativeInt = 10
    repeats: PositiveInt = 50
    batch: PositiveInt = 1
    rounds: PositiveInt = 1

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1 or self.batch < 1 or self.rounds < 1:
            raise DeviceError(
                f"need warm-up >= 0, repeats >= 1, batch >= 1 and rounds >= 1; got "
                f"{self.warmup}, {self.repeats}, {self.batch} and {self.rounds}"
            )


class Runner(NamedTuple):
    """One prepared forward pass: what to call, and what to wait on around it (a GPU)."""

    call: Callable[[], object]
    synchronise: Callable[[], object] | None = None


class LocalDevice(ABC):
    """A runtime on this machine that runs and times networks.

    Subclasses take their settings as keyword options (``threads``, ...), listed by
    :meth:`settings`, and implement :meth:`measure`.
    """

    #: Set by :data:`LOCAL_DEVICES` when the class registers.
    registered_name: str = ""

    @property
    def name(self) -> str:
        """The registered name."""
        return self.registered_name

    def settings(self) -> dict[str, Any]:
        """The options this device was made with (all of them, defaults included)."""
        return {option.name: getattr(self, option.name) for option in options_of(type(self))}

    def describe(self) -> str:
        """``name`` and its settings, e.g. ``torch-cpu (threads=1, channels_last=False)``."""
        settings = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{self.name} ({settings})" if settings else self.name

    def unavailable(self) -> str | None:
        """Why this device cannot measure here (with what to install), or None if it can."""
        return None

    def check_available(self) -> None:
        """Raise :class:`DeviceError` naming what is missing if the device cannot measure."""
        reason = self.unavailable()
        if reason is not None:
            raise DeviceError(f"device {self.name} cannot measure here: {reason}")

    def fingerprint(self) -> dict[str, Any]:
        """The machine, libraries and settings a measurement was made with."""
        return {
            "device": self.name,
            "settings": self.settings(),
            **machine_fingerprint(),
            "libraries": self.libraries(),
        }

    def libraries(self) -> dict[str, str]:
        """Versions of the libraries the runtime uses."""
        return {"torch": torch.__version__}

    @abstractmethod
    def runner(
        self, module: nn.Module, input_shape: tuple[int, ...], batch: int
    ) -> AbstractContextManager[Runner]:
        """Prepare ``module`` to run on ``batch`` inputs of ``input_shape``.

        A context manager: entering it exports, compiles or moves the module (untimed)
        and gives its :class:`Runner`; leaving it puts the module back as it was.
        """

    def runners(
        self, modules: Sequence[tuple[nn.Module, tuple[int, ...]]], batch: int
    ) -> list[AbstractContextManager[Runner]]:
        """The :meth:`runner` of each ``(module, input_shape)``, not yet entered.

        A runtime that prepares many modules faster together than one by one (one
        export, a pool of compilers) overrides this.
        """
        return [self.runner(module, shape, batch) for module, shape in modules]

    def measure(
        self, module: nn.Module, input_shape: tuple[int, ...], how: Measurement | None = None
    ) -> Timing:
        """Latency of a forward pass of ``module`` on ``how.batch`` inputs of ``input_shape``.

        The module is run in eval mode and left as it was.
        """
        return self.measure_many([(module, input_shape)], how)[0]

    def measure_many(
        self,
        modules: Sequence[tuple[nn.Module, tuple[int, ...]]],
        how: Measurement | None = None,
        *,
        on_timed: Callable[[int, int], None] | None = None,
    ) -> list[Timing]:
        """Latencies of ``(module, input_shape)`` pairs, timed in interleaved rounds.

        Args:
            modules: What to time, and the shape of one input of each.
            how: Warm-up, repeats, batch and rounds.
            on_timed: Called with (timings done, timings in all) after each module of
                each round.
        """
        self.check_available()
        how = how or Measurement()
        best: list[Timing | None] = [None] * len(modules)
        total = how.rounds * len(modules)
        with ExitStack() as stack:
            runners = [stack.enter_context(r) for r in self.runners(modules, how.batch)]
            for round_index in range(how.rounds):
                for index, runner in enumerate(runners):
                    timing = time_calls(
                        runner.call,
                        warmup=how.warmup,
                        repeats=how.repeats,
                        synchronise=runner.synchronise,
                    )
                    previous = best[index]
                    if previous is None or timing.median_ms < previous.median_ms:
                        best[index] = timing
                    if on_timed is not None:
                        on_timed(round_index * len(runners) + index + 1, total)
        return [timing for timing in best if timing is not None]


def machine_fingerprint() -> dict[str, Any]:
    """What identifies this machine and moment: CPU model, cores, OS, Python, date."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


LOCAL_DEVICES: Registry[type[LocalDevice]] = Registry("device")


def create_device(name: str, **settings: Any) -> LocalDevice:
    """The local device registered as ``name``, with ``settings`` (``threads=2``, ...)."""
    return LOCAL_DEVICES.get(name)(**settings)
