"""A MetaNAS run end to end on the command line: train, evaluate (with the architectures the
tasks adapted to), and ``metarch nas adapt`` to a user's support folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from metarch.nas import create_space
from tests.clitools import run_cli

CONFIG = """\
steps: 2
meta_batch: 2
method:
  name: metanas
  options: {steps: 2, eval_steps: 4, eval_architecture_steps: 2, inner_batch_size: 4,
            eval_batch_size: 3, warmup_iterations: 1, prune_every: 1}
model: {name: metanas-search, options: {channels: 4, cells: 2, drop_path: 0.2}}
data: {train_set: background, val_set: null, image_size: 12}
episodes: {ways: 3, shots: 2, queries: 1}
optimizer: {name: sgd, lr: 1.0, groups: {architecture: {lr: 0.6}}}
checkpoint_every: 1
log_every: 1
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    folder = tmp_path_factory.mktemp("metanas")
    config = folder / "c.yaml"
    config.write_text(CONFIG)
    out = folder / "run"
    with pytest.MonkeyPatch.context():
        from metarch.cli.app import main

        with pytest.raises(SystemExit) as info:
            main(
                ["train", "--config", str(config), "--out", str(out), "--data-root", str(data_root)]
            )
    assert info.value.code in (0, None)
    return out


def adapt_args(run: Path, support: Path, out: Path) -> list[str]:
    return ["nas", "adapt", "--run", str(run), "--support", str(support), "--out", str(out)]


def write_support(folder: Path, images_per_class: list[int]) -> Path:
    generator = np.random.default_rng(0)
    for index, count in enumerate(images_per_class):
        (folder / f"class{index}").mkdir(parents=True)
        for image in range(count):
            pixels = (generator.random((20, 20)) * 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"class{index}" / f"{image}.png")
    return folder


def test_evaluation_reports_the_adapted_architectures(
    run: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["evaluate", "--run", str(run), "--data-root", str(data_root), "--dataset", "background"]
    args += ["--ways", "3", "--shots", "1", "--queries", "1", "--episodes", "3"]
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    found = result["architectures"]
    space = create_space("metanas", channels=4, cells=2, image_size=12)
    assert found["space"] == "metanas" and 1 <= found["distinct"] <= 3
    assert sum(share["tasks"] for share in found["most_frequent"]) == 3
    for share in found["most_frequent"]:
        cost = space.cost(space.decode(share["architecture"]), num_classes=3)
        assert (share["parameters"], share["flops"]) == (cost.parameters, cost.flops) > (0, 0)
        assert 0.0 <= share["accuracy"] <= 100.0
    space.decode(found["meta_architecture"])
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "adapted architectures (metanas space)" in out and "MFLOPs" in out


def test_nas_adapt_writes_the_genotype_and_the_adapted_weights(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    support = write_support(tmp_path / "support", [2, 3, 2])
    out = tmp_path / "adapted"
    code, printed, err = run_cli(
        [*adapt_args(run, support, out), "--json"],
        capsys,
    )
    assert code == 0, err
    record = json.loads(printed)
    assert record == {
        **json.loads((out / "architecture.json").read_text()),
        "seconds": record["seconds"],
    }
    assert (out / "architecture.txt").read_text() == record["architecture"] + "\n"
    space = create_space("metanas", channels=4, cells=2, image_size=12)
    genotype = space.decode(record["architecture"])
    assert space.from_json(record["genotype"]) == genotype
    assert record["classes"] == ["class0", "class1", "class2"] and record["support_images"] == 7
    cost = space.cost(genotype, num_classes=3)
    assert (record["parameters"], record["flops"]) == (cost.parameters, cost.flops)
    weights = load_file(str(out / "weights.safetensors"))
    meta = load_file(str(sorted(run.glob("last-*.safetensors"))[-1]))
    adapted = weights["backbone.alpha_normal.1"]
    assert not torch.equal(adapted, meta["model/learner.model.backbone.alpha_normal.1"])
    assert "backbone.kept_normal_0" in weights and "head.weight" in weights
    # With --shots the first images of each class are used.
    code, printed, err = run_cli([*adapt_args(run, support, out), "--shots", "2"], capsys)
    assert code == 0, err
    assert json.loads((out / "architecture.json").read_text())["support_images"] == 6


@pytest.mark.parametrize(
    ("counts", "shots", "message"),
    [
        ([2, 1, 2], "2", "class 'class1' has 1 image(s), fewer than --shots 2"),
        ([2], None, "a task needs at least 2 class folders, found 1"),
        ([1, 1, 1, 1], None, "4 classes, but the run's classifier has 3 outputs"),
    ],
)
def test_nas_adapt_refuses_support_sets_it_cannot_use(
    run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    counts: list[int],
    shots: str | None,
    message: str,
) -> None:
    support = write_support(tmp_path / "support", counts)
    args = adapt_args(run, support, tmp_path / "o")
    code, _, err = run_cli([*args, *(["--shots", shots] if shots else [])], capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_nas_adapt_needs_a_metanas_run(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "steps: 1\nmeta_batch: 1\nmodel: {name: conv4, options: {hidden: 8}}\n"
        "data: {train_set: background, val_set: null}\n"
        "episodes: {ways: 3, shots: 1, queries: 1}\nmethod: {name: protonet}\n"
    )
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["train", "--config", str(config), "--out", str(out), "--data-root", str(data_root)], capsys
    )
    assert code == 0, err
    support = write_support(tmp_path / "support", [1, 1, 1])
    code, _, err = run_cli(["nas", "adapt", "--run", str(out), "--support", str(support)], capsys)
    assert code == 2 and "needs a MetaNAS run" in err


def test_export_writes_an_onnx_model_that_runs_like_pytorch(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime

    out = tmp_path / "model.onnx"
    code, stdout, _ = run_cli(["export", "--run", str(run), "--out", str(out), "--json"], capsys)
    assert code == 0, stdout
    record = json.loads(stdout)
    assert record["max_abs_difference"] < 1e-4 and record["input_shape"] == [1, 12, 12]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(1).random((3, 1, 12, 12), dtype=np.float32)
    (logits,) = session.run(None, {"input": images})
    assert logits.shape == (3, 3)  # any batch; the run's 3 ways

    code, stdout, stderr = run_cli(
        ["export", "--run", str(run), "--out", str(out), "--format", "tflite"], capsys
    )
    assert code != 0 and "only onnx" in stdout + stderr


def test_export_of_one_architecture_keeps_only_its_operations(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole, one = tmp_path / "whole.onnx", tmp_path / "one.onnx"
    assert run_cli(["export", "--run", str(run), "--out", str(whole)], capsys)[0] == 0
    space = create_space("metanas", channels=4, cells=2, in_channels=1, image_size=12)
    architecture = space.encode(space.sample(random.Random(3)))
    code, stdout, _ = run_cli(
        ["export", "--run", str(run), "--arch", architecture, "--out", str(one), "--json"], capsys
    )
    assert code == 0, stdout
    record = json.loads(stdout)
    assert record["architecture"] == architecture and record["max_abs_difference"] < 1e-4
    discrete = space.build(space.decode(architecture), num_classes=3)
    assert record["parameters"] == sum(p.numel() for p in discrete.parameters())
    assert one.stat().st_size < whole.stat().st_size

    code, stdout, stderr = run_cli(
        ["export", "--run", str(run), "--arch", "not-a-genotype", "--out", str(one)], capsys
    )
    assert code != 0 and "not-a-genotype" in stdout + stderr
