"""End-to-end CLI runs: outputs, the subset-file format, and one-line errors for bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clirun import run_cli

from d2scale.pool.uids import decode_uids

EXE = [sys.executable, "-m", "d2scale.cli.main"]
CHAIN = ("--method", "basic", "--then", "clip-score:0.5", "--then", "d2:0.3")


def run(*args):
    """The command through the CLI's ``main`` in this process."""
    return run_cli(*args)


def select(pool, out, *extra):
    return run("select", "--metadata-dir", pool, "--out", out, "--quiet", "--workers", 2, *extra)


def assert_one_line_error(proc, pattern, out=None):
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("d2scale: error: "), proc.stderr
    assert pattern in lines[0], lines[0]
    if out is not None:
        assert (
            not any(f.startswith("uids") for f in os.listdir(out)) if os.path.isdir(out) else True
        )


def graph_dir(out):
    """The graph directory of a select run, as recorded in its run.json."""
    record = json.loads((out / "run.json").read_text())
    return out.__class__(record["stages"]["graph"]["directory"])


@pytest.fixture(scope="module")
def selected(small_pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    proc = select(small_pool, out, "--fraction", "0.1,0.3", "--n-neighbors", 5)
    assert proc.returncode == 0, proc.stderr
    return out


def test_select_writes_subset_files_ranking_and_run_json(selected, small_pool):
    uids_all = pq.read_table(os.path.join(small_pool, "00000000.parquet"))["uid"].to_pylist()
    for fraction, count in (("0.1", 300), ("0.3", 900)):
        arr = np.load(selected / f"uids-{fraction}.npy")
        assert arr.dtype == np.dtype("u8,u8") and arr.shape == (count,)
        assert np.array_equal(arr, np.sort(arr)) and np.unique(arr).size == count
    small = set(decode_uids(np.load(selected / "uids-0.1.npy")))
    large = set(decode_uids(np.load(selected / "uids-0.3.npy")))
    assert small <= large  # every smaller budget is a prefix of one ordering
    ranking = pq.read_table(selected / "ranking.parquet")
    assert ranking.column_names == ["uid", "score", "forward_score", "rank"]
    assert ranking.num_rows == 3000 and ranking["uid"].to_pylist()[:750] == uids_all
    ranks = ranking["rank"].to_numpy(zero_copy_only=False)
    assert ranking["rank"].null_count == 2100 and sorted(ranks[~np.isnan(ranks)]) == list(
        range(900)
    )
    picked = set(np.array(ranking["uid"].to_pylist())[ranks < 300])
    assert picked == small
    run_json = json.loads((selected / "run.json").read_text())
    assert run_json["counts"]["selected"] == {"0.1": 300, "0.3": 900}
    assert run_json["params"]["score_column"] == "clip_l14_similarity_score"
    assert run_json["input"]["rows"] == 3000 and run_json["input"]["fingerprint"]
    assert {"read", "graph", "forward", "reverse", "total"} <= set(run_json["timings_s"])
    assert run_json["method"]["device"] == "cpu" and run_json["method"]["variant"] == "exact"
    assert "numpy" in run_json["environment"]["packages"]


def test_single_fraction_writes_uids_npy_and_reuses_graph(selected, small_pool, tmp_path):
    proc = select(small_pool, tmp_path, "--graph", graph_dir(selected), "--fraction", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "uids.npy"), np.load(selected / "uids-0.3.npy"))


