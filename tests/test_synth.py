"""``d2scale synth``: deterministic pools; ``--embeddings`` writes a subset of the same values."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from d2scale.cli.main import main
from d2scale.errors import D2ScaleError
from d2scale.pool.synth import MEMBERS, write_pool


def _members(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_a_subset_of_members_holds_the_same_values_and_scores(tmp_path):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    write_pool(full, rows=400, shards=2, seed=6, layout="f16-stored")
    argv = ["synth", "--out", part, "--rows", "400", "--shards", "2", "--seed", "6",
            "--layout", "f16-stored", "--embeddings", "l14_img"]  # fmt: skip
    assert main(argv) == 0
    for name in ("00000000", "00000001"):
        a, b = _members(f"{full}/{name}.npz"), _members(f"{part}/{name}.npz")
        assert sorted(a) == sorted(MEMBERS) and list(b) == ["l14_img"]
        np.testing.assert_array_equal(a["l14_img"], b["l14_img"])
        tables = [pq.read_table(f"{path}/{name}.parquet") for path in (full, part)]
        assert tables[0].equals(tables[1])


def test_the_same_arguments_give_the_same_bytes(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for path in (a, b):
        write_pool(path, rows=300, shards=3, seed=2, layout="mixed")
    for name in ("00000000", "00000001", "00000002"):
        x, y = _members(f"{a}/{name}.npz"), _members(f"{b}/{name}.npz")
        assert all(np.array_equal(x[k], y[k]) for k in MEMBERS)


@pytest.mark.parametrize("bad", [(), ("l14_img", "vit_img")])
def test_unknown_or_no_members_are_refused(tmp_path, bad):
    with pytest.raises(D2ScaleError, match="embeddings must name"):
        write_pool(str(tmp_path / "p"), rows=10, embeddings=bad)


def test_a_file_url_is_its_directory_and_keeps_its_other_pool_refusal(tmp_path, monkeypatch):
    """``--out file://DIR`` over a 2-shard pool would leave DIR's second shard in a 1-shard
    pool; it is refused as ``--out DIR`` is, and writes no ``./file:`` directory."""
    monkeypatch.chdir(tmp_path)
    write_pool(str(tmp_path / "p"), rows=20, shards=2, seed=1)
    with pytest.raises(D2ScaleError, match="already holds 00000001.npz"):
        write_pool(f"file://{tmp_path}/p", rows=10, seed=2)
    write_pool(f"file://{tmp_path}/q", rows=10, seed=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "q"]
    assert pq.read_table(tmp_path / "q" / "00000000.parquet").num_rows == 10


def test_a_run_stopped_midway_leaves_no_smaller_pool(tmp_path, monkeypatch):
    """Shards are moved in once all are written: a run killed after 1 of 3 shards left a
    1-shard pool that select read as complete."""
    from d2scale.pool import synth

    write = synth._Plan.write

    def stop_at_the_last(plan, s):
        if s == 2:
            raise KeyboardInterrupt
        write(plan, s)

    monkeypatch.setattr(synth._Plan, "write", stop_at_the_last)
    with pytest.raises(KeyboardInterrupt):
        write_pool(str(tmp_path), rows=30, shards=3, seed=1)
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".parquet", ".npz")]
    monkeypatch.setattr(synth._Plan, "write", write)
    assert write_pool(str(tmp_path), rows=30, shards=3, seed=1) == ["00000000", "00000001",
                                                                      "00000002"]  # fmt: skip
    assert len(list(tmp_path.iterdir())) == 6
