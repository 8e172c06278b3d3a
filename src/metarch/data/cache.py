"""Decode-once cache of :class:`~metarch.data.base.ImageClassDataset` arrays.

Decoding thousands of PNG files takes seconds; loading one uncompressed ``.npz`` file takes
milliseconds. A cache entry is keyed by the fingerprint of its source (the SHA-256 of an
archive, or of the file listing of a folder) together with every decoding parameter, so a
changed archive or another image size never reads a stale entry. Entries are written
atomically and loaded without pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from metarch.data.base import ImageClassDataset
from metarch.data.paths import cache_root
from metarch.utils.io import atomic_write, sha256_file

__all__ = ["CACHE_FORMAT", "cached_dataset", "source_fingerprint"]

# Bump when the decoded representation changes, so old entries are ignored.
CACHE_FORMAT = 1

log = logging.getLogger(__name__)


def source_fingerprint(source: Path) -> str:
    """Fingerprint of a data source: SHA-256 of a file, or of a folder's listing.

    A folder's fingerprint covers every file's relative path, size and modification time,
    which is cheap and changes whenever a file is added, removed or rewritten.
    """
    if source.is_file():
        return sha256_file(source)
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(source)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _entry_path(kind: str, name: str, key: Mapping[str, object], root: Path) -> Path:
    blob = json.dumps({"format": CACHE_FORMAT, "kind": kind, **key}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:24]
    return root / f"{kind}-{name}-{digest}.npz"


def _save(path: Path, dataset: ImageClassDataset) -> None:
    with atomic_write(path) as handle:
        np.savez(
            handle,
            name=np.array(dataset.name),
            images=dataset.images,
            class_offsets=dataset.class_offsets,
            class_names=np.array(dataset.class_names),
            class_groups=np.array(dataset.class_groups),
            class_ids=dataset.class_ids,
            image_names=np.array(dataset.image_names),
            class_descriptions=np.array(dataset.class_descriptions, dtype=str),
        )


def _load(path: Path) -> ImageClassDataset:
    with np.load(path, allow_pickle=False) as entry:
        return ImageClassDataset(
            name=str(entry["name"]),
            images=entry["images"],
            class_offsets=entry["class_offsets"],
            class_names=tuple(entry["class_names"].tolist()),
            class_groups=tuple(entry["class_groups"].tolist()),
            class_ids=entry["class_ids"],
            image_names=tuple(entry["image_names"].tolist()),
            class_descriptions=(
                tuple(entry["class_descriptions"].tolist())
                if "class_descriptions" in entry.files
                else ()
            ),
        )


def cached_dataset(
    kind: str,
    name: str,
    source: Path,
    params: Mapping[str, object],
    decode: Callable[[], ImageClassDataset],
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageClassDataset:
    """Load a decoded data set from the cache, decoding and storing it on a miss.

    Args:
        kind: Reader family (``omniglot``, ``folder``, ...), part of the file name.
        name: Set name, part of the file name.
        source: Archive or folder the set is decoded from; its fingerprint keys the entry.
        params: Every decoding parameter that changes the result (image size, ...).
        decode: Decodes the source when the cache has no valid entry.
        cache_dir: Cache folder; defaults to :func:`metarch.data.paths.cache_root`.

    Returns:
        The decoded data set.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    key = {"name": name, "source": source_fingerprint(source), **params}
    path = _entry_path(kind, name, key, root)
    if path.exists():
        try:
            return _load(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            # A damaged entry is only a cache miss: decode again and overwrite it.
            log.warning("ignoring damaged cache entry %s (%s)", path, exc)
    dataset = decode()
    try:
        _save(path, dataset)
    except OSError as exc:  # a read-only cache must not break loading
        log.warning("could not write cache entry %s (%s)", path, exc)
    return dataset
