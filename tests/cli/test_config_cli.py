"""``metarch config keys`` and what ``metarch train`` says about a bad config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metarch.meta.base import META_LEARNERS
from metarch.models.registry import MODELS
from tests.clitools import run_cli
from tests.fixtures import write_small_omniglot


def keys_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, dict[str, object]]:
    code, out, err = run_cli(["config", "keys", "--json", *args], capsys)
    assert code == 0, err
    return {f"{k['when']} {k['key']}".strip(): k for k in json.loads(out)["keys"]}


def test_keys_list_every_key_with_type_default_and_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = keys_json(capsys)
    assert keys["steps"] == {
        "key": "steps",
        "type": "int",
        "range": ">= 1",
        "default": 1000,
        "required": False,
        "help": "Meta-training steps.",
        "when": "",
    }
    assert keys["optimizer.lr"]["range"] == "> 0"
    assert keys["data.augment.padding"]["type"] == "'zeros' | 'border' | 'reflection'"
    assert keys["optimizer.groups.NAME.lr"]["type"] == "float | null"
    maml_lr = keys["method.name=maml method.options.inner_lr"]
    assert (maml_lr["type"], maml_lr["range"], maml_lr["default"]) == ("float", "> 0", 0.4)
    assert maml_lr["help"] == "Inner learning rate (initial value where it is learned)."
    betas = keys["method.name=reptile method.options.betas"]
    assert (betas["type"], betas["range"], betas["default"]) == (
        "tuple[float, float]",
        ">= 0, < 1",
        [0.0, 0.999],
    )
    assert keys["model.name=conv4 model.options.hidden"]["default"] == 64
    # Options a variant fixes are not its keys.
    assert "method.name=fomaml method.options.first_order" not in keys
    # Every key of every registered learner and backbone is listed, and documented.
    for name in META_LEARNERS.names():
        for option in META_LEARNERS.options(name, skip=1):
            assert f"method.name={name} method.options.{option.name}" in keys
    for name in MODELS.names():
        for option in MODELS.options(name):
            assert f"model.name={name} model.options.{option.name}" in keys
    undocumented = [name for name, key in keys.items() if not key["help"]]
    assert not undocumented


def test_keys_of_one_method_and_model(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a terminal wide enough not to fold the keys
    keys = keys_json(capsys, "--method", "reptile", "--model", "mlp")
    assert {k["when"] for k in keys.values()} == {"", "method.name=reptile", "model.name=mlp"}
    code, out, err = run_cli(["config", "keys", "--method", "maml", "--model", "conv4"], capsys)
    assert code == 0, err
    assert "Options with method.name=maml" in out and "method.options.inner_lr" in out
    assert "dict[str, any]" in out  # brackets are text, not rich markup
    code, _, err = run_cli(["config", "keys", "--method", "mamll"], capsys)
    assert code == 2 and "did you mean 'maml'?" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_omniglot(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("steps: -1\n", "steps: must be >= 1, got -1"),
        (
            "method: {name: maml, options: {inner_lr: -1e-1}}\n",
            "method.options.inner_lr: must be > 0, got -0.1",
        ),
        ("method: {name: reptile, options: {steps: -1}}\n", "method.options.steps: must be >= 0"),
        ("optimizer: {lr: 0}\n", "optimizer.lr: must be > 0, got 0"),
        ("meta_batch: 0\n", "meta_batch: must be >= 1, got 0"),
        ("method: {name: maml, options: {inner_lrr: 1e-3}}\n", "did you mean 'inner_lr'?"),
        (
            "method: {name: reptile, options: {inner_optimizer: sgd, adam_state: sequential}}\n",
            "method.options: adam_state='sequential' needs inner_optimizer='adam'",
        ),
    ],
)
def test_train_reports_a_bad_config_in_one_line(
    config: str,
    message: str,
    tmp_path: Path,
    data_root: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "c.yaml"
    data = "data: {train_set: background, val_set: evaluation}\nepisodes: {ways: 3, queries: 2}\n"
    path.write_text(config + data)
    args = ["train", "--config", str(path), "--out", str(tmp_path / "run")]
    code, out, err = run_cli([*args, "--data-root", str(data_root)], capsys)
    assert code == 2
    assert message in err and "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1
