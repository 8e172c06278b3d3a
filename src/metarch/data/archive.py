"""Read the files of a data set the same way from a zip archive or an extracted folder."""

from __future__ import annotations

import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

from metarch.errors import DataError

__all__ = ["MAX_MEMBER_BYTES", "DirectoryTree", "FileTree", "ZipTree", "open_tree"]

#: Largest archive member read (uncompressed). Few-shot images are kilobytes; a member that
#: unpacks to more is refused before it is decompressed, so a zip bomb cannot fill memory.
MAX_MEMBER_BYTES = 64 * 2**20


class FileTree(ABC):
    """Files of one data set, named by POSIX paths relative to the set's top folder."""

    source: Path

    @abstractmethod
    def names(self) -> list[str]:
        """Relative paths of all regular files, sorted."""

    @abstractmethod
    def read(self, name: str) -> bytes:
        """Bytes of one file.

        Raises:
            DataError: If the file cannot be read (corrupt archive member, I/O error).
        """

    def where(self, name: str) -> str:
        """Human-readable location of a file, for error messages."""
        return f"{self.source}:{name}" if self.source.is_file() else str(self.source / name)

    def close(self) -> None:  # noqa: B027 (optional hook: folders hold no handle)
        """Release any open handle."""

    def __enter__(self) -> FileTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ZipTree(FileTree):
    """Members of a zip archive below ``prefix`` (for example ``images_background/``)."""

    def __init__(self, source: Path, prefix: str = "") -> None:
        self.source = source
        self.prefix = prefix
        try:
            self._zip = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, EOFError) as exc:
            raise DataError(
                f"{source} is not a readable zip archive ({exc}); it is truncated or corrupt: "
                "download it again"
            ) from exc
        self._names = sorted(
            info.filename[len(prefix) :]
            for info in self._zip.infolist()
            if not info.is_dir() and info.filename.startswith(prefix)
        )

    def names(self) -> list[str]:  # noqa: D102
        return list(self._names)

    def read(self, name: str) -> bytes:  # noqa: D102
        try:
            info = self._zip.getinfo(self.prefix + name)
            if info.file_size > MAX_MEMBER_BYTES:
                raise DataError(
                    f"{self.where(name)}: refused as a possible decompression bomb: it unpacks "
                    f"to {info.file_size:,} bytes from {info.compress_size:,} (the limit is "
                    f"{MAX_MEMBER_BYTES:,}); few-shot images are small, so remove this member "
                    "or shrink it"
                )
            # zipfile stops at the declared size, so the check above bounds what is read.
            return self._zip.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise DataError(
                f"{self.where(name)}: cannot read archive member ({exc}); the archive is "
                "corrupt or truncated: download it again"
            ) from exc

    def close(self) -> None:  # noqa: D102
        self._zip.close()


class DirectoryTree(FileTree):
    """Regular files below a folder (or only below some of its subfolders)."""

    def __init__(self, source: Path, subfolders: Iterable[str] | None = None) -> None:
        self.source = source
        tops = [source] if subfolders is None else [source / name for name in subfolders]
        self._names = sorted(
            p.relative_to(source).as_posix() for top in tops for p in top.rglob("*") if p.is_file()
        )

    def names(self) -> list[str]:  # noqa: D102
        return list(self._names)

    def read(self, name: str) -> bytes:  # noqa: D102
        try:
            return (self.source / name).read_bytes()
        except OSError as exc:
            raise DataError(f"{self.where(name)}: cannot read file ({exc})") from exc


def open_tree(source: Path, top_folder: str, *, optional_top: bool = False) -> FileTree:
    """Open a zip archive (whose members sit below ``top_folder/``) or a folder.

    Args:
        source: Zip archive or extracted folder.
        top_folder: Folder that holds the set's files inside the archive.
        optional_top: Accept archives whose files sit at the top level as well (some
            official archives, such as Lake's ``all_runs.zip``, circulate in both forms):
            ``top_folder/`` is used when any member lies below it, else the top level. A
            folder that contains a ``top_folder/`` subfolder (an archive extracted into a
            folder of the same name) is read from that subfolder.

    Raises:
        DataError: If the archive is unreadable, or (unless ``optional_top``) has no files
            below ``top_folder/``.
    """
    if source.is_dir():
        if optional_top and (source / top_folder).is_dir():
            return DirectoryTree(source / top_folder)
        return DirectoryTree(source)
    prefix = f"{top_folder}/"
    tree = ZipTree(source, prefix=prefix)
    if optional_top and not tree.names():
        tree.close()
        return ZipTree(source)
    if not tree.names():
        tree.close()
        raise DataError(
            f"{source} has no files below '{top_folder}/'; expected the official layout "
            f"'{top_folder}/<...>' inside the archive"
        )
    return tree
