"""Run study cells serially, in local worker processes (spawn) or as Ray tasks.

Every backend calls the same picklable function per cell and hands each result to
``on_done`` in the parent as soon as it arrives; the first failure cancels what has not
started and is raised again.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any

from geofuse._signals import init_worker, run_in_worker
from geofuse.errors import ConfigError, WorkerDiedError

CellFn = Callable[[Any, dict[str, Any]], dict[str, Any]]
OnDone = Callable[[dict[str, Any]], None]


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask (``taskset``, cpusets), capped by a
    cgroup v2 CPU quota (containers); ``os.cpu_count()`` where neither is known."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError), open("/sys/fs/cgroup/cpu.max") as f:
        quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    return max(1, cores)


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` processes sharing the cores this process may use
    (workers x threads <= cores; at least 1)."""
    return max(1, available_cores() // max(1, workers))


def run_serial(fn: CellFn, ctx: Any, cells: list[dict[str, Any]], on_done: OnDone) -> None:
    """One cell after the other in this process (torch's thread count is restored after)."""
    import torch

    threads = torch.get_num_threads()
    try:
        for cell in cells:
            on_done(fn(ctx, cell))
    finally:
        torch.set_num_threads(threads)


def run_pool(
    fn: CellFn, ctx: Any, cells: list[dict[str, Any]], workers: int, on_done: OnDone
) -> None:
    """Cells in ``workers`` spawned processes (fresh interpreters: no forked torch state).

    Workers stop with the parent: on Ctrl+C, SIGTERM or any error here each worker gets
    SIGTERM and finishes its cell's interruption cleanly (checkpoint, run.json, no cell result);
    if the parent dies, even by SIGKILL, the workers notice and stop (see
    :func:`geofuse._signals.init_worker`).

    Raises:
        WorkerDiedError: a worker process died (killed from outside) while cells were left.
    """
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                               initializer=init_worker, initargs=(os.getpid(),))
    fn = functools.partial(run_in_worker, fn)
    pending: set[Future[dict[str, Any]]] = {pool.submit(fn, ctx, cell) for cell in cells}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                on_done(future.result())  # raises the worker's exception
    except BrokenProcessPool:
        _stop_workers(pool)
        raise WorkerDiedError(
            "a worker process died before its cell finished (killed from outside, or out of "
            "memory); finished cells are kept: run the same command again to continue "
            "(with fewer --workers if memory ran out)"
        ) from None
    except BaseException:
        _stop_workers(pool)
        raise
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _stop_workers(pool: ProcessPoolExecutor, grace_s: float = 60.0) -> None:
    """Queue no further cell, SIGTERM every live worker (each stops its cell cleanly and
    exits), then SIGKILL after ``grace_s`` seconds those still running."""
    processes = multiprocessing.active_children()  # this process's workers
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(timeout=5.0)


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise ConfigError(
            "Ray is not installed but ablation.ray.address / --ray is set; install it with "
            "'pip install ray' or drop the Ray address"
        ) from None
    return ray


#: Seconds to wait for the Ray head to accept a connection before giving up.
CONNECT_TIMEOUT_S = 10.0
_RAY_CLIENT_PORT = 10001
_FIX = ("start the cluster with `ray start --head` (and `ray start --address=HEAD:PORT` on "
        "the other nodes) or check ablation.ray.address / --ray")


def _unreachable(address: str, why: str) -> ConfigError:
    return ConfigError(f"cannot connect to the Ray cluster at {address!r} ({why}); {_FIX}")


def _split_host_port(address: str, hostport: str, default_port: int | None) -> tuple[str, int]:
    host, sep, port = hostport.rpartition(":")
    if not sep or "]" in port:  # no port (an IPv6 literal has ':' inside brackets)
        host, port = hostport, ""
    host = host.strip("[]")
    if not port and default_port is not None:
        return host, default_port
    if not host or not port.isdigit():
        raise ConfigError(
            f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, ray://HOST:10001, "
            "auto or local); give the address `ray start --head` printed in "
            "ablation.ray.address / --ray"
        )
    return host, int(port)


def _bootstrap_address(address: str) -> tuple[str, int]:
    """Host and port that ``ray.init(address=address)`` will connect to first."""
    try:  # resolve 'auto' / RAY_ADDRESS and localhost the way ray.init does
        from ray._private import services
    except ImportError:  # pragma: no cover - private module moved: check what we can
        services = None
    given = address
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or address
    if address == "auto" and services is not None:
        try:
            address = services.canonicalize_bootstrap_address_or_die(address)
        except (ConnectionError, ValueError) as err:
            raise _unreachable(given, " ".join(str(err).split())) from None
    if address.startswith("ray://"):  # Ray Client server of the head
        return _split_host_port(given, address[len("ray://"):].rstrip("/"), _RAY_CLIENT_PORT)
    host, port = _split_host_port(given, address, None)
    if services is not None:
        with contextlib.suppress(Exception):  # keep the host as given
            host = services.resolve_ip_for_localhost(host)
    return host, port


def check_ray_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast when nothing listens at a Ray ``address`` (ray.init would retry for minutes).

    Raises:
        ConfigError: the address is malformed, or no Ray head answers within ``timeout`` s.
    """
    host, port = _bootstrap_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        raise _unreachable(address, f"no answer from {host}:{port} within {timeout:g} s") from None
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise _unreachable(address, f"{host}:{port}: {reason.lower()}") from None


def _connect(ray: Any, address: str, local_cpus: int | None) -> None:
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address == "local":
        ray.init(num_cpus=local_cpus or os.cpu_count(), **kwargs)
        return
    # Workers of a running cluster import geofuse from their own environment (``pip
    # install`` it on every node); no runtime_env is shipped with the job, so one given by
    # ``ray job submit --runtime-env-json`` applies. Cell paths are absolute: the study
    # folder must be on a filesystem that every node mounts at the same path.
    check_ray_address(address)
    kwargs.pop("include_dashboard")  # only for a cluster started by ray.init
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        why = " ".join(str(err).split())[:300]
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            why += ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token and "
                    "its token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
        raise _unreachable(address, why) from None


def run_ray(
    fn: CellFn, ctx: Any, cells: list[dict[str, Any]], address: str, num_cpus: float,
    on_done: OnDone, local_cpus: int | None = None, num_gpus: float = 0.0,
) -> None:
    """Cells as Ray tasks on ``address``: 'local' starts a Ray instance in this process;
    HOST:PORT, 'auto' or ray://HOST:PORT connect to a running cluster (``ray start``).

    An already initialised Ray session is used as is (and left running); a session started
    here is shut down at the end (a cluster connected to keeps running).

    Each cell reserves ``num_cpus`` CPUs and ``num_gpus`` GPUs of the cluster.

    Raises:
        ConfigError: the cluster at ``address`` cannot be reached (checked within
            :data:`CONNECT_TIMEOUT_S` seconds instead of Ray's minutes of retries), or it has
            fewer GPUs than one cell reserves (the cells would wait forever).
    """
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        _connect(ray, address, local_cpus)
        started = True
    try:
        gpus = ray.cluster_resources().get("GPU", 0.0)
        if num_gpus > gpus:
            raise ConfigError(
                f"ablation.ray.num_gpus_per_cell = {num_gpus:g}, but the Ray cluster at "
                f"{address!r} has {gpus:g} GPU(s): no cell could start; add GPU nodes or "
                "lower it (0 trains the cells on CPUs)"
            )
        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(fn)
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
