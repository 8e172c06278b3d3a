from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from metarch import __version__
from tests.clitools import run_cli
from tests.fixtures import write_omniglot_set


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_omniglot_set(tmp_path / "omniglot", "images_background", {"Alpha": 6, "Beta": 5})
    write_omniglot_set(tmp_path, "images_background_small1", {"Alpha": 3}, as_zip=False)
    return tmp_path


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--version"], capsys)[:2] == (0, f"metarch {__version__}\n")
    code, out, _ = run_cli(["data", "episodes", "--help"], capsys)
    assert code == 0 and "--within-alphabet" in out


def test_info_json(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["data", "info", "--data-root", str(root), "--json"], capsys)
    assert code == 0
    datasets = {d["name"]: d for d in json.loads(out)["datasets"]}
    assert {k: datasets["background"][k] for k in ("alphabets", "classes", "images")} == {
        "alphabets": 2,
        "classes": 11,
        "images": 220,
    }
    assert datasets["background_small1"]["classes"] == 3


def test_info_on_shared_data(shared_data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["data", "info", "--data-root", str(shared_data_root), "--json"], capsys)
    assert code == 0
    datasets = {d["name"]: d for d in json.loads(out)["datasets"]}
    assert (datasets["background"]["alphabets"], datasets["background"]["classes"]) == (30, 964)
    assert datasets["background"]["images"] == 19280
    assert (
        datasets["background_small1"]["alphabets"],
        datasets["background_small1"]["classes"],
    ) == (5, 136)
    assert (
        datasets["background_small2"]["alphabets"],
        datasets["background_small2"]["classes"],
    ) == (5, 156)


def test_episodes_png(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "grid.png"
    args = ["data", "episodes", "--data-root", str(root), "--set", "background", "--ways", "5"]
    args += ["--shots", "1", "--queries", "5", "--out", str(out_file), "--within-alphabet"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    with Image.open(out_file) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_split_command_writes_split_files(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["data", "split", "--data-root", str(root), "--part", "train=-1", "--part", "test=1"]
    code, _, err = run_cli([*args, "--out", str(tmp_path / "splits")], capsys)
    assert code == 0, err
    train = (tmp_path / "splits" / "background-train.txt").read_text().split()
    test = (tmp_path / "splits" / "background-test.txt").read_text().split()
    assert len(train) + len(test) == 11 and not set(train) & set(test)
    # The written file is a valid --set value.
    grid = tmp_path / "g.png"
    split_args = ["data", "episodes", "--data-root", str(root), "--set"]
    code, _, err = run_cli(
        [
            *split_args,
            str(tmp_path / "splits" / "background-test.txt"),
            "--ways",
            "3",
            "--out",
            str(grid),
        ],
        capsys,
    )
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ways", "50"], "50-way episodes need at least 50 classes"),
        (["--shots", "15", "--queries", "10"], "25 images per class"),
        (["--set", "nothing"], "no data set named 'nothing'"),
        (["--set", "background:holdout"], "has no part 'holdout'"),
        (["--set", "missing.txt"], "split file missing.txt does not exist"),
        (["--out", "grid.jpg"], "--out must name a .png file"),
    ],
)
def test_errors_are_one_line(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = ["data", "episodes", "--data-root", str(root), "--out", str(tmp_path / "g.png")]
    code, _, err = run_cli(base + args, capsys)
    assert code == 2
    assert message in err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "g.png").exists()


def test_missing_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["data", "info", "--data-root", str(tmp_path / "nope")], capsys)
    assert code == 2 and "is not a folder" in err


def test_traceback_only_with_debug(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "metarch", "data", "info", "--data-root", str(tmp_path / "x")]
    plain = subprocess.run(command, capture_output=True, text=True)
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr and plain.stderr.startswith("error: ")
    debug = subprocess.run([*command, "--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_download_offline_fails_fast_with_placement_help(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code, _, err = run_cli(["data", "download", "--data-root", str(tmp_path)], capsys)
    assert code == 2
    assert "images_background.zip, images_evaluation.zip, all_runs.zip" in err
    assert str(tmp_path / "omniglot") in err
    assert not list(tmp_path.rglob("*.zip"))


def test_demo_offline_without_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code, _, err = run_cli(
        ["demo", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "images_background.zip" in err
