"""One writer per study and per run directory: advisory file locks that die with their holder.

A lock is an ``fcntl.flock`` on a ``.lock`` file inside the folder it protects. The kernel
releases it when the holding process exits, however it exits (Ctrl+C, SIGTERM, SIGKILL, a
crash), so a stale lock of a dead process is simply taken over by the next command. The file
also records who holds it (pid, host, command, start time) so that a refused command can say
whom it waits for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from geofuse.errors import LockedError

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # folder -> nesting depth of the lock in this process
_files: dict[Path, TextIO] = {}  # folder -> the open lock file holding the flock


def _holder_info() -> dict[str, Any]:
    return {
        "pid": os.getpid(), "host": socket.gethostname(),
        "command": " ".join(["geofuse", *sys.argv[1:]]) if sys.argv else "geofuse",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def read_holder(folder: str | Path) -> dict[str, Any] | None:
    """Who last took the lock of ``folder`` (None when never locked or unreadable)."""
    try:
        data = json.loads((Path(folder) / LOCK_NAME).read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_locked(folder: str | Path) -> bool:
    """Whether a live process holds the lock of ``folder`` right now."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return False
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


class FolderLock:
    """Exclusive lock of a folder for one process (re-entrant within that process).

    Args:
        folder: the folder to protect (created if missing).
        what: how messages name it, e.g. ``"study 'demo'"``.
    """

    def __init__(self, folder: str | Path, what: str) -> None:
        self.folder = Path(folder).resolve()
        self.what = what

    def acquire(self) -> None:
        """Take the lock, or raise :class:`LockedError` naming the holder."""
        if self.folder in _held:
            _held[self.folder] += 1
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        f = (self.folder / LOCK_NAME).open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise LockedError(self._refusal()) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps(_holder_info()) + "\n")
        f.flush()
        _files[self.folder] = f
        _held[self.folder] = 1

    def release(self) -> None:
        """Give the lock back (the file stays, naming the last holder)."""
        depth = _held.get(self.folder, 0)
        if depth > 1:
            _held[self.folder] = depth - 1
            return
        _held.pop(self.folder, None)
        f = _files.pop(self.folder, None)
        if f is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def _refusal(self) -> str:
        holder = read_holder(self.folder) or {}
        who = (f"process {holder.get('pid', '?')} on {holder.get('host', '?')} "
               f"('{holder.get('command', '?')}', started {holder.get('started_at', '?')})")
        return (f"{self.what} in {str(self.folder)!r} is being written by {who}; wait for it "
                f"to finish or stop it (kill {holder.get('pid', 'PID')}), then run this "
                "command again")

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(folder: str | Path, what: str) -> Iterator[FolderLock]:
    """``with locked(study_dir, "study 'x'"):`` hold the folder's lock for the block."""
    lock = FolderLock(folder, what)
    with lock:
        yield lock
