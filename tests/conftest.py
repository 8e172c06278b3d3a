"""Shared pytest fixtures: the shared data folder and isolated caches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metarch.data.omniglot import OmniglotSet, load_omniglot

# Test models are tiny: a second intra-op thread costs more than it saves, and far more
# when the other core is busy.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A decode cache shared by the tests of one session (real sets decode once)."""
    return tmp_path_factory.mktemp("metarch-session-cache")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default caches (decoded sets, layer tables, predictors) at a per-test
    folder, never the user's."""
    cache = tmp_path / "metarch-cache"
    monkeypatch.setenv("METARCH_CACHE", str(cache))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return cache


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """``../shared/data``, or a skip with the reason when it is absent."""
    if not (SHARED_DATA / "omniglot" / "images_background.zip").is_file():
        reason = f"shared data not found at {SHARED_DATA} (needs omniglot/images_background.zip)"
        pytest.skip(reason=reason)
    return SHARED_DATA


@pytest.fixture(scope="session")
def background(shared_data_root: Path, session_cache: Path) -> OmniglotSet:
    """The real Omniglot background set at 28x28, decoded once per session."""
    return load_omniglot("background", shared_data_root, cache_dir=session_cache)
