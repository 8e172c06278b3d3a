from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from metarch.engine.config import load_config
from metarch.engine.trainer import Trainer
from tests.clitools import run_cli
from tests.fixtures import write_lake_runs, write_omniglot_set


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A data root with Omniglot-layout sets and Lake's runs, and a run trained on it."""
    root = tmp_path_factory.mktemp("data")
    write_omniglot_set(root, "images_background", {"Alpha": 6, "Beta": 5}, drawings=6)
    write_omniglot_set(root, "images_evaluation", {"Gamma": 6}, drawings=6, first_id=100)
    write_lake_runs(root, None, same_drawing=True)
    config = {
        "steps": 3,
        "method": {"name": "protonet"},
        "model": {"name": "conv4", "options": {"hidden": 8}},
        "data": {"train_set": "background", "val_set": "evaluation"},
        "episodes": {"ways": 3, "shots": 1, "queries": 2},
        "validation": {"every": 0, "episodes": 4},
    }
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    run = root / "run"
    Trainer(load_config(path), run, data_root=root).run()
    return root, run


def test_evaluate_episodes_json(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, run = trained
    args = ["evaluate", "--run", str(run), "--data-root", str(root), "--set", "evaluation"]
    args += ["--ways", "4", "--shots", "1", "--queries", "2", "--episodes", "10", "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["episodes"] == 10
    assert 0 <= result["accuracy"] <= 100 and result["ci95"] >= 0
    # Same seed, same episodes: the same number twice.
    assert json.loads(run_cli(args, capsys)[1]) == result
    # Test-time augmentation: reproducible, and a different measurement.
    # (80 predictions of a 3-step model: some copy counts land on the same 23 hits.)
    code, out, err = run_cli([*args, "--tta", "5"], capsys)
    assert code == 0, err
    augmented = json.loads(out)
    assert augmented["episodes"] == 10 and augmented != result
    assert json.loads(run_cli([*args, "--tta", "5"], capsys)[1]) == augmented


def test_evaluate_within_alphabet_and_checkpoint_choice(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, run = trained
    args = ["evaluate", "--run", str(run), "--data-root", str(root), "--set", "background"]
    args += ["--ways", "5", "--episodes", "4", "--queries", "1", "--within-alphabet"]
    code, out, err = run_cli([*args, "--checkpoint", "last"], capsys)
    assert code == 0, err
    assert "within-alphabet" in out and "95% CI" in out


def test_evaluate_lake_runs(trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, run = trained
    args = ["evaluate", "--run", str(run), "--protocol", "lake-runs", "--data-root", str(root)]
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert len(result["per_run"]) == 20
    # Queries are the class images themselves here: a prototype classifier gets them right.
    assert result["error_percent"] == pytest.approx(0.0)
    code, out, err = run_cli([*args, "--tta", "2", "--tta-strength", "0.25"], capsys)
    assert code == 0, err
    assert "error" in out and "%" in out


def test_evaluate_errors(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, run = trained
    code, _, err = run_cli(["evaluate", "--run", str(tmp_path), "--data-root", str(root)], capsys)
    assert code == 2 and "not a run directory" in err
    code, _, err = run_cli(
        ["evaluate", "--run", str(run), "--data-root", str(root), "--protocol", "nope"], capsys
    )
    assert code == 2 and "--protocol must be" in err
    base = ["evaluate", "--run", str(run), "--data-root", str(root)]
    code, _, err = run_cli([*base, "--tta", "2", "--tta-strength", "2"], capsys)
    assert code == 2 and "--tta-strength must be in (0, 1]" in err
    code, _, err = run_cli([*base, "--tta", "-1"], capsys)
    assert code == 2 and "--tta must be 0 (off) or a number of copies" in err
    code, _, err = run_cli(
        [
            "evaluate",
            "--run",
            str(run),
            "--data-root",
            str(root),
            "--checkpoint",
            str(tmp_path / "x.json"),
        ],
        capsys,
    )
    assert code == 2 and "no checkpoint" in err
