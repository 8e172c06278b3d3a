"""``metarch train`` and the file system: one-line errors, Ctrl-C, advice that works."""

from __future__ import annotations

import errno
import json
import os
import shlex
from pathlib import Path
from typing import Any

import pytest

from metarch.engine.checkpoint import load_checkpoint
from metarch.engine.trainer import Trainer
from metarch.utils.io import append_line, atomic_write_text
from tests.clitools import run_cli

CONFIG = """\
steps: 4
meta_batch: 2
model: {name: conv4, options: {hidden: 8}}
data: {train_set: background, val_set: null}
episodes: {ways: 3, shots: 1, queries: 2}
method: {name: protonet}
checkpoint_every: 1
log_every: 1
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    return path


def train_args(config: Path, out: Path | str, data_root: Path, *more: str) -> list[str]:
    return [
        "train",
        "--config",
        str(config),
        "--out",
        str(out),
        "--data-root",
        str(data_root),
        *more,
    ]


def printed_command(message: str) -> list[str]:
    """The arguments of the ``metarch ...`` command a message ends with."""
    words = shlex.split(message[message.index("metarch train") :])
    assert words[0] == "metarch"
    return words[1:]


def no_temporary_files(folder: Path) -> bool:
    return not list(folder.rglob("*.tmp"))


def test_out_below_a_file(
    tmp_path: Path, config: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    code, _, err = run_cli(train_args(config, blocker / "run", data_root), capsys)
    assert code == 2
    assert err == (
        f"error: {blocker / 'run'}: {blocker} is a file, not a folder; choose a path that is "
        "not below a file\n"
    )
    code, _, err = run_cli(train_args(config, blocker, data_root), capsys)
    assert (code, err) == (2, f"error: {blocker} is a file, not a folder; choose another path\n")
    assert blocker.read_text() == "mine\n"


def test_read_only_output(
    tmp_path: Path,
    config: Path,
    data_root: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
        expected = "permission denied; choose a path you may write to"
    else:  # root writes anywhere: the disk says no instead (only below `out`)
        mkdir = Path.mkdir

        def read_only(self: Path, *args: Any, **kwargs: Any) -> None:
            if self.is_relative_to(out):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(out / "run"))
            mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", read_only)
        expected = "the file system is read-only; choose a path on a writable disk"
    code, _, err = run_cli(train_args(config, out / "run", data_root), capsys)
    assert code == 2 and err.startswith(f"error: {out / 'run'}") and expected in err
    assert err.count("\n") == 1 and not list(out.iterdir())


def test_disk_full_during_a_checkpoint_loses_nothing(
    tmp_path: Path,
    config: Path,
    data_root: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / "run"
    fsync = os.fsync

    def fills_up(fd: int) -> None:
        # The disk fills while the third checkpoint's tensors are written.
        if ".last-00000003.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", fills_up)
    code, _, err = run_cli(train_args(config, run, data_root), capsys)
    assert code == 2
    assert err == (
        f"error: {run / 'last-00000003.safetensors'}: no space left on the device (or quota "
        f"exceeded); free space, then run again; to continue: metarch train --config "
        f"{run / 'config.yaml'} --out {run} --resume --data-root {data_root}\n"
    )
    assert load_checkpoint(run / "last.json").step == 2 and no_temporary_files(run)
    monkeypatch.setattr(os, "fsync", fsync)
    code, out, _ = run_cli(printed_command(err), capsys)
    assert code == 0 and "trained 4 steps" in out


def test_disk_full_during_an_append_leaves_no_torn_line(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        append_line("/dev/full", '{"step": 1}')
    assert info.value.errno == errno.ENOSPC and info.value.filename == "/dev/full"
    path = tmp_path / "metrics.jsonl"
    atomic_write_text(path, '{"step": 1}\n')
    append_line(path, '{"step": 2}')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_non_utf8_out(
    tmp_path: Path, config: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = Path(os.fsdecode(bytes(tmp_path) + b"/r\xff"))  # what typer passes for such argv
    code, _, err = run_cli(train_args(config, out, data_root), capsys)
    assert code == 2
    assert err == (
        f"error: --out {tmp_path}/r\\xff: this path is not valid UTF-8, which TensorBoard "
        "cannot write to; choose a UTF-8 path\n"
    )
    assert not os.path.exists(os.fsencode(out))
    # Commands that can write there do, and say where with the bytes escaped.
    args = ["data", "episodes", "--dataset", "background", "--data-root", str(data_root)]
    code, printed, _ = run_cli(
        [*args, "--ways", "3", "--queries", "2", "--out", f"{out}.png"], capsys
    )
    assert code == 0 and printed.endswith(f"to {tmp_path}/r\\xff.png\n")


def test_ctrl_c_says_where_to_resume_and_the_command_works(
    tmp_path: Path,
    config: Path,
    data_root: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / "run"
    log = Trainer._log

    def interrupted_at_step_3(self: Trainer, record: dict[str, object], writer: object) -> None:
        if record["step"] == 3:
            raise KeyboardInterrupt
        log(self, record, writer)

    monkeypatch.setattr(Trainer, "_log", interrupted_at_step_3)
    code, _, err = run_cli(train_args(config, run, data_root, "--set", "seed=5"), capsys)
    assert code == 130
    # Step 3's loss was finite, so step 2's checkpoint went to disk before the interruption.
    assert err.startswith("interrupted; the last checkpoint is at step 2; resume with: ")
    assert err.count("\n") == 1 and no_temporary_files(run)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()] == [1, 2]
    monkeypatch.setattr(Trainer, "_log", log)
    code, out, _ = run_cli(printed_command(err), capsys)
    assert code == 0 and f"trained 4 steps into {run}" in out


def test_non_finite_loss_advice_works_as_printed(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "maml.yaml"
    config.write_text(CONFIG.replace("{name: protonet}", "{name: maml, options: {inner_lr: 0.1}}"))
    run = tmp_path / "run"
    code, _, err = run_cli(train_args(config, run, data_root, "--set", "optimizer.lr=1e5"), capsys)
    assert code == 2 and "became non-finite at step 2" in err
    assert "No checkpoint had been written yet." in err
    assert "--resume refuses a changed learning rate, so train a new run" in err
    command = printed_command(err)
    assert command[command.index("--set") + 1] == "optimizer.lr=10000"
    code, out, _ = run_cli(command, capsys)
    assert code == 0 and f"trained 4 steps into {tmp_path / 'run-lr10000'}" in out


def test_second_training_into_the_same_out_is_refused(
    tmp_path: Path,
    config: Path,
    data_root: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / "run"
    log = Trainer._log

    def second_training_meanwhile(self: Trainer, record: dict[str, object], writer: object) -> None:
        log(self, record, writer)
        if record["step"] == 2:
            code, _, err = run_cli(train_args(config, run, data_root), capsys)
            assert code == 2
            assert err == (
                f"error: {run} is in use: process {os.getpid()} is training into it; wait for "
                "it to finish (or stop it), or choose another --out\n"
            )

    monkeypatch.setattr(Trainer, "_log", second_training_meanwhile)
    code, _, _ = run_cli(train_args(config, run, data_root), capsys)
    assert code == 0
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()] == [1, 2, 3, 4]


def test_resuming_a_finished_run_says_so(
    tmp_path: Path, config: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert run_cli(train_args(config, run, data_root), capsys)[0] == 0
    # The README's resume example: the run's own config, --resume.
    code, out, err = run_cli(train_args(run / "config.yaml", run, data_root, "--resume"), capsys)
    assert code == 0, err
    assert "has trained all 4 steps already; nothing to resume" in out
    assert load_checkpoint(run / "last.json").step == 4
