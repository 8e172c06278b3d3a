"""What ``metarch --help`` and friends promise (issue 14.8)."""

from __future__ import annotations

import os
import re
import stat
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import typer

from metarch.cli.app import app
from tests.clitools import run_cli
from tests.fixtures import write_omniglot_set

REPO = Path(__file__).resolve().parents[2]


def all_commands() -> list[list[str]]:
    """The argument path of every command and group (``[]`` is ``metarch`` itself)."""
    found: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def params_of(*path: str) -> dict[str, Any]:
    """Name -> parameter of the command at ``path`` (typer's click parameters)."""
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {p.name: p for p in command.params}


@pytest.mark.parametrize("path", all_commands(), ids=lambda p: " ".join(p) or "metarch")
def test_flags_are_shown_as_flags(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli([*path, "--help"], capsys)
    assert code == 0
    assert "<bool>" not in out and "<list[str]>" not in out


def test_plain_flags_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(["train", "--help"], capsys)
    assert "--resume  " in out and "--set KEY=VALUE" in out
    _, out, _ = run_cli(["evaluate", "--help"], capsys)
    assert "--json  " in out and "--within-alphabet  " in out and "--dataset NAME" in out


def test_every_evaluate_option_has_help() -> None:
    for name, param in params_of("evaluate").items():
        if not param.hidden:
            assert param.help, f"evaluate option {name} has no help"


def test_evaluate_and_data_episodes_share_defaults() -> None:
    evaluate, episodes = params_of("evaluate"), params_of("data", "episodes")
    shared = {"dataset", "ways", "shots", "queries", "seed", "within_alphabet", "data_root"}
    assert shared <= set(evaluate) & set(episodes)
    for name in shared:
        assert evaluate[name].default == episodes[name].default, name
        assert evaluate[name].opts == episodes[name].opts, name
    # --episodes differs on purpose (a picture vs a score), and both help texts say so.
    assert "1000" in str(episodes["count"].help)


def test_description_promises_only_what_exists(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(["--help"], capsys)
    description = re.search(r'^description = "(.*)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert description is not None
    # MetaNAS, H-Meta-NAS and latency measurement exist; their commands are listed.
    for text in (out, description.group(1)):
        assert "MetaNAS" in text and "H-Meta-NAS" in text
    for command in ("hardware", "search", "adapt", "export"):
        assert command in out
    readme = (REPO / "README.md").read_text()
    intro = readme.split("## Quick start")[0]
    # What is not done is said: H-Meta-NAS's unmet target, learned update rules.
    assert "do not yet beat the best manual network" in " ".join(intro.split())
    assert "Learned update rules and learning to search are not" in " ".join(intro.split())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_omniglot_set(tmp_path / "data", "images_background", {"Alpha": 6, "Beta": 5})
    return tmp_path / "data"


def test_set_still_names_a_data_set_with_a_warning(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["data", "episodes", "--data-root", str(root), "--out", str(tmp_path / "g.png")]
    code, out, err = run_cli([*args, "--set", "background", "--queries", "5"], capsys)
    assert code == 0 and "background: 5-way" in out
    assert err == "warning: --set is deprecated here; use --dataset\n"
    code, _, err = run_cli([*args, "--dataset", "background", "--queries", "5"], capsys)
    assert code == 0 and err == ""
    code, _, err = run_cli([*args, "--dataset", "background", "--set", "background:x"], capsys)
    assert code == 2 and "disagree" in err
    split = ["data", "split", "--data-root", str(root), "--set", "background"]
    code, _, err = run_cli([*split, "--part", "a=1", "--out", str(tmp_path / "s")], capsys)
    assert code == 0 and "deprecated" in err and (tmp_path / "s" / "background-a.txt").is_file()


def offline(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("Name or service not known")


def test_download_goes_to_a_chosen_root_never_a_fallback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.delenv("METARCH_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    (tmp_path / "data").mkdir()  # ./data exists: reading falls back to it, downloads do not
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["data", "download", "--dataset", "background"], capsys)
    assert code == 2 and str(tmp_path / "xdg" / "metarch" / "omniglot") in err
    assert not list((tmp_path / "data").iterdir())


def test_download_refuses_a_read_only_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    shared = tmp_path / "shared"
    shared.mkdir()
    mode = shared.stat().st_mode
    shared.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        for args in (["--data-root", str(shared)], []):
            if not args:
                monkeypatch.setenv("METARCH_DATA", str(shared))
            code, _, err = run_cli(["data", "download", *args], capsys)
            assert code == 2
            assert err.startswith(f"error: {shared / 'omniglot'} is read-only")
            assert "pass --data-root DIR with a folder you can write to" in err
            assert err.count("\n") == 1
        assert os.listdir(shared) == []
    finally:
        shared.chmod(mode)


def test_shared_data_is_never_a_download_target(
    shared_data_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code, _, err = run_cli(["data", "download", "--data-root", str(shared_data_root)], capsys)
    assert code == 2 and "is read-only" in err
