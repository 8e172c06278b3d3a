"""N-way K-shot Q-query episodes, sampled fast, reproducibly and without leaks.

Every task of an :class:`EpisodeSampler` is a pure function of ``(seed, task_index)``: its
random generator is built from ``numpy.random.SeedSequence([seed, task_index])``, never
from global state. The same seed therefore gives the same tasks in every process, on every
run, whatever else used the RNG, and batch ``b`` of size ``T`` is exactly tasks
``b*T .. b*T+T-1`` (so a run can resume or split its meta-batches across processes).

Within a task, each class draws ``K + Q`` *distinct* images; the first ``K`` are support,
the rest query, so support and query never share an image. All tasks of a batch are
gathered from the decoded ``uint8`` array in one indexing operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from metarch.data.augment import AffineAugmentation
from metarch.data.normalize import ChannelNormalization
from metarch.data.pools import ClassPool
from metarch.data.rng import purpose_key, sample_without_replacement, task_keys, uniform
from metarch.errors import EpisodeError

__all__ = ["EpisodeBatch", "EpisodeSampler"]

# Independent random streams of a task's key, one per purpose.
_CLASS_STREAM = 0
_GROUP_STREAM = 4
_DRAWING_STREAM = 8
_AUGMENT_STREAM = 12

_ROW_SALT = np.uint64(0xD1B54A32D192ED03)

_NUMPY_DTYPES: dict[torch.dtype, type[np.floating]] = {
    torch.float16: np.float16,
    torch.float32: np.float32,
    torch.float64: np.float64,
}


@dataclass(frozen=True)
class EpisodeBatch:
    """A batch of ``T`` episodes with ``N`` ways, ``K`` shots and ``Q`` queries per class.

    Support and query are ordered class by class: label ``n`` occupies positions
    ``n*K .. n*K+K-1`` of the support. Which pool entry gets label ``n`` is random.

    Attributes:
        support_images: ``(T, N*K, C, H, W)`` float images in [0, 1] (normalised if the
            sampler normalises).
        support_labels: ``(T, N*K)`` int64 labels 0..N-1.
        query_images: ``(T, N*Q, C, H, W)`` float images, as the support images.
        query_labels: ``(T, N*Q)`` int64 labels 0..N-1.
        entries: ``(T, N)`` pool entry of each label.
        support_image_ids: ``(T, N*K)`` index of each support image in the decoded set.
        query_image_ids: ``(T, N*Q)`` index of each query image in the decoded set.
        task_indices: ``(T,)`` index of each task in the sampler's stream.
    """

    support_images: torch.Tensor
    support_labels: torch.Tensor
    query_images: torch.Tensor
    query_labels: torch.Tensor
    entries: torch.Tensor
    support_image_ids: torch.Tensor
    query_image_ids: torch.Tensor
    task_indices: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """Number of episodes ``T``."""
        return int(self.support_images.shape[0])

    # The generic task-batch names every meta-learner reads (metarch.meta.base.TaskBatch).
    @property
    def support_x(self) -> torch.Tensor:
        """``support_images``."""
        return self.support_images

    @property
    def support_y(self) -> torch.Tensor:
        """``support_labels``."""
        return self.support_labels

    @property
    def query_x(self) -> torch.Tensor:
        """``query_images``."""
        return self.query_images

    @property
    def query_y(self) -> torch.Tensor:
        """``query_labels``."""
        return self.query_labels

    def to(self, device: torch.device | str) -> EpisodeBatch:
        """Copy the image and label tensors to ``device``."""
        return EpisodeBatch(
            support_images=self.support_images.to(device),
            support_labels=self.support_labels.to(device),
            query_images=self.query_images.to(device),
            query_labels=self.query_labels.to(device),
            entries=self.entries,
            support_image_ids=self.support_image_ids,
            query_image_ids=self.query_image_ids,
            task_indices=self.task_indices,
        )


class EpisodeSampler:
    """Draws N-way K-shot Q-query episodes from a class pool.

    Args:
        pool: Classes to draw from (rotated entries are classes of their own).
        ways: Classes per episode ``N``.
        shots: Support images per class ``K``.
        queries: Query images per class ``Q``.
        seed: Seed of the task stream.
        within_group: Draw all ``N`` classes of an episode from one group (alphabet), as in
            Lake's within-alphabet one-shot task. The group is chosen uniformly among
            groups with at least ``N`` entries.
        dtype: Floating dtype of the images.
        augment: Random affine distortion of every image (meta-training only), drawn from
            the task's own random stream, so tasks stay pure functions of their index.
        normalize: Per-channel normalisation applied last (after any distortion).

    Raises:
        EpisodeError: If the pool cannot provide such episodes.
    """

    def __init__(
        self,
        pool: ClassPool,
        ways: int,
        shots: int,
        queries: int,
        *,
        seed: int = 0,
        within_group: bool = False,
        dtype: torch.dtype = torch.float32,
        augment: AffineAugmentation | None = None,
        normalize: ChannelNormalization | None = None,
    ) -> None:
        if ways < 1 or shots < 1 or queries < 0:
            raise EpisodeError(
                f"need ways >= 1, shots >= 1 and queries >= 0, got ways={ways}, "
                f"shots={shots}, queries={queries}"
            )
        if not 0 <= seed < 2**63:
            raise EpisodeError(f"seed must be a non-negative integer below 2**63, got {seed}")
        pool_name = pool.name or pool.dataset.name
        if ways > len(pool):
            raise EpisodeError(
                f"{ways}-way episodes need at least {ways} classes, but pool {pool_name!r} "
                f"has {len(pool)}"
            )
        per_class = shots + queries
        smallest = int(pool.class_sizes.min())
        if per_class > smallest:
            worst = pool.entry_names[int(np.argmin(pool.class_sizes))]
            raise EpisodeError(
                f"{shots} shots + {queries} queries = {per_class} images per class, but class "
                f"{worst!r} of pool {pool_name!r} has only {smallest}; lower shots or queries"
            )
        self.pool = pool
        self.ways = ways
        self.shots = shots
        self.queries = queries
        self.seed = seed
        self.within_group = within_group
        self.dtype = dtype
        self.augment = augment
        channels = pool.dataset.image_shape[0]
        if normalize is not None and normalize.channels != channels:
            raise EpisodeError(
                f"the normalisation is for {normalize.channels}-channel images, but pool "
                f"{pool_name!r} has {channels} channels"
            )
        self.normalize = normalize
        self._seed_key = purpose_key(seed, "episodes")
        self._group_members = np.zeros((0, 0), dtype=np.int64)
        self._group_sizes = np.zeros(0, dtype=np.int64)
        if within_group:
            groups = pool.entry_groups
            members = [np.flatnonzero(groups == g) for g in range(len(pool.group_names))]
            eligible = [m for m in members if len(m) >= ways]
            if not eligible:
                largest = max(len(m) for m in members)
                raise EpisodeError(
                    f"within-alphabet {ways}-way episodes need an alphabet with at least "
                    f"{ways} classes; the largest in pool {pool_name!r} has {largest}"
                )
            # Padded (groups, largest) table; padding is never drawn.
            self._group_sizes = np.asarray([len(m) for m in eligible], dtype=np.int64)
            self._group_members = np.zeros((len(eligible), max(map(len, eligible))), np.int64)
            for row, member in zip(self._group_members, eligible, strict=True):
                row[: len(member)] = member
        self._np_dtype = _NUMPY_DTYPES.get(dtype)
        if self._np_dtype is None:
            raise EpisodeError(
                f"dtype must be one of {sorted(map(str, _NUMPY_DTYPES))}, got {dtype}"
            )
        dataset = pool.dataset
        self._sizes = pool.class_sizes
        self._dataset_offsets = dataset.class_offsets[pool.classes]
        if np.any(pool.rotations != 0):
            # Rotated entries get their own pre-rotated copy of the class's images, so a batch
            # is one gather with no per-episode rotation work.
            self._images = np.concatenate(
                [
                    np.rot90(dataset.images_of(c), r, axes=(-2, -1))
                    for c, r in zip(pool.classes.tolist(), pool.rotations.tolist(), strict=True)
                ]
            )
            self._offsets = np.concatenate([[0], np.cumsum(self._sizes)[:-1]]).astype(np.int64)
        else:
            self._images = dataset.images
            self._offsets = self._dataset_offsets

    def sample(self, tasks: int = 1, batch_index: int = 0) -> EpisodeBatch:
        """Batch ``batch_index`` of ``tasks`` episodes: tasks ``batch_index*tasks`` onwards.

        Args:
            tasks: Episodes in the batch ``T``.
            batch_index: Position of the batch in the stream.
        """
        if tasks < 1 or batch_index < 0:
            raise EpisodeError(f"need tasks >= 1 and batch_index >= 0, got {tasks}, {batch_index}")
        first = batch_index * tasks
        return self.tasks(np.arange(first, first + tasks, dtype=np.int64))

    def _draw_entries(self, keys: np.ndarray) -> np.ndarray:
        """Pool entries ``(T, N)`` of each task, in label order."""
        if not self.within_group:
            population = np.full(len(keys), len(self.pool), dtype=np.int64)
            return sample_without_replacement(keys, _CLASS_STREAM, population, self.ways)
        groups = (uniform(keys, _GROUP_STREAM, ()) * len(self._group_sizes)).astype(np.int64)
        positions = sample_without_replacement(
            keys, _CLASS_STREAM, self._group_sizes[groups], self.ways
        )
        entries: np.ndarray = self._group_members[groups[:, None], positions]
        return entries

    def tasks(self, task_indices: np.ndarray | range | list[int]) -> EpisodeBatch:
        """The episodes with the given stream indices, batched in that order."""
        indices = np.asarray(task_indices, dtype=np.int64).reshape(-1)
        if len(indices) == 0 or indices.min() < 0:
            raise EpisodeError("need at least one task index, all non-negative")
        t, n, k = len(indices), self.ways, self.shots
        keys = task_keys(self._seed_key, indices)
        entries = self._draw_entries(keys)  # (T, N)
        # One key per (task, class) row: the drawings of each class are drawn independently.
        picks = sample_without_replacement(
            _row_keys(keys, n),
            _DRAWING_STREAM,
            self._sizes[entries].reshape(-1),
            k + self.queries,
        ).reshape(t, n, k + self.queries)
        local = self._offsets[entries][:, :, None] + picks
        image_ids = self._dataset_offsets[entries][:, :, None] + picks
        labels = np.arange(n, dtype=np.int64)
        support_images = self._gather(local[:, :, :k])
        query_images = self._gather(local[:, :, k:])
        if self.augment is not None:
            per_image = self.augment.draws_per_image
            draws = uniform(keys, _AUGMENT_STREAM, (n, k + self.queries, per_image))
            support_images = self._distort(support_images, draws[:, :, :k])
            query_images = self._distort(query_images, draws[:, :, k:])
        if self.normalize is not None:
            support_images = self.normalize(support_images)
            query_images = self.normalize(query_images)
        return EpisodeBatch(
            support_images=support_images,
            support_labels=torch.from_numpy(np.tile(labels.repeat(k), (t, 1))),
            query_images=query_images,
            query_labels=torch.from_numpy(np.tile(labels.repeat(self.queries), (t, 1))),
            entries=torch.from_numpy(entries),
            support_image_ids=torch.from_numpy(image_ids[:, :, :k].reshape(t, -1)),
            query_image_ids=torch.from_numpy(image_ids[:, :, k:].reshape(t, -1)),
            task_indices=torch.from_numpy(indices.copy()),
        )

    def _gather(self, local_ids: np.ndarray) -> torch.Tensor:
        """Images ``(T, N*S, C, H, W)`` for pool-local ids ``(T, N, S)``, scaled to [0, 1]."""
        t, n, s = local_ids.shape
        images = self._images[local_ids.reshape(-1)]
        # numpy, not torch, converts: torch's intra-op threads cost more than they save on
        # arrays this small, and badly so when the cores are busy with training.
        pixels = np.multiply(images, 1.0 / 255.0, dtype=self._np_dtype)
        return torch.from_numpy(pixels.reshape(t, n * s, *images.shape[1:]))

    def _distort(self, images: torch.Tensor, draws: np.ndarray) -> torch.Tensor:
        """Apply the augmentation to ``(T, N*S, C, H, W)`` images with draws ``(T, N, S, D)``."""
        assert self.augment is not None
        if images.shape[1] == 0:
            return images
        flat = images.flatten(0, 1)
        distorted = self.augment(flat, draws.reshape(flat.shape[0], -1))
        return distorted.view(images.shape)

    def batches(self, tasks: int, start: int = 0) -> Iterator[EpisodeBatch]:
        """Endless batches of ``tasks`` episodes, from batch ``start`` on."""
        batch_index = start
        while True:
            yield self.sample(tasks, batch_index)
            batch_index += 1


def _row_keys(keys: np.ndarray, rows_per_key: int) -> np.ndarray:
    """Distinct keys for the ``rows_per_key`` rows (classes) of each task, flattened."""
    rows = np.arange(rows_per_key, dtype=np.uint64)
    return task_keys(keys[:, None] ^ _ROW_SALT, rows).reshape(-1)
