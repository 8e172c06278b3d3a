"""Counter-based random numbers: every draw is a pure function of (key, stream, position).

Episode sampling needs two things at once: each task must be a pure function of
``(seed, task_index)`` (reproducible across processes, resumable, independent of global
RNG state), and a batch of tasks must be drawn with a handful of vectorised numpy calls
rather than one generator object per task. A counter-based generator gives both: the
``j``-th number of stream ``s`` of task key ``k`` is ``mix(k + (s * 2**32 + j + 1) * G)``,
where ``mix`` is the SplitMix64 finaliser and ``G`` the 64-bit golden ratio (SplitMix64's
own increment), so a whole ``(tasks, n)`` block is a few array operations.

Every purpose that draws random numbers (episodes, test-time augmentation, sub-network
sampling, evolution) has a name in :data:`PURPOSES` and draws from keys salted by that name
(:func:`purpose_key`), so two purposes never share draws, even when a user gives both the
same seed. Episodes are unsalted: their keys are those every published result was drawn with.
"""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np

__all__ = [
    "PURPOSES",
    "purpose_key",
    "sample_without_replacement",
    "seed_key",
    "task_keys",
    "uniform",
]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_MINUS_53 = 2.0**-53
_S27, _S30, _S31, _S11 = (np.uint64(s) for s in (27, 30, 31, 11))


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, in place on a fresh uint64 array (wrapping arithmetic)."""
    z ^= z >> _S30
    z *= _MUL1
    z ^= z >> _S27
    z *= _MUL2
    z ^= z >> _S31
    return z


def seed_key(seed: int) -> np.ndarray:
    """A well-mixed 64-bit key for a stream seed, shape ``(1,)``."""
    return _mix(np.asarray([seed], dtype=np.uint64) * _GOLDEN + _GOLDEN)


def _salt(purpose: str) -> np.uint64:
    digest = hashlib.blake2b(purpose.encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


#: Named purposes and their salts (0 for episodes: unchanged keys).
PURPOSES: dict[str, np.uint64] = {
    "episodes": np.uint64(0),
    **{
        name: _salt(name)
        for name in ("test_time_augmentation", "subnet_sampling", "evolution", "search")
    },
}


def purpose_key(seed: int, purpose: str) -> np.ndarray:
    """The key of ``purpose``'s stream for a user's seed, shape ``(1,)`` (see the module doc).

    Raises:
        KeyError: For a purpose not in :data:`PURPOSES` (add it there).
    """
    if purpose not in PURPOSES:
        raise KeyError(f"unknown random purpose {purpose!r}; known: {', '.join(PURPOSES)}")
    key = seed_key(seed)
    salt = PURPOSES[purpose]
    return key if salt == 0 else _mix(key ^ salt)


def task_keys(seed: int | np.ndarray, task_indices: np.ndarray) -> np.ndarray:
    """One well-mixed 64-bit key per task, from the stream seed and the task's index.

    Args:
        seed: The stream seed, or its :func:`seed_key` (saves a mix per call).
        task_indices: Indices of the tasks in the stream.
    """
    key = seed_key(seed) if isinstance(seed, int) else seed
    # SplitMix64's own sequence, started at the seed's key: index i is its i-th output.
    return _mix(key + (np.asarray(task_indices, dtype=np.uint64) + np.uint64(1)) * _GOLDEN)


def uniform(keys: np.ndarray, stream: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform floats in [0, 1), shape ``keys.shape + shape``, from stream ``stream``.

    Args:
        keys: uint64 keys (for example from :func:`task_keys`), any shape.
        stream: Independent stream number (0 .. 2**31), one per purpose.
        shape: Shape of the block drawn for every key.
    """
    z = keys[..., None] + _offsets(stream, math.prod(shape))
    values = (_mix(z) >> _S11).astype(np.float64)
    values *= _TWO_POW_MINUS_53
    return values.reshape(*keys.shape, *shape)


@functools.lru_cache(maxsize=256)
def _offsets(stream: int, size: int) -> np.ndarray:
    """``(stream * 2**32 + j + 1) * G`` for j < size (cached: samplers reuse a few shapes)."""
    counters = np.arange(1, size + 1, dtype=np.uint64) + np.uint64(stream << 32)
    offsets = counters * _GOLDEN
    offsets.flags.writeable = False
    return offsets


def sample_without_replacement(
    keys: np.ndarray, stream: int, population: np.ndarray, count: int
) -> np.ndarray:
    """For each key, ``count`` distinct positions from ``range(population[i])``, in random order.

    Small draws from large populations take random candidates and drop repeats; other
    draws sort random keys (a random permutation). Both are pure functions of the inputs.

    Args:
        keys: uint64 keys, shape ``(R,)``.
        stream: Stream number for :func:`uniform`.
        population: Population size of each row, shape ``(R,)``, every entry ``>= count``.
        count: Positions per row.

    Returns:
        int64 positions, shape ``(R, count)``.
    """
    rows = len(keys)
    if rows == 0 or count == 0:
        return np.zeros((rows, count), dtype=np.int64)
    smallest = int(population.min())
    if count * 4 <= smallest and smallest > 64:
        candidates = count + 8 + 2 * int(np.sqrt(count))
        picks = _distinct_candidates(keys, stream, population, count, candidates)
        if picks is not None:
            return picks
    largest = int(population.max())
    scores = uniform(keys, stream + 1, (largest,))
    if smallest != largest:
        # Positions past a row's population sort last and are never picked.
        scores[np.arange(largest)[None, :] >= population[:, None]] = np.inf
    if count * 2 < largest:
        part = np.argpartition(scores, count - 1, axis=1)[:, :count]
        order = np.argsort(np.take_along_axis(scores, part, axis=1), axis=1)
        return np.take_along_axis(part, order, axis=1).astype(np.int64)
    return np.argsort(scores, axis=1)[:, :count].astype(np.int64)


@functools.lru_cache(maxsize=64)
def _strictly_lower(size: int) -> np.ndarray:
    mask = np.tri(size, size, k=-1, dtype=bool)
    mask.flags.writeable = False
    return mask


def _distinct_candidates(
    keys: np.ndarray, stream: int, population: np.ndarray, count: int, candidates: int
) -> np.ndarray | None:
    """First ``count`` distinct values among random candidates, or None if a row falls short."""
    values = (uniform(keys, stream, (candidates,)) * population[:, None]).astype(np.int64)
    equal = values[:, :, None] == values[:, None, :]
    repeat = (equal & _strictly_lower(candidates)).any(axis=2)
    if repeat.any() and int((~repeat).sum(axis=1).min()) < count:
        return None
    first = np.argsort(repeat, axis=1, kind="stable")[:, :count]
    return np.take_along_axis(values, first, axis=1)
