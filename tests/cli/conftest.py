"""Fixtures shared by the command-line tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import write_omniglot_set


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with a small synthetic Omniglot background set (2 alphabets, 6 drawings)."""
    root = tmp_path_factory.mktemp("data")
    write_omniglot_set(root, "images_background", {"Alpha": 4, "Beta": 3}, drawings=6)
    return root
