"""learn2learn's side of benchmarks/episodes.py; runs inside the peers' virtual environment.

Reads the decoded Omniglot arrays written by the parent benchmark, builds learn2learn's
documented task pipeline over an in-memory ``TensorDataset`` (float images, as its
examples use), and prints one JSON object with episodes per second for each shape.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def best_rate(taskset: Any, support: torch.Tensor, query: torch.Tensor, seconds: float) -> float:
    """Best of three windows: tasks per second, including the support/query split."""

    def sample() -> None:
        data, target = taskset.sample()
        # The support/query split every learn2learn example performs after sampling.
        _ = data[support], target[support], data[query], target[query]

    sample()
    best = 0.0
    for _ in range(3):
        calls = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            sample()
            calls += 1
        best = max(best, calls / elapsed)
    return best


def main() -> None:
    import learn2learn as l2l
    from learn2learn.data import MetaDataset, TaskDataset
    from learn2learn.data.transforms import (
        ConsecutiveLabels,
        KShots,
        LoadData,
        NWays,
        RemapLabels,
    )

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--shapes", default="5w1s15q,20w1s5q")
    args = parser.parse_args()
    torch.set_num_threads(1)

    images = np.load(Path(args.data) / "images.npy")
    offsets = np.load(Path(args.data) / "offsets.npy")
    labels = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    dataset = torch.utils.data.TensorDataset(
        torch.from_numpy(images).float().div_(255.0), torch.from_numpy(labels)
    )
    # Passing the index map skips MetaDataset's scan of every item (not part of sampling).
    labels_to_indices = {
        int(c): list(range(int(offsets[c]), int(offsets[c + 1]))) for c in range(len(offsets) - 1)
    }
    meta = MetaDataset(dataset, labels_to_indices=labels_to_indices)

    rates = {}
    for shape in args.shapes.split(","):
        ways, rest = shape.split("w")
        shots, queries = rest.rstrip("q").split("s")
        n, k, q = int(ways), int(shots), int(queries)
        taskset = TaskDataset(
            meta,
            task_transforms=[
                NWays(meta, n),
                KShots(meta, k + q),
                LoadData(meta),
                RemapLabels(meta),
                ConsecutiveLabels(meta),
            ],
            num_tasks=-1,
        )
        grid = np.arange(n * (k + q)).reshape(n, k + q)
        support_index = torch.from_numpy(grid[:, :k].ravel())
        query_index = torch.from_numpy(grid[:, k:].ravel())

        rates[shape] = best_rate(taskset, support_index, query_index, args.seconds)
    print(
        json.dumps(
            {
                "rates": rates,
                "version": l2l.__version__,
                "torch": torch.__version__,
                "pipeline": "MetaDataset + TaskDataset[NWays, KShots, LoadData, RemapLabels, "
                "ConsecutiveLabels]",
            }
        )
    )


if __name__ == "__main__":
    main()
