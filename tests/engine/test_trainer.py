from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from metarch.engine.checkpoint import load_checkpoint
from metarch.engine.config import load_config
from metarch.engine.evaluate import load_trained_learner
from metarch.engine.trainer import Trainer, TrainingError
from metarch.errors import ConfigError, DataError
from tests.fixtures import write_omniglot_set, write_small_omniglot

BASE = {
    "seed": 1,
    "steps": 6,
    "meta_batch": 2,
    "model": {"name": "conv4", "options": {"hidden": 8}},
    "data": {"train_set": "background", "val_set": "evaluation", "rotations": True},
    "episodes": {"ways": 3, "shots": 1, "queries": 2},
    "validation": {"every": 3, "episodes": 4},
    "checkpoint_every": 1,
    "log_every": 1,
}
METHODS = {
    "protonet": {"name": "protonet"},
    "maml": {"name": "maml", "options": {"inner_lr": 0.1, "steps": 2}},
    "hmetanas": {
        "name": "hmetanas",
        "options": {"meta_learner": "fomaml", "inner_lr": 0.1, "steps": 2, "sandwich": 3},
    },
}
SUPERNET = {"model": {"name": "elastic-conv-supernet", "options": {"channels": 4, "max_depth": 2}}}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_omniglot(tmp_path_factory.mktemp("data"))


def write_config(path: Path, method: str, **changes: object) -> Path:
    config = json.loads(json.dumps(BASE)) | {"method": METHODS[method]} | changes
    path.write_text(yaml.safe_dump(config))
    return path


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    sidecar = json.loads((run / "last.json").read_text())
    return load_file(run / sidecar["tensors"])


def train(config: Path, run: Path, data_root: Path, *overrides: str, resume: bool = False) -> None:
    trainer = Trainer(load_config(config, overrides), run, resume=resume, data_root=data_root)
    trainer.run()


AUGMENTED = {
    "data": {"train_set": "background", "val_set": "evaluation", "rotations": True}
    | {"augment": {"rotation": 15.0}},
    "model": {"name": "conv4", "options": {"hidden": 8}, "channels_last": True},
}


