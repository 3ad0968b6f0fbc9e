"""Bad input through the real CLI: one table of cases, each an input (a change to a
generated pool, or arguments) and the one-line error it must give.

Every case runs ``d2scale select`` / ``graph`` / ``mp`` through the CLI's ``main`` in this
process (interpreter start-up per case cost minutes in all) and asserts: exit
status 1, exactly one stderr line ``d2scale: error: …`` holding the expected fragment, no
traceback anywhere, and no output that looks complete (no ``uids*.npy``, ``run.json``,
``ranking.parquet``, graph arrays or order file). A second, shorter table lists inputs that
must be *accepted* and select exactly what the unchanged pool selects.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clirun import CliResult, run_cli

from d2scale.pool.synth import write_pool

FAST = ("--quiet", "--workers", "1", "--index", "exact")
ROWS, SHARDS = 240, 3  # shards 0, 1, 2: f16 deflated, f32 stored, f16 stored ("mixed")
SCORE = "clip_l14_similarity_score"
SG, S = ("select", "graph"), ("select",)


def _has_s3fs() -> bool:
    try:
        import s3fs  # noqa: F401
    except ImportError:
        return False
    return True


# -- pool mutations: each returns a function that changes a copy of the base pool ---------


def drop(*names: str) -> Callable:
    def f(pool):
        for name in names:
            os.remove(os.path.join(pool, name))

    return f


def drop_all(pool):
    for name in os.listdir(pool):
        os.remove(os.path.join(pool, name))


def as_directory(name: str) -> Callable:
    """``name`` becomes a directory holding the file as ``part-0`` (a Spark-style dataset)."""

    def f(pool):
        path = os.path.join(pool, name)
        os.rename(path, path + ".tmp-file")
        os.mkdir(path)
        os.rename(path + ".tmp-file", os.path.join(path, "part-0" + os.path.splitext(name)[1]))

    return f


def broken_link(name: str) -> Callable:
    def f(pool):
        os.remove(os.path.join(pool, name))
        os.symlink(os.path.join(pool, "gone", name), os.path.join(pool, name))

    return f


def rename(src: str, dst: str) -> Callable:
    return lambda pool: os.rename(os.path.join(pool, src), os.path.join(pool, dst))


def member(shard: int, key: str, make: Callable[[np.ndarray], np.ndarray]) -> Callable:
    """Rewrite (or add) one npz member (``make`` maps the old array, or None, to the new)."""

    def f(pool):
        path = os.path.join(pool, f"{shard:08d}.npz")
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays[key] = make(arrays.get(key))
        np.savez(path, **arrays)

    return f


def drop_member(shard: int, key: str) -> Callable:
    def f(pool):
        path = os.path.join(pool, f"{shard:08d}.npz")
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files if k != key}
        np.savez(path, **arrays)

    return f


def column(shard: int, name: str, make: Callable[[pa.ChunkedArray], pa.Array]) -> Callable:
    """Rewrite one parquet column (``make`` maps the old column to the new one)."""

    def f(pool):
        path = os.path.join(pool, f"{shard:08d}.parquet")
        table = pq.read_table(path)
        i = table.column_names.index(name)
        pq.write_table(table.set_column(i, name, make(table.column(name))), path)

    return f


def every_shard(make: Callable[[int], Callable]) -> Callable:
    def f(pool):
        for s in range(SHARDS):
            make(s)(pool)

    return f


def replace(values: dict[int, object]) -> Callable:
    """A column maker: the old values with some rows replaced (type inferred again)."""

    def make(col):
        out = col.to_pylist()
        for i, v in values.items():
            out[i] = v
        return pa.array(out)

    return make


def repeated(*values) -> Callable:
    return lambda col: pa.array(list(values) * (len(col) // len(values)))


def damage(shard: int, key: str, at: float) -> Callable:
    """Overwrite 64 bytes of a member's stored data, ``at`` (a fraction) into it."""

    def f(pool):
        path = os.path.join(pool, f"{shard:08d}.npz")
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(f"{key}.npy")
        with open(path, "r+b") as fh:
            fh.seek(info.header_offset + 26)
            name_len, extra_len = np.frombuffer(fh.read(4), "<u2")
            start = info.header_offset + 30 + int(name_len) + int(extra_len)
            fh.seek(start + max(2, int(at * info.compress_size)))
            fh.write(bytes(range(7, 71)))

    return f


