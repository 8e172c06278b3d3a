"""Bad inputs and everyday faults, as a new user meets them: one table, one test per row.

Every row is a command run on a small synthetic data root (and, where needed, a tiny
trained run), the exit status it must end with, and words its message must hold. Every
row also checks what holds for all of them: no traceback, and an error is one line that
starts with ``error:``. Add a row for every bad input a later change learns to handle.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clitools import run_cli
from tests.fixtures import write_omniglot_set

CONFIG = """\
steps: 2
meta_batch: 2
model: {name: conv4, options: {hidden: 8}}
data: {train_set: background, val_set: null}
episodes: {ways: 3, shots: 1, queries: 2}
method: {name: protonet}
checkpoint_every: 1
log_every: 1
"""


@dataclass(frozen=True)
class Paths:
    """What a row's command may refer to."""

    tmp: Path  # a fresh folder for this row
    data: Path  # an intact synthetic data root
    run: Path  # a finished tiny run (a copy this row may damage)


@dataclass(frozen=True)
class Case:
    """One bad input: how to make it, the command, and what the user must see."""

    id: str
    argv: Callable[[Paths], list[str]]
    words: tuple[str, ...]
    code: int = 2
    stream: str = "err"  # where the words appear
    leaves_nothing: str = ""  # a path below the row's folder that must not exist afterwards


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_with(p: Paths, text: str) -> str:
    return str(write(p.tmp / "bad.yaml", text))


def train(p: Paths, config: str, *more: str) -> list[str]:
    out = ["--out", str(p.tmp / "out"), "--data-root", str(p.data)]
    return ["train", "--config", config, *out, *more]


def evaluate(p: Paths, *more: str) -> list[str]:
    return [
        "evaluate",
        "--run",
        str(p.run),
        "--data-root",
        str(p.data),
        "--dataset",
        "background",
        *more,
    ]


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def checkpoint_tensors(run: Path) -> Path:
    return sorted(run.glob("last-*.safetensors"))[-1]


def broken_evaluation_zip(p: Paths) -> Path:
    root = p.tmp / "data"
    shutil.copytree(p.data, root)
    write_omniglot_set(root, "images_evaluation", {"Gamma": 3}, drawings=4)
    truncate(root / "images_evaluation.zip")
    return root


def wrong_top_folder_zip(p: Paths) -> Path:
    root = p.tmp / "data"
    root.mkdir()
    with zipfile.ZipFile(root / "flowers.zip", "w") as archive:
        archive.writestr("blooms/rose/a.png", b"")
    return root


