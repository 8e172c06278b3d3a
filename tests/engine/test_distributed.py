"""Leaving the process group: every rank waits for rank 0's last files before teardown."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from metarch.engine import distributed


def test_ranks_leave_together_after_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    distributed._run_then_tear_down(lambda: calls.append("work"), ())
    assert calls == ["work", "barrier", "destroy"]


def test_after_an_error_no_barrier_is_awaited(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))

    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        distributed._run_then_tear_down(fail, ())
    assert calls == ["destroy"]