def truncate(name: str) -> Callable:
    def f(pool):
        path = os.path.join(pool, name)
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)

    return f


def write_bytes(name: str, data: bytes) -> Callable:
    def f(pool):
        with open(os.path.join(pool, name), "wb") as fh:
            fh.write(data)

    return f


def reembed(shard: int) -> Callable:
    """Another seed's embeddings for one shard: same name, rows, byte size and mtime."""

    def f(pool):
        other = os.path.join(os.path.dirname(pool), "reembedded")
        if not os.path.isdir(other):
            write_pool(other, rows=ROWS, shards=SHARDS, seed=8, layout="mixed")
        path = os.path.join(pool, f"{shard:08d}.npz")
        before = os.stat(path)
        shutil.copyfile(os.path.join(other, f"{shard:08d}.npz"), path)
        assert os.path.getsize(path) == before.st_size
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    return f


def untouched(pool):
    """No change: the case gets its own copy (it may write into the pool directory)."""


def also(*fs: Callable) -> Callable:
    def f(pool):
        for g in fs:
            g(pool)

    return f


def slice_rows(shard: int, start: int, members: bool = False) -> Callable:
    """Keep the parquet rows from ``start`` on (and the npz rows too with ``members``)."""

    def f(pool):
        path = os.path.join(pool, f"{shard:08d}.parquet")
        pq.write_table(pq.read_table(path).slice(start), path)
        if members:
            with np.load(os.path.join(pool, f"{shard:08d}.npz")) as z:
                arrays = {k: z[k][start:] for k in z.files}
            np.savez(os.path.join(pool, f"{shard:08d}.npz"), **arrays)

    return f


def mp_file(name: str, data) -> Callable:
    """For ``mp`` cases: write ``data`` (an array → .npy, bytes → raw) into the case dir."""

    def f(case_dir):
        path = os.path.join(case_dir, name)
        if isinstance(data, bytes):
            with open(path, "wb") as fh:
                fh.write(data)
        else:
            np.save(path, data, allow_pickle=True)

    return f


def mp_graph(change: Callable) -> Callable:
    """For ``mp`` cases: a copy of the graph directory, changed, at ``{dir}/g``."""

    def f(case_dir, graph):
        shutil.copytree(graph, os.path.join(case_dir, "g"))
        change(os.path.join(case_dir, "g"))

    return f


