from __future__ import annotations

import json
import subprocess
import sys
import zipfile
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
    args = ["data", "episodes", "--data-root", str(root), "--dataset", "background", "--ways", "5"]
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
    # The written file is a valid --dataset value.
    grid = tmp_path / "g.png"
    split_args = ["data", "episodes", "--data-root", str(root), "--dataset"]
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
        (["--dataset", "nothing"], "no data set named 'nothing'"),
        (["--dataset", "background:holdout"], "has no part 'holdout'"),
        (["--dataset", "missing.txt"], "split file missing.txt does not exist"),
        (["--out", "grid.jpg"], "--out must name a .png file"),
        (["--memory-limit", "0"], "--memory-limit must be a positive number of GB"),
        (
            ["--ways", "100", "--episodes", "200"],
            "100-way 1-shot 5-query x 200 episodes would take about 16.2 GB to sample and "
            "draw, over --memory-limit 2 GB: ask for fewer --episodes (--episodes 20 fits) or "
            "--ways, or raise --memory-limit",
        ),
        (["--episodes", "2", "--memory-limit", "0.001"], "even 1 episode is too large"),
    ],
)
def test_errors_are_one_line(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = ["data", "episodes", "--data-root", str(root), "--out", str(tmp_path / "g.png")]
    base += ["--dataset", "background", "--queries", "5"]
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


def test_memory_limit_can_be_raised(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "grid.png"
    args = ["data", "episodes", "--data-root", str(root), "--out", str(out_file)]
    args += ["--dataset", "background", "--queries", "5"]
    code, _, err = run_cli([*args, "--episodes", "40", "--memory-limit", "0.1"], capsys)
    assert code == 2 and "--episodes 20 fits" in err and not out_file.exists()
    code, _, err = run_cli([*args, "--episodes", "40", "--memory-limit", "0.5"], capsys)
    assert code == 0, err
    assert out_file.is_file()


@pytest.fixture
def real_root_with_broken_evaluation(shared_data_root: Path, tmp_path: Path) -> Path:
    """The real background zip (linked) next to a truncated images_evaluation.zip."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "images_background.zip").symlink_to(
        shared_data_root / "omniglot" / "images_background.zip"
    )
    small = (shared_data_root / "omniglot" / "images_background_small1.zip").read_bytes()
    (root / "images_evaluation.zip").write_bytes(small[: len(small) // 3])
    return root


def test_a_truncated_archive_of_another_set_does_not_block_commands(
    real_root_with_broken_evaluation: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    session_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("METARCH_CACHE", str(session_cache))
    root = real_root_with_broken_evaluation
    code, out, err = run_cli(["data", "info", "--data-root", str(root), "--json"], capsys)
    assert code == 0
    datasets = {d["name"]: d for d in json.loads(out)["datasets"]}
    assert (datasets["background"]["classes"], datasets["background"]["images"]) == (964, 19280)
    assert "truncated or corrupt" in datasets["evaluation"]["problem"]
    assert err.startswith("warning: evaluation: ") and "images_evaluation.zip" in err
    grid = tmp_path / "g.png"
    args = ["data", "episodes", "--data-root", str(root), "--out", str(grid)]
    code, out, err = run_cli([*args, "--dataset", "background:train"], capsys)
    assert code == 0, err
    assert grid.is_file() and err == ""
    code, _, err = run_cli([*args, "--dataset", "evaluation"], capsys)
    assert code == 2
    assert err.startswith("error: ") and "images_evaluation.zip is not a readable zip" in err


def test_a_partly_extracted_folder_does_not_shadow_the_real_zip(
    shared_data_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    session_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("METARCH_CACHE", str(session_cache))
    root = tmp_path / "data"
    root.mkdir()
    archive = root / "images_background.zip"
    archive.symlink_to(shared_data_root / "omniglot" / "images_background.zip")
    with zipfile.ZipFile(archive) as source:  # one alphabet extracted, then interrupted
        source.extractall(root, [n for n in source.namelist() if "/Latin/" in n])
    code, out, err = run_cli(["data", "info", "--data-root", str(root), "--json"], capsys)
    assert code == 0 and err == ""
    (background,) = json.loads(out)["datasets"]
    assert (background["alphabets"], background["classes"], background["images"]) == (
        30,
        964,
        19280,
    )
    assert background["path"] == str(archive)
    grid = tmp_path / "g.png"
    args = ["data", "episodes", "--data-root", str(root), "--out", str(grid)]
    code, _, err = run_cli([*args, "--dataset", "background:train"], capsys)
    assert code == 0, err
    # Without the zip the folder is read, with a warning that gives the official counts.
    archive.unlink()
    code, _, err = run_cli([*args, "--dataset", "background", "--ways", "3"], capsys)
    assert code == 0
    assert err.startswith("warning: ") and "holds 1 alphabets, 26 characters and 520 images" in err
    assert "the official background set has 30, 964 and 19,280" in err
