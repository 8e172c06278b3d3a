"""Fetch the official Omniglot archives for users who have internet.

Downloads go to a temporary file next to the destination and are renamed into place only
when complete and, where the checksum is known, verified. Without a network the first
connection fails within seconds and the error names every file to place by hand and where.
"""

from __future__ import annotations

import os
import stat
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from metarch.data.paths import default_download_root
from metarch.errors import DataError, DownloadError
from metarch.utils.io import atomic_write, sha256_file
from metarch.utils.progress import report_progress

__all__ = [
    "ARCHIVES",
    "Archive",
    "check_download_root",
    "download_advice",
    "download_archive",
    "download_omniglot",
]

_BASE = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"


@dataclass(frozen=True)
class Archive:
    """One downloadable archive.

    Attributes:
        file_name: Name of the archive in the data root's ``omniglot/`` folder.
        url: Where it is published.
        sha256: Expected digest, or ``None`` where it was never checked here.
    """

    file_name: str
    url: str
    sha256: str | None


ARCHIVES: dict[str, Archive] = {
    "background": Archive(
        "images_background.zip",
        f"{_BASE}/images_background.zip",
        "7abffa4dd3903b5db07de66e66fa4ce9c4b09e41fd9bda7122e86482b5092e67",
    ),
    "evaluation": Archive("images_evaluation.zip", f"{_BASE}/images_evaluation.zip", None),
    "background_small1": Archive(
        "images_background_small1.zip",
        f"{_BASE}/images_background_small1.zip",
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    ),
    "background_small2": Archive(
        "images_background_small2.zip",
        f"{_BASE}/images_background_small2.zip",
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    ),
    "lake_runs": Archive("all_runs.zip", f"{_BASE}/one-shot-classification/all_runs.zip", None),
}


def _placement_help(names: Iterable[str], folder: Path) -> str:
    files = ", ".join(ARCHIVES[n].file_name for n in names)
    return f"place {files} in {folder} by hand (from {_BASE}), or pass --data-root DIR"


def _writable(folder: Path) -> bool:
    """Whether ``folder``, or the nearest folder above it that exists, may be written to.

    A folder nobody has write permission on counts as read-only even for root, who could
    write it anyway: it was made read-only on purpose (a shared data folder).
    """
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return False
    no_write_bits = not existing.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    return os.access(existing, os.W_OK | os.X_OK) and not no_write_bits


def check_download_root(data_root: Path, sets: Iterable[str]) -> None:
    """Refuse a download into a read-only data root before anything is fetched.

    Nothing is checked when every archive asked for is already there (nothing to write).

    Raises:
        DataError: For an unknown set name.
        DownloadError: If an archive is missing and ``data_root/omniglot`` cannot be written.
    """
    names = _known(sets)
    folder = data_root / "omniglot"
    if all((folder / ARCHIVES[n].file_name).exists() for n in names) or _writable(folder):
        return
    raise DownloadError(
        f"{folder} is read-only (a shared data folder?): metarch does not download into it; "
        "pass --data-root DIR with a folder you can write to, or leave --data-root and "
        f"METARCH_DATA unset to download into {default_download_root()}"
    )


def download_advice(data_root: Path) -> str:
    """The download command for a set missing from ``data_root`` (another if read-only)."""
    if _writable(data_root / "omniglot"):
        return f"'metarch data download --data-root {data_root}'"
    return (
        f"{data_root} is read-only, so 'metarch data download --data-root DIR' with a folder "
        "you can write to, then pass --data-root DIR"
    )


def _known(sets: Iterable[str]) -> list[str]:
    names = list(sets)
    unknown = [n for n in names if n not in ARCHIVES]
    if unknown:
        raise DataError(f"cannot download {unknown}; known: {', '.join(ARCHIVES)}")
    return names


def download_archive(
    archive: Archive,
    folder: Path,
    *,
    timeout: float = 10.0,
) -> Path:
    """Download one archive into ``folder`` unless it is already there.

    Args:
        archive: What to fetch.
        folder: Destination folder (created if missing).
        timeout: Seconds to wait for the connection and for each read.

    Returns:
        Path of the archive.

    Raises:
        DownloadError: If the network is unreachable or the checksum does not match.
    """
    dest = folder / archive.file_name
    if dest.exists():
        return dest
    try:
        with urllib.request.urlopen(archive.url, timeout=timeout) as response:
            total = response.length
            done = 0
            with atomic_write(dest) as handle:
                while chunk := response.read(1 << 16):
                    handle.write(chunk)
                    done += len(chunk)
                    report_progress(f"downloading {archive.file_name}", done, total)
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"could not download {archive.file_name} from {archive.url} ({reason})"
        ) from exc
    if archive.sha256 is not None:
        digest = sha256_file(dest)
        if digest != archive.sha256:
            dest.unlink()
            raise DownloadError(
                f"{archive.file_name} from {archive.url} has SHA-256 {digest}, expected "
                f"{archive.sha256}; the download was removed, try again"
            )
    return dest


def download_omniglot(
    data_root: Path,
    sets: Iterable[str] = ("background", "evaluation", "lake_runs"),
    *,
    timeout: float = 10.0,
) -> list[Path]:
    """Download official archives into ``data_root/omniglot``.

    Args:
        data_root: Data root; archives go to its ``omniglot/`` subfolder.
        sets: Names from :data:`ARCHIVES`.
        timeout: Seconds per connection attempt and read.

    Returns:
        Paths of the archives, downloaded or already present.

    Raises:
        DataError: For an unknown set name.
        DownloadError: When offline, naming every file to place by hand and where, or
            when ``data_root`` is read-only.
    """
    names = _known(sets)
    check_download_root(data_root, names)
    folder = data_root / "omniglot"
    paths = []
    for position, name in enumerate(names):
        try:
            paths.append(download_archive(ARCHIVES[name], folder, timeout=timeout))
        except DownloadError as exc:
            missing = [n for n in names[position:] if not (folder / ARCHIVES[n].file_name).exists()]
            raise DownloadError(f"{exc}; {_placement_help(missing, folder)}") from exc
    return paths