# -- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One bad input: ``mutate`` changes a copy of the base pool (``mp``: writes files into
    the case directory); ``args`` are appended to the command line, with ``{pool}``,
    ``{out}``, ``{graph}`` and ``{dir}`` filled in; ``expect`` is a fragment of the error."""

    name: str
    expect: str
    mutate: Callable | None = None
    args: tuple[str, ...] = ()
    graph_change: Callable | None = None


def case(name, expect, commands=SG, *, mutate=None, args=(), graph_change=None, marks=()):
    bad = Bad(name, expect, mutate, tuple(args), graph_change)
    return [pytest.param(bad, c, id=f"{name}-{c}", marks=marks) for c in commands]


_RNG = np.random.default_rng(0)
CASES = [
    # finding 3: rows silently dropped
    *case("npz-without-parquet", "00000001.npz has no matching 00000001.parquet",
          mutate=drop("00000001.parquet")),
    *case("parquet-without-npz", "00000001.parquet has no matching 00000001.npz",
          mutate=drop("00000001.npz")),
    *case("spark-parquet-directory", "is a directory (a Spark-style dataset?)",
          mutate=as_directory("00000001.parquet")),
    *case("npz-directory", "is a directory, not an npz file", mutate=as_directory("00000002.npz")),
    *case("broken-symlink", "00000000.npz in {pool} is a broken symbolic link",
          mutate=broken_link("00000000.npz")),
    *case("upper-case-extension", "must end in lower-case .parquet or .npz",
          mutate=also(rename("00000002.parquet", "00000002.PARQUET"),
                      rename("00000002.npz", "00000002.NPZ"))),
    *case("empty-directory", "(the pool is empty)", mutate=drop_all),
    *case("all-pairs-zero-rows", "has no rows",
          mutate=every_shard(lambda s: slice_rows(s, 80, members=True))),
    *case("metadata-dir-is-a-file", "is a file; pass the directory",
          args=("--metadata-dir", "{pool}/00000000.parquet")),
    *case("metadata-dir-missing", "does not exist", args=("--metadata-dir", "{pool}/nope")),
    *case("memory-url-missing", "does not exist", args=("--metadata-dir", "memory://nope")),
    # finding 12: fsspec protocols
    *case("unknown-protocol", "Protocol not known: foo",
          args=("--metadata-dir", "foo://bucket/pool")),
    *case("s3-without-s3fs", "needs the s3fs package (pip install s3fs)",
          args=("--metadata-dir", "s3://bucket/pool"),
          marks=pytest.mark.skipif(_has_s3fs(), reason="s3fs is installed")),
    # finding 11: embedding dtypes and widths, from the headers
    *case("complex-embeddings", "'l14_img' holds complex64 values",
          mutate=member(1, "l14_img", lambda a: a.astype(np.complex64))),
    *case("int-embeddings", "'l14_txt' holds int32 values",
          mutate=member(2, "l14_txt", lambda a: (a * 100).astype(np.int32))),
    *case("bool-embeddings", "'l14_img' holds bool values",
          mutate=member(0, "l14_img", lambda a: a > 0)),
    *case("object-embeddings", "'l14_img' holds object values",
          mutate=member(1, "l14_img", lambda a: a.astype(object))),
    *case("image-1024-text-512", "'l14_img' has 1024 dimensions but l14 embeddings have 768",
          mutate=also(member(1, "l14_img", lambda a: _RNG.standard_normal((80, 1024))),
                      member(1, "l14_txt", lambda a: _RNG.standard_normal((80, 512))))),
    *case("b32-with-768-columns", "'b32_txt' has 768 dimensions but b32",
          mutate=member(2, "b32_txt", lambda a: _RNG.standard_normal((80, 768)))),
    *case("other-model-complex", "'vit_img' holds complex128 values",
          mutate=member(1, "vit_img", lambda a: np.ones((80, 64)) + 1j)),
    *case("other-model-widths-differ", "'vit_img' has 32 dimensions but in",
          mutate=also(*(member(s, "vit_img", lambda a, w=w: np.ones((80, w)))
                        for s, w in ((0, 64), (1, 64), (2, 32))))),
    *case("3d-embeddings", "has shape (80, 24, 32)",
          mutate=member(0, "l14_img", lambda a: a.reshape(80, 24, 32))),
    *case("1d-embeddings", "has shape (61440,)", mutate=member(0, "l14_img", np.ravel)),
    *case("npz-one-row-short", "row-count mismatch", mutate=member(2, "l14_img", lambda a: a[1:])),
    *case("parquet-one-row-short", "row-count mismatch", mutate=slice_rows(1, 1)),
    *case("missing-member", "has no array 'l14_txt'", mutate=drop_member(1, "l14_txt")),
    *case("nan-embedding", "contains NaN or inf",
          mutate=member(1, "l14_img", lambda a: np.where(np.arange(80)[:, None] == 7, np.nan, a))),
    *case("zero-norm-embedding", "has zero norm",
          mutate=member(2, "l14_txt", lambda a: np.where(np.arange(80)[:, None] == 3, 0, a))),
    # finding 12: damaged files
    *case("damaged-deflate-member", "damaged compressed data",
          mutate=damage(0, "l14_img", at=0.0)),
    *case("damaged-deflate-data", "cannot read embeddings from",
          mutate=damage(0, "l14_img", at=0.5)),
    *case("damaged-stored-data", "cannot read embeddings from",
          mutate=damage(1, "l14_txt", at=0.5)),
    *case("truncated-npz", "not a complete zip/npz file", mutate=truncate("00000002.npz")),
    *case("npz-is-text", "not a complete zip/npz file",
          mutate=write_bytes("00000001.npz", b"not an npz\n")),
    *case("parquet-is-garbage", "cannot read parquet file",
          mutate=write_bytes("00000001.parquet", bytes(range(256)) * 8)),
    *case("parquet-empty-file", "cannot read parquet file",
          mutate=write_bytes("00000002.parquet", b"")),
    *case("truncated-parquet", "cannot read parquet file", mutate=truncate("00000000.parquet")),
    # uids (select reads them; graph does not)
    *case("uid-not-hex", "row 3: malformed uid 'not-hex'", S,
          mutate=column(2, "uid", replace({3: "not-hex"}))),
    *case("uid-over-long", "malformed uid", S, mutate=column(0, "uid", replace({5: "a" * 33}))),
    *case("uid-empty", "row 0: malformed uid ''", S, mutate=column(1, "uid", replace({0: ""}))),
    *case("uid-null", "row 9: the uid is missing (null)", S,
          mutate=column(1, "uid", replace({9: None}))),
    *case("uid-duplicate-across-shards", "duplicate uid", S,
          mutate=lambda p: column(2, "uid", replace(
              {4: pq.read_table(f"{p}/00000000.parquet")["uid"][6].as_py()}))(p)),
    *case("uid-duplicate-by-case", "duplicate uid", S,
          mutate=lambda p: column(1, "uid", replace(
              {4: pq.read_table(f"{p}/00000001.parquet")["uid"][6].as_py().upper()}))(p)),
    *case("uid-int-column", "the uid column must hold strings, found int64", S,
          mutate=column(0, "uid", lambda c: pa.array(range(len(c))))),
    *case("uid-binary-column", "the uid column must hold strings, found binary", S,
          mutate=column(0, "uid", lambda c: c.cast(pa.binary()))),
    *case("uid-column-missing", "column 'uid' is not in", S,
          mutate=lambda p: pq.write_table(
              pq.read_table(f"{p}/00000001.parquet").rename_columns(
                  ["uidx", *pq.read_table(f"{p}/00000001.parquet").column_names[1:]]),
              f"{p}/00000001.parquet")),
    # scores: findings 12 and 13
    *case("score-na-strings", "holds string values (e.g. 'n/a')", S,
          mutate=column(1, SCORE, repeated("n/a", "0.3"))),
    *case("score-list-type", "holds list<element: double> values", S,
          mutate=column(0, SCORE, repeated([0.1], [0.2]))),
    *case("score-column-text", "score column 'text' holds string values", S,
          args=("--score-column", "text")),
    *case("score-column-uid", "score column 'uid' holds string values", S,
          args=("--score-column", "uid")),
    *case("score-column-unknown", "column 'nope' is not in", S, args=("--score-column", "nope")),
    *case("score-numeric-strings", "holds string values (e.g. '0.25')", S,
          mutate=column(2, SCORE, repeated("0.25", "0.3"))),
    *case("score-bool", "holds bool values", S, mutate=column(2, SCORE, repeated(True, False))),
    *case("score-null", "row 2: score column 'clip_l14_similarity_score' is null", S,
          mutate=column(0, SCORE, replace({2: None}))),
    *case("score-inf", "is null, NaN or inf", S, mutate=column(1, SCORE, replace({5: np.inf}))),
    # finding 1: a graph from the pool before it was re-embedded (same names, sizes, mtimes)
    *case("graph-of-reembedded-pool", "was built from a different pool", S,
          mutate=reembed(1), args=("--graph", "{graph}", "--feature-type", "image")),
    *case("graph-of-other-row-count", "has 240 rows but the pool has 160", S,
          mutate=drop("00000002.parquet", "00000002.npz"),
          args=("--graph", "{graph}", "--feature-type", "image")),
    # parameters: existing checks
    *case("fraction-zero", "must be in (0, 1]", S, args=("--fraction", "0")),
    *case("n-neighbors-too-large", "must be smaller than the number of samples (240)",
          args=("--n-neighbors", "240")),
    # parameters and CLI
    *case("empty-metadata-dir", "the 'metadata_dir' parameter must be a non-empty string",
          args=("--metadata-dir", "")),
    *case("out-is-metadata-dir", "is inside the metadata directory", mutate=untouched,
          args=("--out", "{pool}")),
    *case("memory-limit-8", "'memory_limit' parameter must be a size with a unit",
          args=("--memory-limit", "8")),
    *case("seed-negative", "'seed' parameter must be an integer in [0, 4294967295]",
          args=("--seed", "-1")),
    *case("seed-huge-ivf", "'seed' parameter must be an integer in [0, 4294967295]", S,
          args=("--seed", "99999999999", "--index", "ivf")),
    *case("scheduler-not-an-address", "cannot connect to the Dask scheduler at not-an",
          args=("--scheduler", "not-an-address")),
    *case("scheduler-unknown-protocol", "unknown address scheme 'foo'",
          args=("--scheduler", "foo://x:1")),
    *case("argparse-bad-int", "'n_neighbors' parameter must be an integer; got 'abc'",
          args=("--n-neighbors", "abc")),
    *case("argparse-bad-choice", "'index' parameter must be one of auto, exact, ivf",
          args=("--index", "nope")),
    *case("argparse-unknown-flag", "unrecognized arguments: --bogus", args=("--bogus",)),
    *case("fractions-that-collide", "would both be written to uids-0.3.npy", S,
          args=("--fraction", "0.3,0.30000000001")),
    *case("graph-of-other-feature-type", "was built from feature_type image, not from "
          "image_text", S, args=("--graph", "{graph}")),
    *case("graph-of-other-model", "was built from embedding_model l14, not from b32", S,
          args=("--graph", "{graph}", "--feature-type", "image", "--embedding-model", "b32")),
    # mp: a saved graph and a scores file
    *case("mp-scores-missing", "does not exist", ("mp",), args=("--scores", "{dir}/nope.npy")),
    *case("mp-scores-nan", "s.npy: score at row 3 is NaN or inf", ("mp",),
          mutate=mp_file("s.npy", np.where(np.arange(ROWS) == 3, np.nan, 0.5)),
          args=("--scores", "{dir}/s.npy")),
    *case("mp-scores-2d", "must hold a 1-D array of real numbers, found float64 (240, 2)", ("mp",),
          mutate=mp_file("s.npy", np.ones((ROWS, 2))), args=("--scores", "{dir}/s.npy")),
    *case("mp-scores-strings", "must hold a 1-D array of real numbers, found <U3", ("mp",),
          mutate=mp_file("s.npy", np.array(["0.5"] * ROWS)), args=("--scores", "{dir}/s.npy")),
    *case("mp-scores-pickled", "cannot read scores file", ("mp",),
          mutate=mp_file("s.npy", np.array([0.5] * ROWS, dtype=object)),
          args=("--scores", "{dir}/s.npy")),
    *case("mp-scores-short", f"has {ROWS - 1} scores but the graph has {ROWS} rows", ("mp",),
          mutate=mp_file("s.npy", np.ones(ROWS - 1)), args=("--scores", "{dir}/s.npy")),
    *case("mp-budget-negative", "'budget' parameter must be an integer ≥ 0", ("mp",),
          args=("--budget", "-1")),
    *case("mp-gamma-negative", "'gamma' parameter must be a finite number ≥ 0", ("mp",),
          args=("--gamma", "-1")),
    *case("mp-graph-missing", "is not a graph directory", ("mp",),
          args=("--graph", "{dir}/nothing")),
    *case("mp-graph-truncated", "corrupt graph file", ("mp",), args=("--graph", "{dir}/g"),
          graph_change=mp_graph(truncate("neighbors.npy"))),
    *case("mp-scores-text-file", "s.txt is not a .npy file (write it with numpy.save)",
          ("mp",), mutate=mp_file("s.txt", b"0.1\n0.2\n"), args=("--scores", "{dir}/s.txt")),
    *case("mp-scores-complex", "must hold a 1-D array of real numbers, found complex128",
          ("mp",), mutate=mp_file("s.npy", np.ones(ROWS) + 1j), args=("--scores", "{dir}/s.npy")),
]  # fmt: skip


# -- fixtures and the runner ---------------------------------------------------------------


@pytest.fixture(scope="module")
def _blocked_cache(tmp_path_factory) -> str:
    blocker = tmp_path_factory.mktemp("no-cache") / "a-file"
    blocker.write_text("")
    return str(blocker / "cache")


@pytest.fixture(autouse=True)
def _no_sample_pool(_isolated_cache, _blocked_cache, monkeypatch):
    """A cache directory that cannot be created: a run that falls back to the built-in
    sample pool fails at once instead of generating 100,000 rows."""
    monkeypatch.setenv("D2SCALE_CACHE_DIR", _blocked_cache)


def run(*args) -> CliResult:
    """The command in this process (the exit status on signals is tested in test_pipeline)."""
    return run_cli(*args)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("bad-input") / "base")
    write_pool(path, rows=ROWS, shards=SHARDS, seed=7, layout="mixed")
    return path


@pytest.fixture(scope="module")
def graph(base) -> str:
    """An image-feature l14 graph of the base pool (for --graph and mp cases)."""
    gdir = os.path.join(os.path.dirname(base), "graph")
    proc = run("graph", "--metadata-dir", base, "--out", gdir, *FAST, "--feature-type", "image")
    assert proc.returncode == 0, proc.stderr
    return gdir


@pytest.fixture(scope="module")
def mutated(base):
    """``mutated(name, fn)``: a copy of the base pool changed by ``fn``, made once per name."""
    made: dict[str, str] = {}

    def get(name: str, fn: Callable | None) -> str:
        if fn is None:
            return base
        if name not in made:
            path = os.path.join(os.path.dirname(base), "pools", name, "pool")
            shutil.copytree(base, path)
            fn(path)
            made[name] = path
        return made[name]

    return get


def command_line(bad: Bad, command: str, pool: str, out: str, case_dir: str, graph: str):
    fill = {"pool": pool, "out": out, "graph": graph, "dir": case_dir}
    extra = [a.format(**fill) for a in bad.args]
    if command == "mp":
        np.save(os.path.join(case_dir, "good.npy"), np.linspace(0.1, 0.9, ROWS))
        return ["mp", "--graph", graph, "--scores", f"{case_dir}/good.npy", "--gamma", "0.1",
                "--out", f"{out}/order.npy", "--quiet", *extra]  # fmt: skip
    fast = ["--quiet"]
    if "--scheduler" not in extra:  # --workers sizes only the local cluster
        fast += ["--workers", "1"]
    if "--graph" not in extra:  # a given graph is used as built: --index would warn
        fast += ["--index", "exact"]
    return [command, "--metadata-dir", pool, "--out", out, *fast, *extra]


def assert_refused(proc: CliResult, expect: str, out: str) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, f"exit {proc.returncode}: {proc.stderr}"
    assert len(lines) == 1 and lines[0].startswith("d2scale: error: "), proc.stderr
    assert expect in lines[0], lines[0]
    assert_nothing_complete(out)


def assert_nothing_complete(out: str) -> None:
    if not os.path.isdir(out):
        return
    looks_done = ("run.json", "ranking.parquet", "neighbors.npy", "meta.json", "order.npy")
    found = [f for f in os.listdir(out) if f.startswith("uids") or f in looks_done]
    assert not found, found


@pytest.mark.parametrize(("bad", "command"), CASES)
def test_bad_input_is_one_line_and_exit_1(bad, command, mutated, graph, tmp_path):
    case_dir = str(tmp_path)
    if command == "mp":
        pool = ""
        if bad.mutate is not None:
            bad.mutate(case_dir)
        if bad.graph_change is not None:
            bad.graph_change(case_dir, graph)
    else:
        pool = mutated(bad.name, bad.mutate)
    out = str(tmp_path / "out")
    proc = run(*command_line(bad, command, pool, out, case_dir, graph))
    assert_refused(proc, bad.expect.replace("{pool}", pool), out)
    if command != "mp":
        assert_nothing_complete(pool)  # e.g. --out equal to the pool directory


# -- inputs that must be accepted, selecting what the unchanged pool selects ----------------


def links_to(base: str) -> Callable:
    """Every file of the pool becomes a symbolic link to the base pool's file."""

    def f(pool):
        for name in os.listdir(pool):
            os.remove(os.path.join(pool, name))
            os.symlink(os.path.join(base, name), os.path.join(pool, name))

    return f


