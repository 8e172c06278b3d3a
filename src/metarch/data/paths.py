"""Where data and caches live.

The data root is, in order: an explicit ``--data-root``, the ``METARCH_DATA`` environment
variable, the first existing folder of :data:`DEVELOPMENT_DATA_ROOTS` (a checkout's ``data``
folder, or a ``shared/data`` folder next to it), and finally ``~/.local/share/metarch``
(where ``metarch data download`` puts archives). Downloads never go to a folder found by
that fallback (often a shared, read-only one): see :func:`download_root`. The cache of
decoded arrays is ``METARCH_CACHE`` or ``~/.cache/metarch``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DEVELOPMENT_DATA_ROOTS",
    "cache_root",
    "candidate_dirs",
    "default_download_root",
    "download_root",
    "resolve_data_root",
]

DEVELOPMENT_DATA_ROOTS: tuple[str, ...] = ("data", "../shared/data")


def default_download_root() -> Path:
    """Folder where downloads go when no data root is given."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "metarch"


def resolve_data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root to read from (see the module docstring for the order)."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("METARCH_DATA")
    if env:
        return Path(env).expanduser()
    for candidate in DEVELOPMENT_DATA_ROOTS:
        path = Path(candidate)
        if path.is_dir():
            return path
    return default_download_root()


def download_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data root downloads go to: one the user chose, else :func:`default_download_root`.

    A root chosen is ``explicit`` (``--data-root``) or ``METARCH_DATA``; the development
    folders :func:`resolve_data_root` falls back to are read from, never written to.
    """
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("METARCH_DATA")
    if env:
        return Path(env).expanduser()
    return default_download_root()


def candidate_dirs(root: Path, subfolder: str) -> list[Path]:
    """Folders searched for a data set: the root itself and ``root/subfolder``."""
    return [root, root / subfolder]


def cache_root() -> Path:
    """Folder for decoded-array caches (``METARCH_CACHE`` or ``~/.cache/metarch``)."""
    env = os.environ.get("METARCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "metarch"
