"""``metarch demo``'s architecture side on the real Omniglot: a supernet searched per budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clitools import run_cli


def test_demo_searches_its_supernet_within_three_budgets(
    shared_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--data-root", str(shared_data_root), "--out", str(out), "--steps", "0"]
    args += ["--nas-steps", "0", "--supernet-steps", "2", "--episodes", "5"]
    code, text, err = run_cli(args, capsys)
    assert code == 0, err
    assert "Sub-networks for torch-cpu budgets" in text
    rows = json.loads((out / "hmetanas" / "budgets.json").read_text())["rows"]
    budgets = [row["budget_ms"] for row in rows]
    assert len(rows) == 3 and budgets == sorted(budgets)
    for row in rows:
        assert row["predicted_ms"] <= row["budget_ms"]
        assert row["measured_ms"] > 0 and 0 <= row["accuracy"] <= 100
    assert not (out / "run").exists() and not (out / "metanas").exists()