def extra_files(pool):
    for name in ("README.txt", "_SUCCESS", ".DS_Store", "00000000.parquet.crc"):
        with open(os.path.join(pool, name), "w") as fh:
            fh.write("not a shard\n")
    os.mkdir(os.path.join(pool, "notes"))


def zero_row_pair(pool):
    """A 0-row pair between two pairs with rows (finding 7: it crashed the IVF build)."""
    table = pq.read_table(os.path.join(pool, "00000000.parquet")).slice(0, 0)
    pq.write_table(table, os.path.join(pool, "00000000b.parquet"))
    with np.load(os.path.join(pool, "00000000.npz")) as z:
        np.savez(os.path.join(pool, "00000000b.npz"), **{k: z[k][:0] for k in z.files})


def all_members(make: Callable[[np.ndarray], np.ndarray]) -> Callable:
    def f(pool):
        for s in range(SHARDS):
            path = os.path.join(pool, f"{s:08d}.npz")
            with np.load(path) as z:
                arrays = {k: make(z[k]) for k in z.files}
            np.savez(path, **arrays)

    return f


def uids(make: Callable[[str], str]) -> Callable:
    return every_shard(lambda s: column(s, "uid", lambda c: pa.array(map(make, c.to_pylist()))))


def uid_type(kind) -> Callable:
    return every_shard(lambda s: column(s, "uid", lambda c: c.cast(kind)))


