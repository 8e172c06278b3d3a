"""Sinusoid regression tasks, as in MAML (Finn et al., 2017, section 5.1).

Each task is a sine wave ``y = A * sin(x - phase)`` with amplitude ``A`` uniform in
``[0.1, 5.0]`` and phase uniform in ``[0, pi]``; its inputs ``x`` are uniform in
``[-5, 5]``. The sign convention (``x - phase``) is the one of the paper's code
(``amp * np.sin(x - phase)`` in ``cbfinn/maml``'s ``data_generator.py``). A task gives ``K``
support points to adapt on and ``Q`` query points to evaluate on, all drawn independently.

Batches are reproducible: batch ``index`` of a generator with ``seed`` is a pure function of
``(seed, index, tasks, shots, queries)``, drawn from its own
``numpy.random.Generator(SeedSequence([seed, index]))`` and never from the global numpy or
torch random state. Within a batch, task ``t`` only depends on the draws for tasks
``0..t``, so a larger batch starts with the tasks of a smaller one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from metarch.errors import EpisodeError

__all__ = [
    "MAML_AMPLITUDE_RANGE",
    "MAML_PHASE_RANGE",
    "MAML_X_RANGE",
    "SinusoidBatch",
    "SinusoidTasks",
]

#: The task distribution of the MAML paper.
MAML_AMPLITUDE_RANGE: tuple[float, float] = (0.1, 5.0)
MAML_PHASE_RANGE: tuple[float, float] = (0.0, math.pi)
MAML_X_RANGE: tuple[float, float] = (-5.0, 5.0)


@dataclass(frozen=True)
class SinusoidBatch:
    """A batch of ``T`` sinusoid tasks; every tensor is ``float32``.

    Attributes:
        support_x: Support inputs, ``(T, K, 1)``.
        support_y: Support targets, ``(T, K, 1)``.
        query_x: Query inputs, ``(T, Q, 1)``.
        query_y: Query targets, ``(T, Q, 1)``.
        amplitude: Amplitude of each task, ``(T,)``.
        phase: Phase of each task, ``(T,)``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    amplitude: torch.Tensor
    phase: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """Number of tasks ``T``."""
        return int(self.amplitude.shape[0])

    def to(self, device: torch.device | str) -> SinusoidBatch:
        """The same batch with every tensor on ``device``."""
        return SinusoidBatch(
            support_x=self.support_x.to(device),
            support_y=self.support_y.to(device),
            query_x=self.query_x.to(device),
            query_y=self.query_y.to(device),
            amplitude=self.amplitude.to(device),
            phase=self.phase.to(device),
        )


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EpisodeError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_range(name: str, value: tuple[float, float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise EpisodeError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise EpisodeError(f"{name} must be finite with low <= high, got ({low}, {high})")
    return low, high


class SinusoidTasks:
    """A reproducible stream of K-shot sinusoid regression tasks.

    Args:
        shots: Support points per task, ``K >= 1``.
        queries: Query points per task, ``Q >= 0``.
        seed: Non-negative seed; with the batch index it fixes every batch.
        amplitude_range: ``(low, high)`` of the uniform amplitude.
        phase_range: ``(low, high)`` of the uniform phase.
        x_range: ``(low, high)`` of the uniform inputs.

    Raises:
        EpisodeError: If a count is out of range or a range is not ordered.

    Example:
        >>> tasks = SinusoidTasks(shots=10, queries=10, seed=0)
        >>> batch = tasks.sample(25, index=0)
        >>> batch.support_x.shape
        torch.Size([25, 10, 1])
    """

    def __init__(
        self,
        shots: int,
        queries: int,
        *,
        seed: int,
        amplitude_range: tuple[float, float] = MAML_AMPLITUDE_RANGE,
        phase_range: tuple[float, float] = MAML_PHASE_RANGE,
        x_range: tuple[float, float] = MAML_X_RANGE,
    ) -> None:
        _check_count("shots", shots, 1)
        _check_count("queries", queries, 0)
        _check_count("seed", seed, 0)
        self.shots = shots
        self.queries = queries
        self.seed = seed
        self.amplitude_range = _check_range("amplitude_range", amplitude_range)
        self.phase_range = _check_range("phase_range", phase_range)
        self.x_range = _check_range("x_range", x_range)

    def __repr__(self) -> str:
        return (
            f"SinusoidTasks(shots={self.shots}, queries={self.queries}, seed={self.seed}, "
            f"amplitude_range={self.amplitude_range}, phase_range={self.phase_range}, "
            f"x_range={self.x_range})"
        )

    def sample(self, tasks: int, index: int = 0) -> SinusoidBatch:
        """Batch number ``index`` of ``tasks`` tasks.

        Args:
            tasks: Number of tasks ``T >= 1``.
            index: Batch index ``>= 0``; the same index always gives the same batch.

        Raises:
            EpisodeError: If ``tasks`` or ``index`` is out of range.
        """
        _check_count("tasks", tasks, 1)
        _check_count("index", index, 0)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, index])))
        points = self.shots + self.queries
        # One row per task, filled in order, so task t does not depend on the batch size.
        u = rng.random((tasks, 2 + points))
        amplitude = _scale(u[:, 0], self.amplitude_range)
        phase = _scale(u[:, 1], self.phase_range)
        x = _scale(u[:, 2:], self.x_range)[..., None]
        y = amplitude[:, None, None] * np.sin(x - phase[:, None, None])
        k = self.shots
        return SinusoidBatch(
            support_x=_tensor(x[:, :k]),
            support_y=_tensor(y[:, :k]),
            query_x=_tensor(x[:, k:]),
            query_y=_tensor(y[:, k:]),
            amplitude=_tensor(amplitude),
            phase=_tensor(phase),
        )

    def batches(self, tasks: int, start: int = 0) -> Iterator[SinusoidBatch]:
        """Endless batches of ``tasks`` tasks, for indices ``start, start + 1, ...``.

        Raises:
            EpisodeError: If ``tasks`` or ``start`` is out of range.
        """
        _check_count("tasks", tasks, 1)
        _check_count("start", start, 0)

        def generate() -> Iterator[SinusoidBatch]:
            index = start
            while True:
                yield self.sample(tasks, index)
                index += 1

        # Validate now, not at the first next(): the generator body runs lazily.
        return generate()

    def evaluate_grid(
        self, amplitude: float, phase: float, num: int = 100
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Evenly spaced inputs over ``x_range`` and the true outputs, for plotting.

        Args:
            amplitude: Amplitude of the sine wave.
            phase: Phase of the sine wave.
            num: Number of points ``>= 2``, including both ends of ``x_range``.

        Returns:
            ``(x, y)``, both ``float32`` of shape ``(num, 1)``.
        """
        _check_count("num", num, 2)
        x = np.linspace(self.x_range[0], self.x_range[1], num)[:, None]
        y = float(amplitude) * np.sin(x - float(phase))
        return _tensor(x), _tensor(y)


def _scale(u: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    low, high = bounds
    # Same arithmetic as Generator.uniform(low, high): low + (high - low) * U[0, 1).
    return low + (high - low) * u


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