@pytest.mark.parametrize(
    ("method", "changes"),
    [("maml", {}), ("protonet", {}), ("protonet", AUGMENTED), ("hmetanas", SUPERNET)],
    ids=["maml", "protonet", "protonet-augmented-channels-last", "hmetanas-supernet"],
)
def test_resume_is_bit_identical(
    method: str, changes: dict[str, object], tmp_path: Path, data_root: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", method, **changes)
    train(config, tmp_path / "full", data_root)
    train(config, tmp_path / "split", data_root, "steps=4")
    assert load_checkpoint(tmp_path / "split" / "last.json").step == 4
    train(config, tmp_path / "split", data_root, resume=True)
    full, split = final_tensors(tmp_path / "full"), final_tensors(tmp_path / "split")
    assert full.keys() == split.keys()
    for key in full:
        assert torch.equal(full[key], split[key]), key

    # The training log of the resumed run reads like the uninterrupted one (no duplicates;
    # the shorter first leg adds its own final validation at step 4).
    def train_steps(run: Path) -> list[int]:
        records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
        return [r["step"] for r in records if r["phase"] == "train"]

    assert train_steps(tmp_path / "split") == train_steps(tmp_path / "full") == [1, 2, 3, 4, 5, 6]


def test_resume_after_sigkill_is_bit_identical(tmp_path: Path, data_root: Path) -> None:
    config = write_config(tmp_path / "c.yaml", "maml", steps=40)
    train(config, tmp_path / "full", data_root)
    run = tmp_path / "killed"
    command = [sys.executable, "-m", "metarch", "train", "--config", str(config)]
    command += ["--out", str(run), "--data-root", str(data_root)]
    # Bit-identical needs the same thread count (reduction order) as the in-process runs.
    env = os.environ | {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            sidecar = run / "last.json"
            if sidecar.exists() and json.loads(sidecar.read_text())["step"] >= 5:
                break
            if process.poll() is not None:
                error = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"training ended early: {error}")
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    killed_at = load_checkpoint(run / "last.json").step
    assert 5 <= killed_at < 40
    train(config, run, data_root, resume=True)
    full, resumed = final_tensors(tmp_path / "full"), final_tensors(run)
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    # No stray tensor files are left from the interrupted writes.
    assert len(list(run.glob("last-*.safetensors"))) == 1


def test_a_compute_budget_ends_the_run_at_a_checkpoint_that_resumes_bit_identically(
    tmp_path: Path, data_root: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", "maml", checkpoint_every=4)
    train(config, tmp_path / "full", data_root)
    run = tmp_path / "budget"
    trainer = Trainer(load_config(config, ["budget.cpu_seconds=1e-9"]), run, data_root=data_root)
    trainer.run()
    # The first step spends the budget: it is validated and saved as the final checkpoint,
    # although it is not a checkpoint step.
    assert (trainer.stopped_by, trainer.step) == ("budget.cpu_seconds", 1)
    checkpoint = load_checkpoint(run / "last.json")
    assert checkpoint.step == 1
    assert checkpoint.metrics["cpu_seconds"] > 0 and "val_accuracy" in checkpoint.metrics
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [(r["phase"], r["step"]) for r in records] == [("train", 1), ("val", 1)]
    assert records[0]["stopped_by"] == "budget.cpu_seconds"

    # Resuming under the spent budget would train nothing: refused, naming the key.
    with pytest.raises(TrainingError, match=r"--set budget\.cpu_seconds=MORE"):
        train(config, run, data_root, "budget.cpu_seconds=1e-9", resume=True)
    # Raised, the run goes on exactly as if it had never stopped; time keeps adding up.
    train(config, run, data_root, "budget.wall_seconds=1e6", resume=True)
    full, resumed = final_tensors(tmp_path / "full"), final_tensors(run)
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    final = load_checkpoint(run / "last.json")
    assert final.step == 6
    assert final.metrics["cpu_seconds"] > checkpoint.metrics["cpu_seconds"]


def test_run_directory_contents(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "run"
    train(write_config(tmp_path / "c.yaml", "protonet"), run, data_root, "seed=3")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["seed"] == 3 and saved["steps"] == 6
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    validations = [r for r in records if r["phase"] == "val"]
    assert [r["step"] for r in validations] == [3, 6]
    assert all(0 <= r["accuracy"] <= 100 and r["ci95"] >= 0 for r in validations)
    assert (run / "best.json").exists() and list((run / "tensorboard").iterdir())


def test_final_model_without_validation(tmp_path: Path, data_root: Path) -> None:
    from metarch.engine.evaluate import load_trained_learner

    run = tmp_path / "run"
    train(write_config(tmp_path / "c.yaml", "protonet"), run, data_root, "data.val_set=null")
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert records and all(r["phase"] == "train" for r in records)
    assert (run / "last.json").exists() and not (run / "best.json").exists()
    # Evaluation's default checkpoint (best) falls back to last.
    model = load_trained_learner(run)
    assert model.config.data.val_set is None and not model.learner.training
    assert model.checkpoint == run / "last.json" and model.step == model.config.steps


def test_existing_run_needs_resume(tmp_path: Path, data_root: Path) -> None:
    config = write_config(tmp_path / "c.yaml", "protonet", steps=1)
    train(config, tmp_path / "run", data_root)
    with pytest.raises(TrainingError, match="pass --resume"):
        train(config, tmp_path / "run", data_root)
    with pytest.raises(TrainingError, match="differs from the saved one in seed"):
        train(config, tmp_path / "run", data_root, "seed=9", resume=True)


def test_resume_accepts_a_config_saved_before_newer_keys(tmp_path: Path, data_root: Path) -> None:
    # A run saved by an older metarch lacks keys added since (they take their defaults),
    # and without a validation set its validation settings mean nothing.
    config = write_config(tmp_path / "c.yaml", "protonet", steps=3)
    run = tmp_path / "run"
    train(config, run, data_root, "steps=2", "data.val_set=null")
    sidecar_path = run / "last.json"
    sidecar = json.loads(sidecar_path.read_text())
    del sidecar["sidecar_sha256"]  # nor did it write a checksum of the sidecar
    del sidecar["config"]["optimizer"]["schedule"], sidecar["config"]["optimizer"]["lr_final"]
    sidecar["config"]["validation"]["every"] = 1000
    sidecar_path.write_text(json.dumps(sidecar))
    train(config, run, data_root, "data.val_set=null", resume=True)
    assert load_checkpoint(sidecar_path).step == 3
    with pytest.raises(TrainingError, match="differs from the saved one in optimizer"):
        train(config, run, data_root, "data.val_set=null", "optimizer.lr=0.5", resume=True)


def test_resume_refuses_a_new_length_under_an_annealed_schedule(
    tmp_path: Path, data_root: Path
) -> None:
    # A linear rate depends on the run's length: a longer resumed run is another run.
    config = write_config(tmp_path / "c.yaml", "protonet", steps=3)
    annealed = ("optimizer.schedule=linear", "data.val_set=null")
    train(config, tmp_path / "run", data_root, *annealed)
    with pytest.raises(TrainingError, match="differs from the saved one in steps"):
        train(config, tmp_path / "run", data_root, *annealed, "steps=5", resume=True)


def test_validation_classes_must_not_be_trained_on(tmp_path: Path, data_root: Path) -> None:
    config = write_config(tmp_path / "c.yaml", "protonet", steps=1)
    with pytest.raises(TrainingError, match=r"shares 7 classes with data.train_set.*disjoint"):
        train(config, tmp_path / "run", data_root, "data.val_set=background")
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_non_finite_loss_stops_without_saving_the_weights_that_caused_it(
    tmp_path: Path, data_root: Path
) -> None:
    # Step 1's update makes step 2's meta-gradient non-finite: step 1's checkpoint, due
    # before that was known, is not written (tests/engine/test_run_directory.py: a later stop
    # keeps the checkpoint before it).
    config = write_config(tmp_path / "c.yaml", "maml", steps=30)
    run = tmp_path / "run"
    trainer = Trainer(load_config(config, ["optimizer.lr=1e6"]), run, data_root=data_root)
    with pytest.raises(TrainingError, match=r"non-finite at step 2.*No checkpoint had been"):
        trainer.run()
    assert not (run / "last.json").exists()


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("steps: 3\nmethod: {name: maml, options: {inner_lrr: 0.1}}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: method.options.inner_lrr: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"episodes.ways: must be >= 2, got 1"):
        load_config(None, ["episodes.ways=1"])
    with pytest.raises(ConfigError, match="--set takes KEY=VALUE"):
        load_config(None, ["steps"])
    with pytest.raises(ConfigError, match=r"data.augment.rotation: must be <= 180, got 400"):
        load_config(None, ["data.augment.rotation=400"])
    with pytest.raises(ConfigError, match=r"data.augment.flipped: unknown key"):
        load_config(None, ["data.augment.flipped=true"])
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_two_processes_match_one(tmp_path: Path, data_root: Path) -> None:
    # SGD, not Adam: Adam rescales the rounding noise in the (zero in exact arithmetic)
    # gradients of convolution biases that batch norm cancels into full-size steps.
    optimizer = {"name": "sgd", "lr": 0.1}
    config = write_config(tmp_path / "c.yaml", "maml", steps=3, meta_batch=4, optimizer=optimizer)
    train(config, tmp_path / "one", data_root)
    command = [sys.executable, "-m", "metarch", "train", "--config", str(config), "--nproc", "2"]
    command += ["--out", str(tmp_path / "two"), "--data-root", str(data_root)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    one, two = final_tensors(tmp_path / "one"), final_tensors(tmp_path / "two")
    for key in one:
        if key.startswith("model/"):
            assert torch.allclose(one[key], two[key], rtol=1e-4, atol=1e-6), key
    assert not torch.equal(one["model/model.head.weight"], load_file_initial(tmp_path / "two"))


def load_file_initial(run: Path) -> torch.Tensor:
    """The head weight a fresh learner starts from (the run must have moved away from it)."""
    from metarch.engine.build import build_learner

    config = load_config(run / "config.yaml")
    learner = build_learner(config, (1, 28, 28))
    weight: torch.Tensor = learner.state_dict()["model.head.weight"]
    return weight


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[2].glob("configs/*.yaml")))
def test_shipped_configs_are_valid(path: Path) -> None:
    config = load_config(path)
    if "-metanas-" in path.stem:
        # <set>-metanas[-variant]-<ways>w<K>s: a relaxed cell space (NAS-Bench-201's for
        # -nb201-, else MetaNAS's), meta-trained on 15 support shots per class (the
        # reference), validated on the named task.
        space = "nasbench201-search" if "-nb201-" in path.stem else "metanas-search"
        assert (config.method.name, config.model.name) == ("metanas", space)
        task_ways, task_shots = map(int, path.stem.rsplit("-", 1)[1].rstrip("s").split("w"))
        episode = config.validation_episode
        assert (episode.ways, episode.shots) == (task_ways, task_shots)
        assert (config.episodes.ways, config.episodes.shots) == (task_ways, 15)
        return
    if path.stem.startswith("tiny-imagenet-fs-"):
        # tiny-imagenet-fs-<method>-<backbone>[-<variant>]-5w<K>s: validated and tested 5-way
        # K-shot on the frozen class split, 3-channel normalised images.
        # Supernet learners name their space.
        method = config.method.name
        assert path.stem.startswith(f"tiny-imagenet-fs-{method}-")
        named, task = path.stem.removeprefix(f"tiny-imagenet-fs-{method}-").rsplit("-", 1)
        backbone = named.split("-")[0]
        supernets = {"elastic": "elastic-conv-supernet", "nb201": "nasbench201-supernet"}
        assert config.model.name.removesuffix("-strided") == supernets.get(backbone, backbone)
        shots = int(task.split("w")[1].rstrip("s"))
        assert (config.validation_episode.ways, config.validation_episode.shots) == (5, shots)
        assert config.episodes.shots == shots
        assert config.data.train_set == "tiny_imagenet_fs_background:train"
        assert config.data.val_set == "tiny_imagenet_fs_background:val"
        assert config.data.normalize and not config.data.rotations
        return
    assert path.stem.startswith(f"omniglot-{config.method.name}-")
    if path.stem.endswith("-lake"):
        assert config.episodes.within_alphabet and config.episodes.ways == 20
    else:
        ways = int(path.stem.rsplit("-", 1)[1].split("w")[0])
        # A final model (no validation set) is named by its test task; training may use
        # more ways than it is tested on.
        if config.data.val_set is None:
            assert config.episodes.ways >= ways
        else:
            assert config.validation_episode.ways == ways


def test_parameter_groups_train_with_their_own_rates_and_resume(
    tmp_path: Path, data_root: Path
) -> None:
    """Meta-SGD's learned rates meta-learned 10x slower than the weights, by config."""
    groups = {"groups": {"inner_optimizer": {"lr": 0.0001}}}
    config = write_config(tmp_path / "c.yaml", "maml", optimizer={"lr": 0.001, **groups}, steps=4)
    data = yaml.safe_load(config.read_text())
    data["method"] = {"name": "metasgd", "options": {"inner_lr": 0.1, "steps": 1}}
    config.write_text(yaml.safe_dump(data))
    trainer = Trainer(load_config(config), tmp_path / "full", data_root=data_root)
    lrs = {g["group"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {"weights": 0.001, "inner_optimizer": 0.0001}
    trainer.run()
    train(config, tmp_path / "split", data_root, "steps=2")
    train(config, tmp_path / "split", data_root, resume=True)
    full, split = final_tensors(tmp_path / "full"), final_tensors(tmp_path / "split")
    for key in full:
        assert torch.equal(full[key], split[key]), key
    with pytest.raises(TrainingError, match="no parameter group 'architecture'; its groups"):
        train(config, tmp_path / "bad", data_root, "optimizer.groups={architecture: {lr: 0.1}}")


def test_a_truncated_archive_of_another_set_does_not_stop_training(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_omniglot_set(root, "images_background", {"Alpha": 4, "Beta": 3}, drawings=6)
    broken = write_omniglot_set(root, "images_evaluation", {"Gamma": 4}, drawings=6, first_id=100)
    broken.write_bytes(broken.read_bytes()[:2000])
    data = {"train_set": "background", "val_set": None, "rotations": False}
    config = write_config(tmp_path / "c.yaml", "protonet", steps=1, data=data)
    train(config, tmp_path / "run", root)
    assert load_checkpoint(tmp_path / "run" / "last.json").step == 1
    # Validating on the broken set is what fails, naming it.
    config = write_config(
        tmp_path / "c.yaml", "protonet", steps=1, data=data | {"val_set": "evaluation"}
    )
    with pytest.raises(DataError, match=r"images_evaluation\.zip is not a readable zip"):
        train(config, tmp_path / "run2", root)


def test_configs_name_registered_components_in_a_fresh_interpreter() -> None:
    # Learners and backbones registered outside metarch.meta/models (MetaNAS in metarch.nas)
    # must be known to load_config alone.
    import subprocess
    import sys

    config = Path(__file__).resolve().parents[2] / "configs" / "omniglot-metanas-20w1s.yaml"
    code = f"from metarch.engine.config import load_config; load_config({str(config)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_a_run_starts_from_another_runs_backbone_and_then_stands_alone(
    tmp_path: Path, data_root: Path
) -> None:
    source = tmp_path / "protonet"
    train(write_config(tmp_path / "p.yaml", "protonet"), source, data_root)
    saved = load_checkpoint(source / "best.json").model_state
    config = write_config(
        tmp_path / "m.yaml", "maml", model={"name": "conv4", "options": {"hidden": 8}}
    )
    trainer = Trainer(
        load_config(config, [f"model.init={source}"]), tmp_path / "m", data_root=data_root
    )
    learner = trainer.learner.state_dict()
    backbone = [key for key in learner if key.startswith("model.backbone.")]
    assert backbone
    for key in backbone:  # the protonet's model is its backbone
        torch.testing.assert_close(
            learner[key], saved["model." + key.removeprefix("model.backbone.")]
        )
    fresh = Trainer(load_config(config), tmp_path / "fresh", data_root=data_root)
    torch.testing.assert_close(
        learner["model.head.weight"], fresh.learner.state_dict()["model.head.weight"]
    )
    fresh.close()
    trainer.run()
    # The run's weights are its own: resuming and evaluating never read the source again.
    shutil.rmtree(source)
    train(config, tmp_path / "m", data_root, f"model.init={source}", "steps=8", resume=True)
    assert load_checkpoint(tmp_path / "m" / "last.json").step == 8
    assert load_trained_learner(tmp_path / "m", "last").step == 8


def test_a_backbone_of_another_model_or_no_run_is_refused(tmp_path: Path, data_root: Path) -> None:
    source = tmp_path / "protonet"
    train(write_config(tmp_path / "p.yaml", "protonet"), source, data_root)
    wider = write_config(
        tmp_path / "m.yaml", "maml", model={"name": "conv4", "options": {"hidden": 16}}
    )
    with pytest.raises(ConfigError, match=r"holds no backbone like this config's \(model conv4"):
        Trainer(load_config(wider, [f"model.init={source}"]), tmp_path / "m", data_root=data_root)
    with pytest.raises(ConfigError, match=r"model\.init: "):
        Trainer(
            load_config(wider, [f"model.init={tmp_path / 'nowhere'}"]),
            tmp_path / "n",
            data_root=data_root,
        )
    assert not (tmp_path / "m").exists() and not (tmp_path / "n").exists()
