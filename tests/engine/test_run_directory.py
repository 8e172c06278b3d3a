"""Run directories: one training at a time, the user's config kept, damaged files refused."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from metarch.engine import checkpoint as checkpoint_module
from metarch.engine.checkpoint import CheckpointError, load_checkpoint
from metarch.engine.config import load_config
from metarch.engine.rundir import RunDirectoryBusyError, RunLock
from metarch.engine.trainer import Trainer, TrainingError
from metarch.meta.base import MetaMetrics
from tests.engine.test_trainer import data_root, final_tensors, train, write_config

__all__ = ["data_root"]  # the module-scoped fixture, shared with test_trainer


def test_a_second_training_into_a_busy_run_is_refused(tmp_path: Path, data_root: Path) -> None:
    config = write_config(tmp_path / "c.yaml", "protonet", steps=2)
    run = tmp_path / "run"
    lock = RunLock(run)  # as a training in progress holds it
    with pytest.raises(RunDirectoryBusyError, match=rf"{run} is in use: process \d+ is training"):
        train(config, run, data_root)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing else written
    lock.release()
    train(config, run, data_root)
    assert load_checkpoint(run / "last.json").step == 2


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from metarch.engine.rundir import RunLock; lock = RunLock(Path(sys.argv[1])); "
            "print('locked', flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(RunDirectoryBusyError, match=f"process {holder.pid} is training"):
            RunLock(run)
    finally:
        holder.kill()
        holder.wait()
    RunLock(run).release()  # the OS dropped the dead process's lock


def test_config_given_from_the_run_directory_is_not_rewritten(
    tmp_path: Path, data_root: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    user_file = write_config(run / "config.yaml", "protonet", steps=2)
    text = "# my notes\n" + user_file.read_text()
    user_file.write_text(text)
    trainer = Trainer(load_config(user_file), run, data_root=data_root, config_file=user_file)
    trainer.run()
    assert user_file.read_text() == text
    # Resuming with it (a longer run) is refused rather than overwriting the user's file...
    longer = load_config(user_file, ["steps=3"])
    with pytest.raises(TrainingError, match="the --set overrides would change it"):
        Trainer(longer, run, resume=True, data_root=data_root, config_file=user_file)
    assert user_file.read_text() == text
    # ... and the same config resumes, the file untouched.
    Trainer(load_config(user_file), run, resume=True, data_root=data_root, config_file=user_file)
    assert user_file.read_text() == text


def test_resume_drops_a_torn_last_metrics_line(
    tmp_path: Path, data_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        "protonet",
        steps=4,
        **{"data": {"train_set": "background", "val_set": None}},
    )
    run = tmp_path / "run"
    train(config, run, data_root, "steps=2")
    metrics = run / "metrics.jsonl"
    with metrics.open("a") as handle:
        handle.write('{"phase": "train", "step": 3, "lo')  # a full disk cut this append
    with caplog.at_level(logging.WARNING):
        train(config, run, data_root, resume=True)
    assert "dropped 1 incomplete line" in caplog.text
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_sidecar_checksum_and_tensor_file_name(tmp_path: Path, data_root: Path) -> None:
    config = write_config(tmp_path / "c.yaml", "protonet", steps=3)
    run = tmp_path / "run"
    train(config, run, data_root)
    sidecar_path = run / "last.json"
    original = json.loads(sidecar_path.read_text())

    edited = original | {"step": 2}
    sidecar_path.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match=r"last.json was changed or damaged after it was"):
        load_checkpoint(sidecar_path)

    (tmp_path / "elsewhere.safetensors").write_bytes(b"")
    for name in ("../elsewhere.safetensors", str(tmp_path / "elsewhere.safetensors")):
        pointing_out = {k: v for k, v in original.items() if k != "sidecar_sha256"}
        sidecar_path.write_text(json.dumps(pointing_out | {"tensors": name}))
        with pytest.raises(CheckpointError, match=r"not a \.safetensors file in its own folder"):
            load_checkpoint(sidecar_path)


def test_old_sidecar_without_its_own_checksum_loads_with_a_warning(
    tmp_path: Path,
    data_root: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path / "c.yaml", "protonet", steps=1)
    run = tmp_path / "run"
    train(config, run, data_root)
    sidecar = json.loads((run / "last.json").read_text())
    del sidecar["sidecar_sha256"]
    (run / "last.json").write_text(json.dumps(sidecar))
    monkeypatch.setattr(checkpoint_module, "_warned_unsigned", False)
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(run / "last.json").step == 1
        load_checkpoint(run / "last.json")
    assert caplog.text.count("has no checksum of its own") == 1


def test_truncated_tensor_file_names_the_intact_checkpoints(
    tmp_path: Path, data_root: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", "protonet", steps=4)
    run = tmp_path / "run"
    train(config, run, data_root)
    best = load_checkpoint(run / "best.json").step
    tensor_file = run / json.loads((run / "last.json").read_text())["tensors"]
    tensor_file.write_bytes(tensor_file.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(run / "last.json")
    message = str(info.value)
    assert f"{tensor_file} is truncated or corrupt (its SHA-256 does not match" in message
    assert f"resume from an earlier checkpoint: {run / 'best.json'} (step {best})" in message
    # The advice works: a copy of best.json resumes from its step to the end.
    (run / "last.json").write_text((run / "best.json").read_text())
    train(config, run, data_root, resume=True)
    assert load_checkpoint(run / "last.json").step == 4


def test_non_finite_loss_keeps_the_last_checkpoint_whose_weights_gave_a_finite_loss(
    tmp_path: Path, data_root: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", "protonet", steps=6)
    run = tmp_path / "run"
    trainer = Trainer(load_config(config), run, data_root=data_root)
    compute = trainer.learner.compute_meta_gradients
    calls = 0

    def poisoned(batch: object) -> MetaMetrics:
        nonlocal calls
        calls += 1
        metrics = compute(batch)  # type: ignore[arg-type]
        return dataclasses.replace(metrics, loss=math.nan) if calls == 4 else metrics

    trainer.learner.compute_meta_gradients = poisoned  # type: ignore[method-assign]
    with pytest.raises(TrainingError) as info:
        trainer.run()
    # The weights after step 3 gave the non-finite loss of step 4: the good checkpoint is 2.
    assert f"The last good checkpoint is {run / 'last.json'} (step 2)." in str(info.value)
    assert load_checkpoint(run / "last.json").step == 2
    # It holds exactly the state an uninterrupted 2-step run ends with.
    train(config, tmp_path / "two", data_root, "steps=2")
    good, reference = final_tensors(run), final_tensors(tmp_path / "two")
    for key in reference:
        if key.startswith("model/"):
            assert torch.equal(good[key], reference[key]), key
    assert yaml.safe_load((run / "config.yaml").read_text())["steps"] == 6