def test_same_uids_regardless_of_partitioning_and_workers(small_pool, selected, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    # the same 3,000 rows re-split into 5 shards
    tables = [pq.read_table(os.path.join(small_pool, f"{i:08d}.parquet")) for i in range(4)]
    arrays = []
    for i in range(4):
        with np.load(os.path.join(small_pool, f"{i:08d}.npz")) as z:
            arrays.append({k: z[k].astype(np.float32) for k in z.files})
    table = pa.concat_tables(tables)
    merged = {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
    for j, (a, b) in enumerate(
        zip([0, 500, 1100, 1900, 2600], [500, 1100, 1900, 2600, 3000], strict=True)
    ):
        pq.write_table(table.slice(a, b - a), pool / f"part-{j}.parquet")
        np.savez(pool / f"part-{j}.npz", **{k: v[a:b] for k, v in merged.items()})
    proc = select(pool, tmp_path / "out", "--fraction", "0.3", "--workers", 1)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(
        np.load(tmp_path / "out" / "uids.npy"), np.load(selected / "uids-0.3.npy")
    )


def _copy(src, tmp_path):
    dst = tmp_path / "pool"
    shutil.copytree(src, dst)
    return dst


def test_missing_npz(small_pool, tmp_path):
    pool = _copy(small_pool, tmp_path)
    os.remove(pool / "00000001.npz")
    assert_one_line_error(
        select(pool, tmp_path / "o"), "has no matching 00000001.npz", tmp_path / "o"
    )


def test_row_count_mismatch(small_pool, tmp_path):
    pool = _copy(small_pool, tmp_path)
    t = pq.read_table(pool / "00000002.parquet")
    pq.write_table(t.slice(0, 749), pool / "00000002.parquet")
    assert_one_line_error(select(pool, tmp_path / "o"), "row-count mismatch", tmp_path / "o")


@pytest.mark.parametrize("bad", ["nan", "zero"])
def test_bad_embeddings(small_pool, tmp_path, bad):
    pool = _copy(small_pool, tmp_path)
    with np.load(pool / "00000001.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["l14_img"][5] = 0 if bad == "zero" else np.nan
    np.savez(pool / "00000001.npz", **arrays)
    expected = "has zero norm" if bad == "zero" else "contains NaN or inf"
    assert_one_line_error(select(pool, tmp_path / "o"), expected, tmp_path / "o")


@pytest.mark.parametrize(
    ("uid", "expected"), [("not-hex", "malformed uid"), (None, "duplicate uid")]
)
def test_bad_uids(small_pool, tmp_path, uid, expected):
    pool = _copy(small_pool, tmp_path)
    t = pq.read_table(pool / "00000000.parquet")
    uids = t["uid"].to_pylist()
    uids[3] = uid if uid is not None else uids[2]
    pq.write_table(t.set_column(0, "uid", pa.array(uids)), pool / "00000000.parquet")
    assert_one_line_error(select(pool, tmp_path / "o"), expected, tmp_path / "o")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--fraction", "0"), "must be in (0, 1]"),
        (("--fraction", "1.5"), "must be in (0, 1]"),
        (
            ("--n-neighbors", "3000"),
            "n_neighbors (3000) must be smaller than the number of samples (3000)",
        ),
        (("--score-column", "nope"), "column 'nope' is not in"),
        (  # --fraction beside the last step's own fraction would be ignored: refused
            (*CHAIN, "--fraction", "0.2"),
            "--fraction 0.2 and the last step's own fraction (0.3) both say how much to keep",
        ),
    ],
)
def test_bad_parameters(small_pool, tmp_path, args, expected):
    assert_one_line_error(select(small_pool, tmp_path / "o", *args), expected, tmp_path / "o")


def test_empty_pool_and_unwritable_output(small_pool, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(select(empty, tmp_path / "o"), "no .parquet files")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(select(small_pool, blocker / "out"), "not writable")


@pytest.mark.parametrize("command", ["select", "graph"])
def test_a_json_log_in_the_pool_is_refused_before_it_is_written(small_pool, tmp_path, command):
    """The log is appended to from the first event: a pool file given as --log-json was
    damaged before the pool was read."""
    pool = _copy(small_pool, tmp_path)
    shard = pool / "00000000.parquet"
    before = shard.read_bytes()
    proc = run(command, "--metadata-dir", pool, "--out", tmp_path / "o", "--log-json", shard)
    assert_one_line_error(proc, "the JSON log")
    assert shard.read_bytes() == before and not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["run.json", "uids.npy", "ranking.parquet", "report.html",
                                  "report/log.json"])  # fmt: skip
def test_a_json_log_that_is_an_output_file_is_refused(small_pool, tmp_path, name):
    """The commit replaces the output files: the events logged after it were lost."""
    out = tmp_path / "o"
    proc = run("select", "--metadata-dir", small_pool, "--out", out, "--log-json", out / name)
    assert_one_line_error(proc, f"the JSON log {out / name} is a file written into {out}")
    assert not out.exists()


def test_mp_on_a_saved_graph(selected, tmp_path):
    gdir = graph_dir(selected)
    n = np.load(gdir / "neighbors.npy", mmap_mode="r").shape[0]
    scores = np.random.default_rng(0).random(n)
    np.save(tmp_path / "s.npy", scores)
    proc = run("mp", "--graph", gdir, "--scores", tmp_path / "s.npy", "--budget", 100,
               "--gamma", 0.1, "--out", tmp_path / "order.npy")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    order = np.load(tmp_path / "order.npy")
    assert order.dtype == np.int64 and order.shape == (100,) and np.unique(order).size == 100
    bad = run("mp", "--graph", gdir, "--scores", tmp_path / "s.npy", "--budget", n + 1,
              "--gamma", 0.1, "--out", tmp_path / "o2.npy")  # fmt: skip
    assert_one_line_error(bad, f"the 'budget' parameter must be an integer in [0, {n}]")
    np.save(tmp_path / "short.npy", scores[:-1])
    bad = run("mp", "--graph", gdir, "--scores", tmp_path / "short.npy", "--gamma", 0.1,
              "--out", tmp_path / "o3.npy")  # fmt: skip
    assert_one_line_error(bad, f"has {n - 1} scores but the graph has {n} rows")
    bad = run("mp", "--graph", gdir, "--scores", tmp_path / "s.npy", "--gamma", 0.1,
              "--buckets", n + 1, "--out", tmp_path / "o4.npy")  # fmt: skip
    assert_one_line_error(bad, f"the 'buckets' parameter ({n + 1}) is more than the {n:,} nodes")
    assert not any((tmp_path / f"o{i}.npy").exists() for i in (2, 3, 4))


def test_mp_refuses_a_graph_with_ids_out_of_range(tmp_path):
    """``mp`` skips the loader's id pass: the symmetrisation's check answers instead."""
    np.save(tmp_path / "neighbors.npy", np.array([[1], [5]]))
    np.save(tmp_path / "distances.npy", np.ones((2, 1), np.float32))
    np.save(tmp_path / "s.npy", np.ones(2))
    bad = run("mp", "--graph", tmp_path, "--scores", tmp_path / "s.npy", "--gamma", 1.0,
              "--out", tmp_path / "o.npy")  # fmt: skip
    assert_one_line_error(bad, "1 neighbour ids outside [-1, 2)")
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        (("--out", "g/neighbors.npy"), "--out g/neighbors.npy is the same file as --graph's"),
        (("--out", "s.npy"), "--out s.npy is the same file as --scores"),
        (("--out", "o.npy", "--forward-out", "./o.npy"), "the same file as --out"),
    ],
)
def test_mp_refuses_an_output_that_is_an_input_or_the_other_output(
    tmp_path, monkeypatch, outputs, expected
):
    """Writing one of them would replace the graph, the scores or the pick order."""
    (tmp_path / "g").mkdir()
    np.save(tmp_path / "g/neighbors.npy", np.array([[1], [0]]))
    np.save(tmp_path / "g/distances.npy", np.ones((2, 1), np.float32))
    np.save(tmp_path / "s.npy", np.ones(2))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.npy")}
    monkeypatch.chdir(tmp_path)
    bad = run("mp", "--graph", "g", "--scores", "s.npy", "--gamma", 1.0, *outputs)
    assert_one_line_error(bad, expected)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.npy")} == before


