"""Replica, variant and sweep processes on a Dask cluster (``--repro-executor=dask``).

Each worker process (a fresh ``python -m pytest`` with ``--repro-worker=SPEC``) is started by a
Dask task instead of a local thread, through the same ``concurrent.futures`` interface, so the
replica pool does not change. A variant that needs a GPU (``cuda``, ``cuda:deterministic``,
``tf32=on``) is submitted with ``resources={"GPU": 1}``: Dask runs it only on a worker started
with that resource (``dask worker ... --resources GPU=1``), so one session can compare a CPU box
with a GPU box. The Dask workers must see the parent's temporary and report folders (a shared
filesystem), as for sweeps. With no scheduler address a LocalCluster on loopback is started.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

GPU_RESOURCE = "GPU"


class DaskUnavailable(RuntimeError):
    """Dask is not installed or the scheduler cannot be reached; the message says what to do."""


def start_dask(address: str | None, workers: int) -> tuple[Any, Any]:
    """``(client, cluster)``: a client of the scheduler at ``address`` (cluster None), or of a
    new LocalCluster on loopback with ``workers`` single-threaded worker processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DaskUnavailable(
            "--repro-executor=dask needs Dask: pip install 'repro-check[dask]'"
        ) from None
    if address:
        try:
            check_scheduler(address)
        except ConnectionError as exc:
            raise DaskUnavailable(str(exc)) from None
        return Client(address), None
    cluster = LocalCluster(
        n_workers=max(1, workers),
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    return Client(cluster), cluster


def has_gpu_workers(client: Any) -> bool:
    """Whether a worker of the cluster declares a GPU resource."""
    workers = client.scheduler_info().get("workers", {})
    return any((w.get("resources") or {}).get(GPU_RESOURCE) for w in workers.values())


def needs_gpu(fn: Callable[..., Any]) -> bool:
    """A worker job (``job.run``) of a replica spec whose settings put it on a CUDA device."""
    job = getattr(fn, "__self__", None)
    settings = getattr(getattr(job, "spec", None), "settings", None) or {}
    return settings.get("device") == "cuda"


class ResourceExecutor(Executor):
    """Submits worker jobs to a Dask client, GPU jobs with ``resources={"GPU": 1}``."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """A Dask future (``done``/``result``/``exception`` as concurrent.futures has them)."""
        resources = {GPU_RESOURCE: 1} if needs_gpu(fn) else None
        return self.client.submit(fn, *args, pure=False, resources=resources, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The client belongs to the session, which closes it."""


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """Fail at once, with the fix, when a Dask scheduler cannot be reached (``distributed``
    itself retries for 30 s and then fails mid-session); schemes other than tcp/tls are left
    to Dask."""
    import socket
    from urllib.parse import urlsplit

    where = f"--repro-dask-scheduler={address}"
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls"):
        return
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        host, port = None, None
    if not host or port is None:
        raise ConnectionError(f"{where}: expected HOST:PORT, e.g. tcp://10.0.0.5:8786")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ConnectionError(
            f"{where}: cannot reach the Dask scheduler ({exc.strerror or exc}); start it "
            f"(dask scheduler) or leave the option out to run a local cluster"
        ) from None
