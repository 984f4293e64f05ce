"""Stopping cleanly: Ctrl+C and SIGTERM become :class:`StopRequested`, workers die with parents.

``install_stop_handlers`` makes SIGINT and SIGTERM raise :class:`~geofuse.errors.StopRequested`
in the main thread, so ``finally`` blocks, Lightning's ``on_exception`` checkpoint and the atomic
writers all run, whichever signal arrived. :func:`init_worker` (the initializer of every
worker process of a study) does the same in the worker and makes sure the worker stops when its
parent dies, even by SIGKILL: the kernel's parent-death signal where Linux has it, and a watchdog
thread that notices the parent is gone everywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from geofuse.errors import StopRequested

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1
_WATCH_INTERVAL_S = 1.0

#: The last stop signal received in this process (None: none yet).
last_signal: int | None = None
#: In a worker process: the parent's pid, and whether a cell is running (a stop signal between
#: cells ends the worker at once and quietly).
_worker_parent: int | None = None
_in_cell = False


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    global last_signal
    last_signal = signum
    if _worker_parent is not None and not _in_cell:
        os._exit(128 + signum)
    raise StopRequested(signum)


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`StopRequested` (main thread only; no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stop)


def stop_signal(default: int = signal.SIGINT) -> int:
    """The stop signal this process received, or ``default`` (an exception without one)."""
    return last_signal if last_signal is not None else default


def _parent_death_signal() -> None:
    """Ask Linux to send SIGTERM to this process when its parent exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _watch_parent(parent_pid: int, interval_s: float) -> None:
    """Send SIGTERM to this process once ``parent_pid`` is no longer its parent."""
    stop = threading.Event()
    while not stop.wait(interval_s):
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)
            stop.wait(60 * interval_s)  # the main thread is stopping; then insist
            os._exit(128 + signal.SIGTERM)


def init_worker(parent_pid: int, threads: int | None = None) -> None:
    """Initializer of a study's worker process: stop handlers, parent watch, torch threads."""
    global _worker_parent
    _worker_parent = parent_pid
    install_stop_handlers()
    _parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(128 + signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(parent_pid, _WATCH_INTERVAL_S),
                     name="geofuse-parent-watch", daemon=True).start()
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_in_worker(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` as a worker's cell: a stop signal interrupts it cleanly (the cell's
    own cleanup runs); a worker whose parent died exits right after that cleanup."""
    global _in_cell
    _in_cell = True
    try:
        return fn(*args)
    except StopRequested:
        if _worker_parent is not None and os.getppid() != _worker_parent:
            os._exit(128 + (last_signal or signal.SIGTERM))
        raise
    finally:
        _in_cell = False
