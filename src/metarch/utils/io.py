"""Atomic file writes, whole-line appends, hashing, and file-system errors in words.

A file written here is either absent or complete: data goes to a temporary file in the
destination's folder, is flushed to disk, and is then renamed over the destination. A
crash or an exception half-way leaves no partial file behind. An error while writing names
the destination, so :func:`describe_os_error` can tell the user which path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "append_line",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "describe_os_error",
    "describe_unicode_error",
    "display_path",
    "sha256_file",
]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[bytes]]:
    """Open a temporary file that replaces ``path`` only if the block succeeds.

    Args:
        path: Destination file. Its parent folder is created if missing.
        mode: ``"wb"`` (binary); text writers should use :func:`atomic_write_text`.

    Yields:
        A binary file object to write to.
    """
    if mode != "wb":
        raise ValueError("atomic_write supports mode='wb' only")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, dest)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        _raise_naming(exc, dest)
        raise


def _raise_naming(exc: BaseException, path: Path) -> None:
    """Re-raise an OSError without a file name (a failed write) as one naming ``path``."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` and a newline to a UTF-8 file, whole or not at all.

    A write that fails half-way (a full disk, Ctrl-C) is cut back off, so readers never
    see a torn line from this process.
    """
    dest = Path(path)
    # Unbuffered, so nothing is left in a buffer to be flushed after the cut.
    with dest.open("ab", buffering=0) as handle:
        size = handle.seek(0, os.SEEK_END)
        try:
            rest = memoryview(f"{line}\n".encode())
            while rest:
                rest = rest[handle.write(rest) or 0 :]
        except BaseException as exc:
            with contextlib.suppress(OSError):
                handle.truncate(size)
            _raise_naming(exc, dest)
            raise


def display_path(path: str | os.PathLike[str]) -> str:
    r"""``path`` as printable text (bytes that are not UTF-8 shown as ``\xNN``)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _blocking_file(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` that is a file, not a folder."""
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            return parent if not parent.is_dir() else None
    return None


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system error: the path, what is wrong, and what to do."""
    path = Path(os.fsdecode(exc.filename)) if exc.filename is not None else None
    where = display_path(path) if path is not None else "a file"
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"{where}: permission denied; choose a path you may write to, or change its permissions"
        )
    if code == errno.EROFS:
        return f"{where}: the file system is read-only; choose a path on a writable disk"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"{where}: no space left on the device (or quota exceeded); free space, then run again"
        )
    if code == errno.ENOTDIR and path is not None:
        blocker = _blocking_file(path)
        if blocker is not None:
            return (
                f"{where}: {display_path(blocker)} is a file, not a folder; choose a path "
                "that is not below a file"
            )
    if code == errno.EEXIST and path is not None and not path.is_dir():
        return f"{where} is a file, not a folder; choose another path"
    if code == errno.ENAMETOOLONG:
        return f"{where}: a name in this path is too long; choose a shorter path"
    return f"{where}: {exc.strerror or exc}"


def describe_unicode_error(exc: UnicodeError) -> str:
    """One line for a path that is not valid UTF-8 (file names other tools must read)."""
    text = getattr(exc, "object", "")
    shown = display_path(text) if isinstance(text, str) else repr(text)
    return f"{shown}: this path is not valid UTF-8; rename it or choose a UTF-8 path"