def test_mp_writes_no_pick_order_when_the_forward_scores_cannot_be_written(tmp_path):
    np.save(tmp_path / "neighbors.npy", np.array([[1], [0]]))
    np.save(tmp_path / "distances.npy", np.ones((2, 1), np.float32))
    np.save(tmp_path / "s.npy", np.ones(2))
    (tmp_path / "blocker").write_text("a file, not a directory")
    bad = run("mp", "--graph", tmp_path, "--scores", tmp_path / "s.npy", "--gamma", 1.0,
              "--out", tmp_path / "o.npy", "--forward-out", tmp_path / "blocker/f.npy")  # fmt: skip
    assert_one_line_error(bad, "cannot write")
    assert not (tmp_path / "o.npy").exists()


def test_synth_command(tmp_path):
    proc = run("synth", "--out", tmp_path, "--rows", 50, "--shards", 2, "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path)) == [
        "00000000.npz", "00000000.parquet", "00000001.npz", "00000001.parquet"
    ]  # fmt: skip


def test_a_real_process_exits_1_with_one_line(tmp_path):
    """The in-process runs above stand for processes: one real one checks the exit status."""
    proc = subprocess.run([*EXE, "select", "--fraction", "2", "--out", tmp_path],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "d2scale: error: the 'fraction' parameter must be in (0, 1]; got 2.0.\n"
