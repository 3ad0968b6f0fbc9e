"""Where work runs: device resolution (``"auto"`` → ``"cpu"``/``"cuda"``), CPU threads, memory
facts and the Dask client (a local cluster on loopback, or a running one).

``resolve_device`` is the one place that decides the device: ``"auto"`` is CUDA only where
a GPU is usable *and* the requested variant exists there; CPU-only variants (standby,
bucketed) fall back to the CPU before any work starts, and an explicit ``"cuda"`` for them,
or where no GPU is usable, is refused at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from d2scale.errors import D2ScaleError
from d2scale.params import check

MIN_ROWS_PER_THREAD = 65536  # below this, thread start-up costs more than it saves
CHUNKS_PER_THREAD = 4  # work items per thread: a preempted thread delays the end less
MMAP_THRESHOLD = 16 << 20  # glibc: allocations from this size are mapped, and unmapped on free
_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers (malloc.h)


def _libc():
    """The C library, or None where it is not glibc (no ``mallopt``/``malloc_trim``)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
            return libc
    return None


def bound_heap_growth() -> None:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD``. By default it grows to the largest
    block freed so far (up to 32 MiB), after which the many mid-sized arrays of a sharded
    build come from the heap, whose freed pages stay resident: resident memory then creeps
    up shard after shard (100k rows at a 128 MB limit: 0.79 → 0.73 GiB peak with this).
    Dask sets ``MALLOC_TRIM_THRESHOLD_`` for its worker processes for the same reason."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_free_pages() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; milliseconds)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (bytes): Linux's ``VmHWM``, which starts
    afresh with the program. (``ru_maxrss`` survives ``exec``: a d2scale started by a large
    process would report that process's size.) Elsewhere ``ru_maxrss`` (macOS: bytes)."""
    import resource
    import sys

    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def rss_bytes() -> int:
    """This process's resident memory now (bytes; Linux's ``VmRSS``, elsewhere psutil's)."""
    rss = _proc_status_bytes("VmRSS")
    if rss is not None:
        return rss
    import psutil

    return int(psutil.Process().memory_info().rss)


def _proc_status_bytes(field: str) -> int | None:
    """A kB field of Linux's ``/proc/self/status`` in bytes; None where there is none."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return None


def cuda_available() -> bool:
    """True when cupy imports and sees at least one CUDA device; never raises."""
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:
        return False


def torch_cuda_available() -> bool:
    """True when torch imports and sees a CUDA device; never raises."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


_RUNTIMES = {  # who runs the GPU work: its availability check and what to install
    "cupy": (cuda_available, "CuPy (pip install 'd2scale[gpu]')"),
    "torch": (torch_cuda_available, "torch with CUDA"),
}


def resolve_device(device: str, cpu_only: str | None = None, runtime: str = "cupy") -> str:
    """``"cpu"`` or ``"cuda"`` for ``device`` (one of :data:`~d2scale.params.DEVICES`), the
    one place every command decides it: ``auto`` is CUDA when ``runtime`` (``cupy`` or
    ``torch``) sees a GPU; ``cuda`` without one is refused before any work. ``cpu_only``
    names the requested variant when it exists only on the CPU (e.g. ``"--greedy standby"``)."""
    check("device", device)
    available, needs = _RUNTIMES[runtime]
    if device == "auto":
        return "cuda" if cpu_only is None and available() else "cpu"
    if device == "cuda" and cpu_only is not None:
        raise D2ScaleError(f"{cpu_only} runs on the CPU only: use --device cpu or --device auto.")
    if device == "cuda" and not available():
        raise D2ScaleError(
            f"--device cuda needs a CUDA GPU that {needs} can use, and none was found: use "
            "--device cpu or --device auto."
        )
    return device


COMPILING_NOTICE = (
    "compiling numba kernels that this environment has not cached yet (seconds "
    "each, on their first use only)"
)


@contextlib.contextmanager
def announcing_compiles(say: Callable[[str], None]) -> Iterator[None]:
    """Inside the block, say :data:`COMPILING_NOTICE` once when the first numba kernel of
    this process compiles. numba signals only real compilations (a kernel without a usable
    on-disk cache), so a run that compiles nothing says nothing, and a kernel that this run
    never calls is not announced. Kernels compiled on the workers of a remote cluster are
    not seen."""
    from numba.core import event

    class FirstCompile(event.Listener):
        said = False

        def on_start(self, _event) -> None:
            if not self.said:  # under numba's compiler lock
                self.said = True
                say(COMPILING_NOTICE)

        def on_end(self, _event) -> None:
            pass

    listener = FirstCompile()
    event.register("numba:compile", listener)
    try:
        yield
    finally:
        event.unregister("numba:compile", listener)


def cpu_threads() -> int:
    """Threads available: the CPUs of this process, or ``NUMBA_NUM_THREADS`` if set."""
    return max(1, int(os.environ.get("NUMBA_NUM_THREADS", len(os.sched_getaffinity(0)))))


def n_threads(n_rows: int) -> int:
    """Threads worth using for ``n_rows`` rows."""
    return max(1, min(cpu_threads(), n_rows // MIN_ROWS_PER_THREAD))


def n_chunks_for(n_rows: int) -> int:
    """Work items for ``n_rows`` rows: 1 when one thread is used."""
    threads = n_threads(n_rows)
    return 1 if threads == 1 else CHUNKS_PER_THREAD * threads


def run_chunks(kernel: Callable, n: int, n_chunks: int, *args) -> list:
    """Call ``kernel(lo, hi, c, *args)`` on ``n_chunks`` contiguous slices of ``range(n)``.

    The slices are work items for a pool of :func:`cpu_threads` threads, so ``kernel`` must
    release the GIL (numba ``nogil=True``).
    """
    bounds = [(c * n // n_chunks, (c + 1) * n // n_chunks, c) for c in range(n_chunks)]
    threads = min(n_chunks, cpu_threads())
    if threads == 1:
        return [kernel(*b, *args) for b in bounds]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda b: kernel(*b, *args), bounds))


def _quiet_dask_logs() -> None:
    for name in ("distributed", "bokeh", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None, workers: int | None = None, scheduler_file: str | None = None
) -> Iterator:
    """A ``distributed.Client``: to a running cluster (``scheduler`` address or
    ``scheduler_file``), else to a local in-process cluster.

    The local cluster runs one worker with ``workers`` threads (default: all cores); NumPy,
    faiss and the compiled kernels release the GIL, so threads use every core.
    """
    import distributed  # noqa: F401  (its import configures logging: quiet it afterwards)

    _quiet_dask_logs()
    check_cluster_options(scheduler, scheduler_file, workers)
    if scheduler or scheduler_file:
        with _remote_client(scheduler, scheduler_file) as client:
            yield client
        return
    from distributed import Client, LocalCluster

    threads = workers or os.cpu_count() or 1
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=threads,
            processes=False,  # in-process: the scheduler and worker talk inproc://, no port
            # The scheduler's and the worker's HTTP servers (health, metrics) on loopback and
            # a free port (concurrent runs must not collide on 8787); no dashboard.
            dashboard_address=LOOPBACK_ANY_PORT,
            worker_dashboard_address=LOOPBACK_ANY_PORT,
            scheduler_kwargs={"dashboard": False},
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def check_cluster_options(
    scheduler: str | None, scheduler_file: str | None, workers: int | None = None
) -> None:
    """Refuse both cluster options at once, ``workers`` (the local cluster's threads) with
    either, or a scheduler file that does not exist."""
    if scheduler and scheduler_file:
        raise D2ScaleError("give either --scheduler or --scheduler-file, not both.")
    if workers is not None and (scheduler or scheduler_file):
        raise D2ScaleError(
            "--workers sets the threads of the local cluster; a running cluster "
            "(--scheduler, --scheduler-file) has its own workers: drop --workers."
        )
    if scheduler_file and not os.path.exists(scheduler_file):
        raise D2ScaleError(
            f"the scheduler file {scheduler_file} does not exist; start the scheduler with "
            "`dask scheduler --scheduler-file FILE` first."
        )


WORKER_WAIT_S = 60  # how long a run waits for the first worker of a running cluster
CONNECT_TIMEOUT = "20s"  # connecting to a scheduler that accepts the connection
PROBE_TIMEOUT_S = 3.0  # a scheduler's port that neither accepts nor refuses by then: refused
LOOPBACK_ANY_PORT = "127.0.0.1:0"


@contextlib.contextmanager
def _remote_client(scheduler: str | None, scheduler_file: str | None) -> Iterator:
    from distributed import Client

    where = scheduler or f"the address in {scheduler_file}"
    error = None
    try:
        _probe(scheduler or _file_address(scheduler_file))
        if scheduler:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        else:
            client = Client(scheduler_file=scheduler_file, timeout=CONNECT_TIMEOUT)
    except (OSError, ValueError, TypeError, KeyError) as e:
        error = f"cannot connect to the Dask scheduler at {where}: {e}"
    if error is not None:
        # The half-built Client is garbage now: collect it here. Left to a later GC pass, its
        # __del__ can run inside the next Client's start and deadlock on distributed's
        # loop-runner lock (seen in the full test suite).
        gc.collect()
        raise D2ScaleError(error)
    with client:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (OSError, TimeoutError):
            raise D2ScaleError(
                f"the Dask scheduler at {where} has no workers (waited {WORKER_WAIT_S} s); "
                "start some with `dask worker ADDRESS`."
            ) from None
        yield client


def _file_address(scheduler_file: str) -> str:
    """The scheduler address a scheduler file names."""
    import json

    with open(scheduler_file) as f:
        return json.load(f)["address"]


def _probe(address: str) -> None:
    """Fail at once (``OSError``, one line) when nothing accepts TCP connections at a
    ``tcp://`` or ``tls://`` ``address``: Dask's client retries a refused connection until
    its timeout (20 s). Other addresses are left to Dask."""
    import socket

    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    protocol, location = parse_address(address)
    if protocol not in ("tcp", "tls"):
        return
    host, port = parse_host_port(location)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except TimeoutError:
        raise OSError(f"no answer from {host}:{port} within {PROBE_TIMEOUT_S:g} s") from None
    except OSError as e:
        raise OSError(e.strerror or str(e)) from None


def cluster_facts(client) -> dict:
    """What ``run.json`` says about the cluster: scheduler, workers and, on a running
    cluster, its dashboard address (the local cluster serves none)."""
    info = client.scheduler_info()
    workers = info.get("workers", {})
    remote = client.cluster is None
    return {
        "scheduler": client.scheduler.address,
        "workers": len(workers),
        "threads": sum(w.get("nthreads", 0) for w in workers.values()),
        "dashboard": client.dashboard_link
        if remote and "dashboard" in info.get("services", {})
        else None,
    }


def worker_peak_rss(client) -> dict[str, int]:
    """Peak resident memory of each worker process of ``client``'s cluster (bytes)."""
    try:
        return {addr: int(v) for addr, v in client.run(peak_rss_bytes).items()}
    except (OSError, TimeoutError, ValueError):
        return {}