CASES = [
    # -- configs ------------------------------------------------------------------------
    Case(
        "config file missing",
        lambda p: train(p, str(p.tmp / "nope.yaml")),
        ("nope.yaml",),
    ),
    Case(
        "config is not YAML",
        lambda p: train(p, config_with(p, "steps: [1,\n")),
        ("bad.yaml",),
    ),
    Case(
        "unknown config key",
        lambda p: train(p, config_with(p, CONFIG + "stepz: 3\n")),
        ("stepz", "did you mean 'steps'"),
    ),
    Case(
        "negative steps",
        lambda p: train(p, config_with(p, CONFIG.replace("steps: 2", "steps: -1"))),
        ("steps:",),
    ),
    Case(
        "negative inner learning rate",
        lambda p: train(
            p,
            config_with(
                p,
                CONFIG.replace(
                    "method: {name: protonet}", "method: {name: maml, options: {inner_lr: -0.1}}"
                ),
            ),
        ),
        ("method.options.inner_lr: must be > 0, got -0.1",),
    ),
    Case(
        "misspelt method",
        lambda p: train(p, config_with(p, CONFIG.replace("name: protonet", "name: protonett"))),
        ("protonett", "did you mean"),
    ),
    Case(
        "override without a value",
        lambda p: [*train(p, config_with(p, CONFIG)), "--set", "steps"],
        ("steps",),
    ),
    # -- run directories and the file system -----------------------------------------------
    Case(
        "--out below a file",
        lambda p: [
            "train",
            "--config",
            config_with(p, CONFIG),
            "--out",
            str(write(p.tmp / "afile", "x") / "run"),
            "--data-root",
            str(p.data),
        ],
        ("afile is a file, not a folder",),
    ),
    Case(
        "existing run without --resume",
        lambda p: [
            "train",
            "--config",
            config_with(p, CONFIG),
            "--out",
            str(p.run),
            "--data-root",
            str(p.data),
        ],
        ("--resume",),
    ),
    Case(
        "--resume of a run that does not exist (and leaves no folder behind)",
        lambda p: [
            "train",
            "--config",
            config_with(p, CONFIG),
            "--out",
            str(p.tmp / "never"),
            "--resume",
            "--data-root",
            str(p.data),
        ],
        ("cannot resume",),
        leaves_nothing="never",
    ),
    Case(
        "truncated checkpoint tensors",
        lambda p: (truncate(checkpoint_tensors(p.run)), evaluate(p))[1],
        ("truncated or corrupt",),
    ),
    Case(
        "edited checkpoint sidecar",
        lambda p: (
            write(
                p.run / "last.json",
                (p.run / "last.json").read_text().replace('"steps": 2', '"steps": 3', 1),
            ),
            evaluate(p),
        )[1],
        ("changed or damaged",),
    ),
    Case(
        "evaluate a run that does not exist",
        lambda p: ["evaluate", "--run", str(p.tmp / "nothing"), "--data-root", str(p.data)],
        ("nothing",),
    ),
    # -- evaluation options ----------------------------------------------------------------
    Case(
        "zero queries", lambda p: evaluate(p, "--queries", "0"), ("--queries must be at least 1",)
    ),
    Case(
        "zero episodes",
        lambda p: evaluate(p, "--episodes", "0"),
        ("--episodes must be at least 1",),
    ),
    # -- data --------------------------------------------------------------------------------
    Case(
        "data root that does not exist",
        lambda p: ["data", "info", "--data-root", str(p.tmp / "missing")],
        ("missing",),
    ),
    Case(
        "another set's archive is corrupt: info still lists the intact one",
        lambda p: ["data", "info", "--data-root", str(broken_evaluation_zip(p))],
        ("images_evaluation.zip", "truncated or corrupt"),
        code=0,
    ),
    Case(
        "an image-set zip whose top folder is not its name",
        lambda p: ["data", "info", "--data-root", str(wrong_top_folder_zip(p))],
        ("flowers.zip", "rename the archive to blooms.zip"),
        code=0,
    ),
    Case(
        "a split part of a negative size other than -1",
        lambda p: [
            "data",
            "split",
            "--data-root",
            str(p.data),
            "--dataset",
            "background",
            "--part",
            "train=-5",
            "--part",
            "val=1",
            "--part",
            "test=1",
            "--out",
            str(p.tmp / "splits"),
        ],
        ("'train': -5 alphabets is not a size",),
    ),
    Case(
        "an episode grid that would take many GB",
        lambda p: [
            "data",
            "episodes",
            "--data-root",
            str(p.data),
            "--dataset",
            "background",
            "--ways",
            "3",
            "--episodes",
            "100000",
            "--out",
            str(p.tmp / "grid.png"),
        ],
        ("--memory-limit",),
    ),
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_omniglot_set(root, "images_background", {"Alpha": 6, "Beta": 6, "Gamma": 6}, drawings=5)
    return root


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    config = write(folder / "config-in.yaml", CONFIG)
    run = folder / "run"
    from metarch.cli.app import main

    with pytest.raises(SystemExit) as info:
        main(["train", "--config", str(config), "--out", str(run), "--data-root", str(data_root)])
    assert info.value.code in (0, None)
    return run


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(
    case: Case,
    tmp_path: Path,
    data_root: Path,
    trained_run: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".lock"))
    capsys.readouterr()
    (tmp_path / "case").mkdir()
    argv = case.argv(Paths(tmp_path / "case", data_root, run))
    code, out, err = run_cli(argv, capsys)
    shown = err if case.stream == "err" else out
    assert "Traceback" not in out + err
    assert code == case.code, f"exit {code}, stderr: {err!r}"
    for words in case.words:
        assert words in shown, f"{words!r} not in {shown!r}"
    if case.code != 0:
        errors = [line for line in err.splitlines() if not line.startswith("warning:")]
        assert len(errors) == 1 and errors[0].startswith("error:"), err
    if case.leaves_nothing:
        assert not (tmp_path / "case" / case.leaves_nothing).exists()