GOOD = [
    pytest.param("links", (), id="symlinked-files"),
    pytest.param(uid_type(pa.large_string()), (), id="large-string-uids"),
    pytest.param(uid_type(pa.string_view()), (), id="string-view-uids"),
    pytest.param(every_shard(lambda s: column(s, "uid", lambda c: c.dictionary_encode())), (),
                 id="dictionary-uids"),
    pytest.param(uids(str.upper), (), id="upper-case-uids"),
    pytest.param(uids(lambda u: u[:4].lstrip("0") + u[4:]), (), id="uids-shorter-than-32"),
    pytest.param(zero_row_pair, ("--index", "ivf"), id="zero-row-pair-ivf"),
    pytest.param(extra_files, (), id="other-files-beside-the-pairs"),
    pytest.param(all_members(lambda a: a.astype(np.float64)), (), id="float64-embeddings"),
    pytest.param(all_members(lambda a: a.astype(a.dtype.newbyteorder(">"))), (),
                 id="big-endian-embeddings"),
    pytest.param(lambda p: _add_member(p, 1), (), id="extra-npz-member"),
    pytest.param(every_shard(lambda s: column(s, SCORE, lambda c: c.cast(pa.float64()))), (),
                 id="float64-scores"),
]  # fmt: skip


def _add_member(pool: str, shard: int) -> None:
    path = os.path.join(pool, f"{shard:08d}.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(path, dedup_hash=np.arange(80), **arrays)


@pytest.fixture(scope="module")
def baseline(base, tmp_path_factory):
    """``baseline(args)``: uids.npy of the unchanged pool for these extra arguments."""
    done: dict[tuple, np.ndarray] = {}

    def get(args: tuple) -> np.ndarray:
        if args not in done:
            out = tmp_path_factory.mktemp("baseline")
            proc = run("select", "--metadata-dir", base, "--out", out, *FAST, *args)
            assert proc.returncode == 0, proc.stderr
            done[args] = np.load(out / "uids.npy")
        return done[args]

    return get


@pytest.mark.parametrize(("mutate", "args"), GOOD)
def test_accepted_input_selects_what_the_plain_pool_selects(
    mutate, args, base, mutated, baseline, request, tmp_path
):
    fn = links_to(base) if mutate == "links" else mutate
    pool = mutated(request.node.callspec.id, fn)
    proc = run("select", "--metadata-dir", pool, "--out", tmp_path, *FAST, *args)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert np.array_equal(np.load(tmp_path / "uids.npy"), baseline(args))


def test_integer_scores_are_accepted(base, tmp_path):
    proc = run("select", "--metadata-dir", base, "--out", tmp_path, *FAST,
               "--score-column", "original_width")  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert np.load(tmp_path / "uids.npy").shape == (72,)


def test_reembedded_pool_into_an_existing_out_is_not_a_stale_graph(tmp_path):
    """The issue's reproduction: a pool re-embedded into float16-stored npz files (same names,
    rows, byte sizes; here even the same mtimes) selected into an existing --out must rebuild
    its graph and select what a clean run selects."""
    pool, other = tmp_path / "pool", tmp_path / "other"
    write_pool(str(pool), rows=ROWS, shards=2, seed=1, layout="f16-stored")
    write_pool(str(other), rows=ROWS, shards=2, seed=2, layout="f16-stored")
    first = run("select", "--metadata-dir", pool, "--out", tmp_path / "out", *FAST)
    assert first.returncode == 0, first.stderr
    old = np.load(tmp_path / "out" / "uids.npy")
    for s in range(2):
        reembed_from(pool / f"{s:08d}.npz", other / f"{s:08d}.npz")
    again = run("select", "--metadata-dir", pool, "--out", tmp_path / "out", *FAST)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    stages = json.loads((tmp_path / "out" / "run.json").read_text())["stages"]
    assert not stages["read"]["reused"] and not stages["graph"]["reused"]
    clean = run("select", "--metadata-dir", pool, "--out", tmp_path / "clean", *FAST)
    assert clean.returncode == 0, clean.stderr
    new = np.load(tmp_path / "out" / "uids.npy")
    assert np.array_equal(new, np.load(tmp_path / "clean" / "uids.npy"))
    assert not np.array_equal(new, old)  # the old graph would have given a wrong answer


def reembed_from(path, source) -> None:
    before = os.stat(path)
    shutil.copyfile(source, path)
    assert os.path.getsize(path) == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


# -- the lead's part: output sets and resume --------------------------------


def test_ranking_keeps_the_uid_spelling(mutated, tmp_path):
    pool = mutated("upper-case-uids", uids(str.upper))
    proc = run("select", "--metadata-dir", pool, "--out", tmp_path, *FAST)
    assert proc.returncode == 0, proc.stderr
    spelt = pq.read_table(os.path.join(pool, "00000000.parquet"))["uid"].to_pylist()
    assert pq.read_table(tmp_path / "ranking.parquet")["uid"].to_pylist()[:80] == spelt


def test_no_stale_subset_files(base, tmp_path):
    assert run("select", "--metadata-dir", base, "--out", tmp_path, *FAST,
               "--fraction", "0.1,0.3").returncode == 0  # fmt: skip
    proc = run("select", "--metadata-dir", base, "--out", tmp_path, *FAST,
               "--fraction", "0.3", "--gamma", "0.1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("uids")) == ["uids.npy"]


def test_orphan_temporaries_are_removed(base, tmp_path):
    (tmp_path / ".uids.npy.k1ll3d.tmp").write_bytes(b"partial")
    (tmp_path / ".ranking.parquet.k1ll3d.tmp").write_bytes(b"partial")
    proc = run("select", "--metadata-dir", base, "--out", tmp_path, *FAST)
    assert proc.returncode == 0, proc.stderr
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_damaged_graph_part_is_recomputed(base, graph, tmp_path):
    gdir = tmp_path / "g"
    shutil.copytree(graph, gdir)
    truncate("chunk-00001.npz")(str(gdir / "parts"))
    proc = run("graph", "--metadata-dir", base, "--out", gdir, *FAST, "--feature-type", "image")
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(gdir / "neighbors.npy"), np.load(f"{graph}/neighbors.npy"))


def test_recall_of_an_exact_graph_warns_and_keys_nothing(base, tmp_path):
    """An exact graph has no recall target: `graph` warns as `select` does, and another
    --recall resumes the same graph (it was refused) and reuses select's graph stage."""
    gdir, recall = tmp_path / "g", "changes nothing: an exact index has no recall target"
    proc = run("graph", "--metadata-dir", base, "--out", gdir, *FAST, "--recall", "0.5")
    assert proc.returncode == 0 and f"d2scale: warning: --recall 0.5 {recall}" in proc.stderr
    proc = run("graph", "--metadata-dir", base, "--out", gdir, *FAST, "--recall", "0.8")
    assert proc.returncode == 0, proc.stderr
    auto = ("--quiet", "--workers", "1", "--recall", "0.7")
    proc = run("graph", "--metadata-dir", base, "--out", tmp_path / "a", *auto)
    assert proc.returncode == 0 and "--index auto built an exact graph" in proc.stderr
    for value in ("0.5", "0.8"):
        proc = run("select", "--metadata-dir", base, "--out", tmp_path / "s", *FAST,
                   "--recall", value)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "s" / "run.json").read_text())["stages"]["graph"]["reused"]


@pytest.mark.parametrize(
    "how", [("--buckets", str(ROWS + 1)), ("--method", f"d2:buckets={ROWS + 1}")]
)
def test_more_buckets_than_rows_is_refused_before_the_graph(base, tmp_path, how):
    """Every row was a bucket of its own: no edge left, the order by forward score alone."""
    proc = run("select", "--metadata-dir", base, "--out", tmp_path, *FAST, *how)
    assert proc.returncode == 1 and proc.stderr.startswith("d2scale: error: "), proc.stderr
    assert f"({ROWS + 1}) is more than the {ROWS} nodes" in proc.stderr
    assert not [d for d in os.listdir(tmp_path / "work") if d.startswith("graph")]
