"""Colour images end to end, from the CLI: a zipped RGB set, train, resume, evaluate, TTA."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from metarch.data.folder import load_image_folder
from metarch.data.normalize import ChannelNormalization
from metarch.data.pools import ClassPool
from metarch.engine.checkpoint import load_checkpoint
from tests.clitools import run_cli

CLASSES = 8


def write_rgb_zip(root: Path, name: str = "colours", per_class: int = 6) -> Path:
    """``root/name.zip`` holding ``name/<class>/<i>.jpg``: tinted noise, one grey class."""
    rng = np.random.default_rng(0)
    archive = root / f"{name}.zip"
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as handle:
        for c in range(CLASSES):
            tint = rng.integers(0, 256, 3)
            for i in range(per_class):
                noise = rng.integers(0, 64, (20, 20, 3))
                pixels = np.clip(tint + noise, 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels, mode="RGB")
                if c == 0:
                    image = image.convert("L")  # a greyscale JPEG among colour ones
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG")
                handle.writestr(f"{name}/class{c}/{i}.jpg", buffer.getvalue())
        handle.writestr(f"{name}/classes.tsv", "".join(f"class{c}\tcolour {c}\n" for c in range(8)))
    return archive


@pytest.fixture(scope="module")
def colour_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("colour-data")
    write_rgb_zip(root / "sets")  # one folder down, as ../shared/data/tiny_imagenet_fs/
    return root


def write_config(path: Path, method: str, **changes: object) -> Path:
    config: dict[str, object] = {
        "steps": 4,
        "method": {"name": method},
        "model": {"name": "conv4", "options": {"hidden": 8}, "channels_last": True},
        "data": {
            "train_set": "colours",
            "val_set": None,
            "image_size": 16,
            "rotations": False,
            "normalize": True,
            "augment": {"flip": True, "padding": "reflection"},
        },
        "episodes": {"ways": 3, "shots": 1, "queries": 2},
        "checkpoint_every": 2,
        "log_every": 1,
    }
    config.update(changes)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("method", ["protonet", "maml"])
def test_train_resume_and_evaluate_a_colour_run(
    method: str, colour_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "c.yaml", method)
    data = ["--data-root", str(colour_root)]
    full, split = tmp_path / "full", tmp_path / "split"
    code, _, err = run_cli(["train", "--config", str(config), "--out", str(full), *data], capsys)
    assert code == 0, err
    args = ["train", "--config", str(config), "--out", str(split), *data]
    assert run_cli([*args, "--set", "steps=2"], capsys)[0] == 0
    assert run_cli([*args, "--resume"], capsys)[0] == 0

    # The run records what its model takes: 3 channels, normalised by the training images.
    saved = load_checkpoint(full / "last.json")
    assert saved.inputs["shape"] == [3, 16, 16]
    dataset = load_image_folder(colour_root / "sets" / "colours.zip", image_size=16)
    expected = ChannelNormalization.of_pool(ClassPool.whole(dataset))
    assert saved.inputs["normalization"] == expected.to_json()
    resumed = load_checkpoint(split / "last.json")
    for key, value in saved.model_state.items():
        assert torch.equal(value, resumed.model_state[key]), key

    # Evaluate needs no option about channels or normalisation.
    evaluate = ["evaluate", "--run", str(full), *data, "--dataset", "colours", "--ways", "3"]
    evaluate += ["--shots", "1", "--queries", "2", "--episodes", "6", "--json"]
    code, out, err = run_cli(evaluate, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["episodes"] == 6 and 0 <= result["accuracy"] <= 100
    assert result["step"] == 4 and result["checkpoint"].endswith("last.json")
    code, out, err = run_cli([*evaluate, "--tta", "2"], capsys)
    assert code == 0, err
    assert json.loads(out)["episodes"] == 6


def test_colour_episode_pictures(
    colour_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grid.png"
    args = ["data", "episodes", "--data-root", str(colour_root), "--dataset", "colours"]
    args += ["--queries", "5"]
    code, _, err = run_cli([*args, "--ways", "3", "--image-size", "16", "--out", str(out)], capsys)
    assert code == 0, err
    with Image.open(out) as picture:
        assert picture.mode in ("RGB", "RGBA") and picture.width > 100


def test_evaluate_refuses_images_of_another_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fixtures import write_omniglot_set

    root = tmp_path / "root"
    write_rgb_zip(root)
    write_omniglot_set(root, "images_background", {"Latin": 4}, drawings=4)
    config = write_config(tmp_path / "c.yaml", "protonet", steps=1)
    data = ["--data-root", str(root)]
    run = tmp_path / "run"
    assert run_cli(["train", "--config", str(config), "--out", str(run), *data], capsys)[0] == 0
    evaluate = ["evaluate", "--run", str(run), *data, "--dataset", "background", "--ways", "3"]
    code, _, err = run_cli([*evaluate, "--queries", "2", "--episodes", "2"], capsys)
    assert code == 2
    assert "1x16x16, but the model was trained on 3x16x16 images" in err


def test_too_few_images_per_class_is_named(
    colour_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "c.yaml", "protonet", steps=1)
    args = ["train", "--config", str(config), "--out", str(tmp_path / "r")]
    args += ["--data-root", str(colour_root), "--set", "episodes.queries=9"]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert "1 shots + 9 queries = 10 images per class, but class 'class0" in err
