"""One training at a time per run directory.

A run holds an exclusive ``flock`` on ``RUN/.lock`` while it writes. The operating system
drops the lock when the process ends, however it ends, so a killed run never leaves a stale
lock behind; the file itself stays and only records the holder's PID for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from metarch.errors import MetarchError

__all__ = ["LOCK_FILE", "RunDirectoryBusyError", "RunLock"]

LOCK_FILE = ".lock"


class RunDirectoryBusyError(MetarchError):
    """Another process is training into the same run directory."""


class RunLock:
    """An exclusive lock on a run directory (created if missing), held until :meth:`release`."""

    def __init__(self, run_dir: Path) -> None:
        # A directory made only to hold the lock goes again if nothing else was written.
        self._created = not run_dir.exists()
        self._run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise RunDirectoryBusyError(
                f"{run_dir} is in use: {who} is training into it; wait for it to finish "
                "(or stop it), or choose another --out"
            ) from None
        except BaseException:
            handle.close()
            raise
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle: IO[str] | None = handle

    def release(self) -> None:
        """Give the lock up (again: no effect)."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
            if self._created and [p.name for p in self._run_dir.iterdir()] == [LOCK_FILE]:
                with contextlib.suppress(OSError):
                    (self._run_dir / LOCK_FILE).unlink()
                    self._run_dir.rmdir()
