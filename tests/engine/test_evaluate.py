from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from metarch.data.resolve import load_pool
from metarch.engine.config import load_config
from metarch.engine.evaluate import (
    EvaluationResult,
    check_state_fits,
    evaluate_episodes,
    load_trained_learner,
    trained_classes_in,
)
from metarch.engine.trainer import Trainer
from metarch.errors import ConfigError, EpisodeError
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
    args = ["evaluate", "--run", str(run), "--data-root", str(root), "--dataset", "evaluation"]
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
    args = ["evaluate", "--run", str(run), "--data-root", str(root), "--dataset", "background"]
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


def _strict_json(text: str) -> dict[str, object]:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    result: dict[str, object] = json.loads(text, parse_constant=refuse)
    return result


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--queries", "0"),
        ("--episodes", "0"),
        ("--queries", "-2"),
        ("--episodes", "-1"),
        ("--ways", "0"),
        ("--shots", "-1"),
    ],
)
def test_empty_or_negative_requests_are_errors(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    root, run = trained
    args = ["evaluate", "--run", str(run), "--data-root", str(root), "--dataset", "evaluation"]
    code, out, err = run_cli(
        [*args, "--ways", "3", "--queries", "2", option, value, "--json"], capsys
    )
    assert code == 2 and out == ""
    assert err == f"error: {option} must be at least 1, got {value}\n"


def test_library_refuses_empty_evaluations(trained: tuple[Path, Path]) -> None:
    root, run = trained
    model = load_trained_learner(run)
    learner = model.learner
    with pytest.raises(EpisodeError, match="at least 1 episode, got 0"):
        evaluate_episodes(
            learner, "evaluation", root, image_size=28, ways=3, shots=1, queries=2, episodes=0
        )
    with pytest.raises(EpisodeError, match="at least 1 query per class"):
        evaluate_episodes(
            learner, "evaluation", root, image_size=28, ways=3, shots=1, queries=0, episodes=2
        )


def test_json_is_strict_and_names_the_checkpoint(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, run = trained
    args = ["evaluate", "--run", str(run), "--data-root", str(root), "--dataset", "evaluation"]
    args += ["--ways", "3", "--queries", "2", "--episodes", "3"]
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    result = _strict_json(out)
    assert (result["checkpoint"], result["step"]) == (str(run / "best.json"), 3)
    code, out, _ = run_cli([*args, "--checkpoint", "last"], capsys)
    assert code == 0 and f"{run / 'last.json'}, step 3)" in out
    # A result that is not a number is null, never a bare NaN.
    nan = EvaluationResult(accuracy=float("nan"), ci95=float("inf"), episodes=1).to_json()
    assert _strict_json(json.dumps(nan, allow_nan=False)) == {
        "accuracy": None,
        "ci95": None,
        "episodes": 1,
    }


def test_evaluating_on_trained_classes_warns(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, run = trained  # trained on "background"
    base = ["evaluate", "--run", str(run), "--data-root", str(root), "--ways", "3"]
    base += ["--queries", "2", "--episodes", "2"]
    code, out, err = run_cli([*base, "--dataset", "background"], capsys)
    assert code == 0 and "accuracy" in out
    assert err.startswith("warning: background shares 11 of its 11 classes with the training set")
    assert "'background' (e.g. Alpha/character01)" in err
    code, _, err = run_cli([*base, "--dataset", "evaluation"], capsys)
    assert code == 0 and err == ""


def test_trained_classes_in_named_splits(trained: tuple[Path, Path]) -> None:
    root, _ = trained
    pool = load_pool("background", root)
    assert len(trained_classes_in(pool, "background", "background", root, image_size=28)) == 11
    # Sets that cannot share classes are not even loaded; a missing training set is no overlap.
    assert trained_classes_in(pool, "background", "evaluation", root, image_size=28) == []
    assert trained_classes_in(pool, "background", "background_small1", root, image_size=28) == []


def test_checkpoint_that_does_not_match_its_config(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, run = trained
    edited = Path(shutil.copytree(run, tmp_path / "run"))
    config = yaml.safe_load((edited / "config.yaml").read_text())
    config["model"]["options"]["hidden"] = 16
    (edited / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["evaluate", "--run", str(edited), "--data-root", str(root), "--dataset", "evaluation"]
    code, _, err = run_cli([*args, "--ways", "3", "--queries", "2", "--episodes", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        f"error: checkpoint {edited / 'best.json'} does not match the model "
        f"{edited / 'config.yaml'} builds: tensor 'model.blocks.0.0.weight' is 8x1x3x3 in the "
        "checkpoint but 16x1x3x3 in the model ("
    )


def test_check_state_fits_names_missing_and_extra_tensors() -> None:
    model = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ConfigError, match=r"the model's tensor 'b' \(3\) is missing"):
        check_state_fits(model, {"a": torch.zeros(2)}, Path("c.json"), Path("config.yaml"))
    extra = {**model, "c": torch.zeros(1, 2)}
    with pytest.raises(ConfigError, match=r"it holds tensor 'c' \(1x2\), which the model lacks"):
        check_state_fits(model, extra, Path("c.json"), Path("config.yaml"))
    check_state_fits(model, dict(model), Path("c.json"), Path("config.yaml"))


def test_lake_runs_extracted_into_the_data_root(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = trained
    root = tmp_path / "root"
    write_lake_runs(tmp_path, None, as_zip=False, same_drawing=True).rename(root)  # run01/ ...
    args = ["evaluate", "--run", str(run), "--protocol", "lake-runs", "--data-root", str(root)]
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    result = _strict_json(out)
    assert result["error_percent"] == 0.0 and result["step"] == 3


def test_evaluation_may_change_only_how_the_learner_adapts(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = trained
    config = {
        "steps": 2,
        "method": {"name": "reptile", "options": {"steps": 2, "eval_steps": 3}},
        "model": {"name": "conv4", "options": {"hidden": 8}},
        "data": {"train_set": "background", "val_set": None},
        "episodes": {"ways": 3, "shots": 1, "queries": 2},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    Trainer(load_config(path), run, data_root=root).run()
    args = ["evaluate", "--run", str(run), "--data-root", str(root), "--dataset", "evaluation"]
    args += ["--ways", "3", "--queries", "2", "--episodes", "6", "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    plain = json.loads(out)
    code, out, err = run_cli([*args, "--set", "method.options.eval_steps=0"], capsys)
    assert code == 0, err
    unadapted = json.loads(out)
    assert unadapted["settings"] == ["method.options.eval_steps=0"] and "settings" not in plain
    assert unadapted["accuracy"] != plain["accuracy"]
    # What was trained cannot change at evaluation, and unknown settings are named.
    code, _, err = run_cli([*args, "--set", "method.options.steps=5"], capsys)
    assert code == 2 and "evaluation may change only how the trained learner adapts" in err
    code, _, err = run_cli([*args, "--set", "method.options.eval_step=5"], capsys)
    assert code == 2 and "eval_step" in err
    # The old spelling --set NAME still picks the data set.
    code, out, err = run_cli([*args[:5], "--set", "evaluation", *args[7:]], capsys)
    assert code == 0 and "deprecated" in err
