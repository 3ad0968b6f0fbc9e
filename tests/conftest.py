import pytest

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
