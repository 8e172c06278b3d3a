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

__all__ = ["episode_canvas", "episode_grid_bytes", "save_episode_grid"]

_PAD = 2
_SCALE = 0.035  # figure inches per canvas pixel
_DPI = 100
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


def _figure_inches(width: int, height: int, episodes: int) -> tuple[float, float]:
    """Figure size for canvases of ``width`` and total ``height`` pixels, one per episode."""
    return max(4.0, width * _SCALE), height * _SCALE + 1.0 + 0.4 * episodes


def episode_grid_bytes(
    ways: int,
    shots: int,
    queries: int,
    episodes: int,
    image_shape: tuple[int, int, int],
    *,
    max_queries: int = 5,
) -> int:
    """Memory that sampling and drawing such episodes with :func:`save_episode_grid` takes.

    An estimate, in bytes, made before anything is built: the sampled ``float32`` images
    (``ways x (shots + queries) x episodes`` of them), the ``float64`` canvas of each
    episode, and the figure's RGBA raster (counted twice: matplotlib's renderer and the
    resampled images it draws hold one each). It grows with ``ways x episodes``, the
    figure's area: 100 ways x 200 episodes of 28x28 images is about 13 GB.

    Args:
        ways: Classes per episode.
        shots: Support images per class.
        queries: Query images per class.
        episodes: Episodes drawn.
        image_shape: ``(channels, height, width)`` of the images.
        max_queries: Queries shown per class at most (as :func:`save_episode_grid`).
    """
    channels, h, w = image_shape
    tensors = episodes * ways * (shots + queries) * channels * h * w * 4
    canvas_h = (shots + min(queries, max_queries)) * (h + 2 * _PAD) + _PAD
    canvas_w = ways * (w + 2 * _PAD)
    canvases = episodes * canvas_h * canvas_w * 3 * 8
    inches_w, inches_h = _figure_inches(canvas_w, episodes * canvas_h, episodes)
    raster = int(inches_w * _DPI) * int(inches_h * _DPI) * 4
    return tensors + canvases + 2 * raster


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
    figure, axes = plt.subplots(
        count, 1, figsize=_figure_inches(width, height, count), squeeze=False
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
    figure.savefig(buffer, format="png", dpi=_DPI)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
