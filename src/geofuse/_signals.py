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

#: The first stop signal received since the handlers were installed (None: none yet).
last_signal: int | None = None
_repeats = 0  # stop signals received after the first
#: Signals that force a main process out while it is still cleaning up after the first.
FORCE_AFTER = 3
#: In a worker process: the parent's pid, and whether a cell is running (a stop signal between
#: cells ends the worker at once and quietly).
_worker_parent: int | None = None
_in_cell = False


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    """Raise :class:`StopRequested` once. Later signals (a terminal's Ctrl+C reaches workers
    as well as the parent that then stops them) must not break the cleanup the first one
    started: they are ignored, except that a main process gives up on the third."""
    global last_signal, _repeats
    if _worker_parent is not None and not _in_cell:
        os._exit(128 + signum)
    if last_signal is not None:
        _repeats += 1
        if _worker_parent is None and _repeats >= FORCE_AFTER - 1:
            os._exit(128 + signum)
        return
    last_signal = signum
    raise StopRequested(signum)


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`StopRequested` once (main thread only; no-op
    elsewhere); installing them again forgets earlier signals."""
    global last_signal, _repeats
    if threading.current_thread() is not threading.main_thread():
        return
    last_signal, _repeats = None, 0
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stop)


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
            if last_signal is None:  # the parent-death signal did not arrive
                os.kill(os.getpid(), signal.SIGTERM)
            stop.wait(60 * interval_s)  # the main thread is stopping; then insist
            os._exit(128 + signal.SIGTERM)


def init_worker(parent_pid: int) -> None:
    """Initializer of a study's worker process: stop handlers and the parent watch."""
    global _worker_parent
    _worker_parent = parent_pid
    install_stop_handlers()
    _parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(128 + signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(parent_pid, _WATCH_INTERVAL_S),
                     name="geofuse-parent-watch", daemon=True).start()


def run_in_worker(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` as a worker's cell: a stop signal interrupts it cleanly (the cell's
    own cleanup runs: checkpoint, run.json) and then ends the worker, so that it takes no
    further cell; a worker that was asked to stop starts none."""
    global _in_cell
    if last_signal is not None:
        os._exit(128 + last_signal)
    _in_cell = True
    try:
        return fn(*args)
    except StopRequested:
        if _worker_parent is not None:
            os._exit(128 + (last_signal or signal.SIGTERM))
        raise
    finally:
        _in_cell = False
