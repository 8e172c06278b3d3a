"""The Omniglot table script folds parallel runs' rows into one table."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from tests.benchmarks import load_script


def _load_script() -> ModuleType:
    return load_script("omniglot")


def test_merge_replaces_a_configs_rows_in_place_and_keeps_noted_rows(tmp_path: Path) -> None:
    table = tmp_path / "omniglot.json"
    old = [
        {"config": "a", "task": "5-way", "accuracy": 1.0},
        {"config": "b", "task": "5-way", "accuracy": 2.0},
        {"config": "b", "task": "5-way", "accuracy": 3.0, "note": "earlier run"},
        {"config": "c", "task": "5-way", "accuracy": 4.0},
    ]
    table.write_text(json.dumps({"rows": old, "commands": ["python first"]}))
    new = [{"config": "b", "task": "5-way", "accuracy": 9.0}, {"config": "b", "task": "x"}]

    _load_script().merge_rows(table, new, "python second")
    merged = json.loads(table.read_text())

    assert [row.get("accuracy") for row in merged["rows"]] == [1.0, 9.0, None, 3.0, 4.0]
    assert merged["commands"] == ["python first", "python second"]
    assert not list(tmp_path.glob("*.tmp"))


def test_merge_appends_a_new_config_and_records_a_command_once(tmp_path: Path) -> None:
    table = tmp_path / "omniglot.json"
    table.write_text(json.dumps({"rows": [{"config": "a"}]}))
    script = _load_script()

    script.merge_rows(table, [{"config": "z"}], "python run")
    script.merge_rows(table, [{"config": "z", "accuracy": 5.0}], "python run")
    merged = json.loads(table.read_text())

    assert merged["rows"] == [{"config": "a"}, {"config": "z", "accuracy": 5.0}]
    assert merged["commands"] == ["python run"]


def test_a_classifier_head_is_tested_within_alphabet_only_at_its_own_ways() -> None:
    script = _load_script()
    configs = Path(__file__).resolve().parents[2] / "configs"
    assert script.tasks_of(configs / "omniglot-fomaml-20w1s.yaml") == [
        (20, 1, False),
        (20, 1, True),
    ]
    assert script.tasks_of(configs / "omniglot-fomaml-5w1s.yaml") == [(5, 1, False)]
    assert (5, 1, False) in script.tasks_of(configs / "omniglot-protonet-20w1s.yaml")
