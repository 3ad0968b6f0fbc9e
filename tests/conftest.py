"""Session-wide fixtures: a small pool, an isolated compile cache, and one Dask client for
every in-process run."""

from __future__ import annotations

import contextlib

import pytest

from d2scale.backends import dask_client as _REAL_DASK_CLIENT
from d2scale.pool.synth import write_pool


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory) -> str:
    """A 4-shard, 3,000-row synthetic pool with all four npz layouts (built once per session)."""
    path = str(tmp_path_factory.mktemp("pool"))
    write_pool(path, rows=3000, shards=4, seed=11, layout="mixed")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("D2SCALE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


class _SessionClient:
    """One local Dask cluster (2 threads) for the whole session, started on first use."""

    def __init__(self) -> None:
        self._context = None
        self.client = None

    def get(self):
        if self.client is None:
            self._context = _REAL_DASK_CLIENT(workers=2)
            self.client = self._context.__enter__()
        return self.client

    def close(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)


@pytest.fixture(scope="session")
def _session_clients():
    holder = _SessionClient()
    yield holder
    holder.close()


@pytest.fixture
def session_client(_session_clients):
    """The session's Dask client."""
    return _session_clients.get()


@pytest.fixture(autouse=True)
def _shared_cluster(request, _session_clients, monkeypatch):
    """Runs in this process that would start their own local cluster use the session's
    instead (starting one per run cost seconds each); runs given a scheduler still connect
    to it. Selections are identical for any worker count, so nothing checked changes. Tests
    of the cluster itself are marked ``own_cluster``."""
    if request.node.get_closest_marker("own_cluster"):
        yield
        return
    from d2scale import backends
    from d2scale.select import pipeline

    @contextlib.contextmanager
    def shared(scheduler=None, workers=None, scheduler_file=None):
        if scheduler or scheduler_file:
            with _REAL_DASK_CLIENT(scheduler, workers, scheduler_file) as client:
                yield client
        else:
            yield _session_clients.get()

    monkeypatch.setattr(backends, "dask_client", shared)
    monkeypatch.setattr(pipeline, "dask_client", shared)
    yield
