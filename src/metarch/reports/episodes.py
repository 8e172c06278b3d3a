"""Pictures of sampled episodes, for checking by eye what a model is trained on."""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np

from metarch.data.episodes import EpisodeBatch
from metarch.utils.io import atomic_write_bytes

__all__ = ["episode_canvas", "save_episode_grid"]

_PAD = 2
_SUPPORT_FRAME = np.array([0.12, 0.47, 0.71])  # blue frames mark support images
_QUERY_FRAME = np.array([0.75, 0.75, 0.75])


def episode_canvas(batch: EpisodeBatch, task: int, max_queries: int = 5) -> np.ndarray:
    """An RGB image of one episode: a column per class, support on top, queries below.

    Args:
        batch: Sampled episodes.
        task: Which episode of the batch.
        max_queries: Queries shown per class at most.
    """
    labels = batch.support_labels[task]
    ways = int(labels.max()) + 1
    shots = len(labels) // ways
    queries = len(batch.query_labels[task]) // ways
    shown = min(queries, max_queries)
    _, channels, h, w = batch.support_images[task].shape
    tile_h, tile_w = h + 2 * _PAD, w + 2 * _PAD
    canvas = np.ones(((shots + shown) * tile_h + _PAD, ways * tile_w, 3))

    def put(image: np.ndarray, row: int, col: int, frame: np.ndarray) -> None:
        top, left = row * tile_h, col * tile_w
        canvas[top : top + tile_h, left : left + tile_w] = frame
        # Ink is bright in the data; greyscale is inverted so drawings read as ink on paper.
        pixels = image if channels == 3 else np.repeat(1.0 - image, 3, axis=0)
        canvas[top + _PAD : top + _PAD + h, left + _PAD : left + _PAD + w] = pixels.transpose(
            1, 2, 0
        )

    support = batch.support_images[task].numpy()
    query = batch.query_images[task].numpy()
    for way in range(ways):
        for shot in range(shots):
            put(support[way * shots + shot], shot, way, _SUPPORT_FRAME)
        for q in range(shown):
            put(query[way * queries + q], shots + q, way, _QUERY_FRAME)
    return canvas


def save_episode_grid(
    batch: EpisodeBatch,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    class_names: list[list[str]] | None = None,
    max_episodes: int = 4,
    max_queries: int = 5,
) -> None:
    """Write a PNG with one panel per episode (atomically).

    Args:
        batch: Sampled episodes.
        path: Output PNG file.
        title: Figure title.
        class_names: Per episode, the name of each label's class (shown under the panel).
        max_episodes: Episodes drawn at most.
        max_queries: Queries per class drawn at most.
    """
    count = min(batch.num_tasks, max_episodes)
    canvases = [episode_canvas(batch, t, max_queries) for t in range(count)]
    width = max(c.shape[1] for c in canvases)
    height = sum(c.shape[0] for c in canvases)
    scale = 0.035
    figure, axes = plt.subplots(
        count,
        1,
        figsize=(max(4.0, width * scale), height * scale + 1.0 + 0.4 * count),
        squeeze=False,
    )
    for t, (axis, canvas) in enumerate(zip(axes[:, 0], canvases, strict=True)):
        axis.imshow(canvas, interpolation="nearest")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"episode {int(batch.task_indices[t])}", fontsize=9, loc="left")
        if class_names is not None:
            names = ", ".join(f"{i}: {n}" for i, n in enumerate(class_names[t]))
            axis.set_xlabel(names, fontsize=6, wrap=True)
    if title:
        figure.suptitle(f"{title}  (blue: support, grey: query)", fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
