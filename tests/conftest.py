"""Shared pytest fixtures: the shared data folder and an isolated cache per test."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the decode cache at a per-session temporary folder, never the user's cache."""
    cache = tmp_path_factory.getbasetemp() / "metarch-cache"
    monkeypatch.setenv("METARCH_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """``../shared/data``, or a skip with the reason when it is absent."""
    if not (SHARED_DATA / "omniglot" / "images_background.zip").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA} (needs omniglot/images_background.zip)")
    return SHARED_DATA
