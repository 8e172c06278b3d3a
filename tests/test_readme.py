"""Every command README.md shows works as printed (issue 14.8).

The ``metarch`` commands of the README's ``bash`` blocks run in document order, in a fresh
folder holding only the repository's ``configs/``, on the shared data (plus Lake's runs,
which it lacks, built from its background set). The only changes are the ones in
:data:`SUBSTITUTIONS`: fewer training steps and evaluation episodes, and the shared data
folder's real path; ``metarch data download`` runs offline and must fail with its message.
The task folder a user brings to ``metarch nas adapt`` is made from Omniglot drawings.
"""

from __future__ import annotations

import re
import shlex
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from metarch.data.pools import NAMED_SPLITS
from tests.clitools import run_cli
from tests.fixtures import write_lake_runs

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

TINY_TRAINING = ["--set", "steps=2", "--set", "validation.episodes=2"]


def readme_commands(text: str) -> list[str]:
    """The commands of the ``bash`` blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def metarch_commands(text: str) -> list[list[str]]:
    """The arguments of every ``metarch`` command (``.venv/bin/metarch`` too)."""
    found = []
    for command in readme_commands(text):
        words = shlex.split(command)
        if words[0] in ("metarch", ".venv/bin/metarch"):
            found.append(words[1:])
    return found


def substituted(args: list[str], shared: Path) -> list[str]:
    """``args`` as this test runs them (see the module docstring)."""
    args = [
        str(shared) + a[len("../shared/data") :] if a.startswith("../shared/data") else a
        for a in args
    ]
    if args[0] == "train" and not args[args.index("--config") + 1].startswith("runs/"):
        return [*args, *TINY_TRAINING]  # a run's own config.yaml cannot take overrides
    if args[0] == "evaluate" and "lake-runs" not in args:
        if "--episodes" in args:
            args[args.index("--episodes") + 1] = "2"
            return args
        return [*args, "--episodes", "2"]
    return args


def test_readme_commands_are_found() -> None:
    commands = metarch_commands(README.read_text())
    names = [" ".join(a[:2]) for a in commands]
    for expected in (
        "data info",
        "data split",
        "data download",
        "train --config",
        "evaluate --run",
    ):
        assert expected in names
    assert not any("[" in word for args in commands for word in args)  # no [optional] parts


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    quick_start = readme_commands(README.read_text())[:2]
    assert quick_start[1].endswith(".venv/bin/python -m pytest -q")
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert shlex.split(quick_start[1]) in [shlex.split(line, comments=True) for line in ci_lines]


@pytest.fixture
def readme_data(shared_data_root: Path, tmp_path: Path) -> Path:
    """The shared data, linked, plus Lake's runs built from its background set."""
    root = tmp_path / "data"
    root.mkdir()
    for entry in shared_data_root.iterdir():
        if entry.is_dir():
            (root / entry.name).symlink_to(entry)
    write_lake_runs(root, shared_data_root / "omniglot" / "images_background.zip")
    return root


def write_task_folder(folder: Path, shared: Path, classes: int = 5) -> None:
    """A user's task: one folder per class holding one Omniglot drawing of that character."""
    with zipfile.ZipFile(shared / "omniglot" / "images_background.zip") as archive:
        drawings = sorted(n for n in archive.namelist() if n.endswith(".png"))
        characters = sorted({name.rsplit("/", 1)[0] for name in drawings})[:classes]
        for index, character in enumerate(characters):
            first = next(n for n in drawings if n.startswith(character + "/"))
            (folder / f"class{index}").mkdir(parents=True, exist_ok=True)
            (folder / f"class{index}" / "0.png").write_bytes(archive.read(first))


def test_every_readme_command_works_as_printed(
    readme_data: Path,
    shared_data_root: Path,
    session_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "clone"
    work.mkdir()
    (work / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(work)
    monkeypatch.setenv("METARCH_DATA", str(readme_data))
    monkeypatch.setenv("METARCH_CACHE", str(session_cache))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    failures = []
    for printed in metarch_commands(README.read_text()):
        args = substituted(printed, shared_data_root)
        if printed[:2] == ["nas", "adapt"]:
            write_task_folder(work / args[args.index("--support") + 1], shared_data_root)
        code, out, err = run_cli(args, capsys)
        if printed[:2] == ["data", "download"]:
            # Offline: a one-line error naming what to place where (METARCH_DATA is chosen).
            ok = code == 2 and str(readme_data / "omniglot") in err
        else:
            ok = code == 0 and "deprecated" not in err
        if not ok:
            failures.append(f"metarch {shlex.join(args)} -> {code}\n{out}{err}")
    assert not failures, "\n\n".join(failures)

    # The data split example wrote the published split, and said so.
    published = NAMED_SPLITS["background"]
    for part, alphabets in published.parts.items():
        lines = (work / "splits" / f"background-{part}.txt").read_text().split()
        assert sorted({line.split("/")[0] for line in lines}) == sorted(alphabets)
    # The resume example continued the run the first command started.
    assert (work / "runs" / "proto5" / "last.json").is_file()
