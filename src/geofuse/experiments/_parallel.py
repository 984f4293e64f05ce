"""Run study cells serially, in local worker processes (spawn) or as Ray tasks.

Every backend calls the same picklable function per cell and hands each result to
``on_done`` in the parent as soon as it arrives; the first failure cancels what has not
started and is raised again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any

from geofuse.errors import ConfigError

CellFn = Callable[[Any, dict[str, Any]], dict[str, Any]]
OnDone = Callable[[dict[str, Any]], None]


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_serial(fn: CellFn, ctx: Any, cells: list[dict[str, Any]], on_done: OnDone) -> None:
    """One cell after the other in this process."""
    for cell in cells:
        on_done(fn(ctx, cell))


def run_pool(
    fn: CellFn, ctx: Any, cells: list[dict[str, Any]], workers: int, on_done: OnDone
) -> None:
    """Cells in ``workers`` spawned processes (fresh interpreters: no forked torch state)."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    pending: set[Future[dict[str, Any]]] = {pool.submit(fn, ctx, cell) for cell in cells}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                on_done(future.result())  # raises the worker's exception
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise ConfigError(
            "Ray is not installed but ablation.ray.address / --ray is set; install it with "
            "'pip install ray' or drop the Ray address"
        ) from None
    return ray


def run_ray(
    fn: CellFn, ctx: Any, cells: list[dict[str, Any]], address: str, num_cpus: float,
    on_done: OnDone, local_cpus: int | None = None,
) -> None:
    """Cells as Ray tasks on ``address`` ('local' starts a local instance).

    An already initialised Ray session is used as is (and left running); a session started
    here is shut down at the end.
    """
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address == "local":
            ray.init(num_cpus=local_cpus or os.cpu_count(), **kwargs)
        else:
            ray.init(address=address, **kwargs)
        started = True
    try:
        remote = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
        refs = [remote.remote(ctx, cell) for cell in cells]
        try:
            while refs:
                done, refs = ray.wait(refs, num_returns=1)
                on_done(ray.get(done[0]))
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)
    finally:
        if started:
            ray.shutdown()
