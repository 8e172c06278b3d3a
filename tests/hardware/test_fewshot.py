"""The few-shot latency predictor: meta-trained across devices, adapted to an unseen one.

Synthetic devices make it checkable in seconds: on device ``d`` a NAS-Bench-201 network
costs a base plus, per edge, that device's cost of the edge's operation, so devices differ
in which operations are expensive, and a new device mixes the known ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metarch.hardware import DeviceLatencyTable
from metarch.hardware.check import distinct_samples
from metarch.hardware.fewshot import (
    ArchitectureTokens,
    FewShotError,
    FewShotLatencyPredictor,
    FewShotSettings,
    pick_devices,
)
from metarch.nas import create_space
from tests.clitools import run_cli

TRAIN = ["gpu_a", "gpu_b", "cpu_a", "cpu_b", "phone_a"]
QUICK = FewShotSettings(samples=8, iterations=150, meta_batch=4, queries=30, validate_every=50)


def synthetic_table(tmp_path: Path, devices: list[str], networks: int = 150) -> Path:
    space = create_space("nasbench201")
    architectures = distinct_samples(space, networks, seed=0)
    rng = np.random.default_rng(0)
    ops = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
    lines = ["arch," + ",".join(devices)]
    costs = {d: dict(zip(ops, rng.uniform(0.1, 3.0, len(ops)), strict=True)) for d in devices}
    for architecture in architectures:
        row = [
            3.0 + sum(costs[d][op] for op in architecture) * rng.uniform(0.97, 1.03)
            for d in devices
        ]
        lines.append(space.encode(architecture) + "," + ",".join(f"{v:.4f}" for v in row))
    path = tmp_path / "latency.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_architecture_tokens_are_one_hot_by_position() -> None:
    tokens = ArchitectureTokens.fit(["a-b-c", "a-x-c", "y-b-c"])
    assert tokens.vocabulary == (("a", "y"), ("b", "x"), ("c",)) and tokens.size == 5
    encoded = tokens.encode(["y-x-c", "z-b-c"])
    assert encoded.tolist() == [[0, 1, 0, 1, 1], [0, 0, 1, 0, 1]]  # z unseen: zeros
    with pytest.raises(FewShotError, match="has 2 tokens"):
        tokens.encode(["a-b"])


def test_devices_are_picked_by_name_or_prefix(tmp_path: Path) -> None:
    table = DeviceLatencyTable.from_csv(synthetic_table(tmp_path, [*TRAIN, "new"], 20))
    assert pick_devices(table, ["gpu_*", "phone_a"]) == ["gpu_a", "gpu_b", "phone_a"]
    with pytest.raises(FewShotError, match="no device 'tpu'"):
        pick_devices(table, ["tpu"])


def test_meta_training_ranks_an_unseen_device_and_the_saved_predictor_agrees(
    tmp_path: Path,
) -> None:
    table = DeviceLatencyTable.from_csv(synthetic_table(tmp_path, [*TRAIN, "new"]))
    predictor = FewShotLatencyPredictor.create(table, TRAIN, QUICK)
    before = predictor.evaluate(table, "new")["spearman"]
    predictor.meta_train(table, ["phone_a"])
    after = predictor.evaluate(table, "new")
    assert after["samples"] == 8 and after["networks"] == 150 - 8
    assert after["spearman"] > 0.8 and after["spearman"] > before + 0.3, (before, after)
    assert [h["iteration"] for h in predictor.history] == [50, 100, 150]

    predictor.save(tmp_path / "saved")
    loaded = FewShotLatencyPredictor.load(tmp_path / "saved")
    assert loaded.reference == predictor.reference
    assert loaded.evaluate(table, "new") == after


def test_the_reference_networks_are_chosen_by_the_seed(tmp_path: Path) -> None:
    table = DeviceLatencyTable.from_csv(synthetic_table(tmp_path, TRAIN, 40))
    first = FewShotLatencyPredictor.create(table, TRAIN, QUICK).reference
    again = FewShotLatencyPredictor.create(table, TRAIN, QUICK).reference
    other = FewShotLatencyPredictor.create(
        table, TRAIN, FewShotSettings(samples=8, seed=1)
    ).reference
    assert first == again != other and len(set(first)) == 8


def test_the_cli_meta_trains_once_then_reuses_the_predictor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Device columns the project has never seen are fine.
    table = synthetic_table(tmp_path, [*TRAIN, "unseen_phone", "unseen_gpu"])
    args = ["hardware", "fewshot", "--table", str(table), "--train-devices", "gpu_*,cpu_*"]
    args += ["--iterations", "40", "--samples", "8", "--seed", "3", "--json"]
    args += ["--cache", str(tmp_path / "cache")]
    code, out, _ = run_cli([*args, "--device", "unseen_phone"], capsys)
    assert code == 0, out
    first = json.loads(out)
    assert {"spearman", "kendall", "samples"} <= set(first) and first["samples"] == 8
    assert not first["cached"] and first["train_devices"] == ["gpu_a", "gpu_b", "cpu_a", "cpu_b"]
    code, out, _ = run_cli([*args, "--device", "unseen_gpu"], capsys)
    assert code == 0 and json.loads(out)["cached"]

    code, out, err = run_cli([*args, "--device", "gpu_a"], capsys)
    assert code != 0 and "one of --train-devices" in out + err
    code, out, err = run_cli([*args, "--device", "tpu"], capsys)
    assert code != 0 and "'tpu' is not a column" in out + err


def test_too_many_samples_are_refused(tmp_path: Path) -> None:
    table = DeviceLatencyTable.from_csv(synthetic_table(tmp_path, TRAIN, 8))
    with pytest.raises(FewShotError, match="leave none to predict"):
        FewShotLatencyPredictor.create(table, TRAIN, FewShotSettings(samples=8))
