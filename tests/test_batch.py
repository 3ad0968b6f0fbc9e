"""``d2scale batch``: jobs files checked against the parameter table, a failing bucket that
does not stop the others, reruns that redo only what failed, global selections over the
union of buckets, ``--dry-run``, and bucket pools from globs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from clirun import run_cli

from d2scale.errors import D2ScaleError
from d2scale.params import SelectParams
from d2scale.pool.buckets import resolve_pool
from d2scale.pool.synth import write_pool
from d2scale.progress import Progress
from d2scale.select.batch import parse_batch
from d2scale.select.pipeline import select

ROWS = 500


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """Three 500-row, 2-shard pools a, b, c (different seeds) under one directory."""
    root = tmp_path_factory.mktemp("buckets")
    for seed, name in enumerate("abc", start=1):
        write_pool(str(root / name), rows=ROWS, shards=2, seed=seed)
    return root


def batch_cli(jobs, *flags):
    return run_cli("batch", jobs, "--workers", "2", *flags)


def write_jobs(path, doc: dict):
    path.write_text(yaml.safe_dump(doc))
    return path


def summary(out) -> dict:
    records = json.loads((out / "summary.json").read_text())
    assert isinstance(records, list)
    return {r["name"]: r for r in records}


DEFAULTS = {"fraction": 0.3, "feature_type": "image", "index": "exact"}
DIRECT = {**DEFAULTS, "fraction": [0.3], "workers": 2}  # the same as SelectParams fields


def test_a_corrupt_bucket_fails_alone_and_a_rerun_redoes_only_it(pools, tmp_path):
    bad = tmp_path / "c"
    shutil.copytree(pools / "c", bad)
    npz = bad / "00000001.npz"
    good_bytes = npz.read_bytes()
    npz.write_bytes(b"not a zip file")
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.yaml", {
        "out": "out",  # relative to the jobs file
        "defaults": DEFAULTS,
        "buckets": [
            {"name": "a", "metadata_dir": str(pools / "a")},
            {"name": "b", "metadata_dir": str(pools / "b"), "fraction": 0.2},
            {"name": "c", "metadata_dir": "c"},
        ],
    })  # fmt: skip
    proc = batch_cli(jobs, "--concurrency", "2")
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("d2scale: error: 1 of 3 buckets failed (c)"), proc.stderr
    first = summary(out)
    assert [first[n]["status"] for n in "abc"] == ["ok", "ok", "failed"]
    assert (first["a"]["rows"], first["a"]["kept"]) == (ROWS, int(0.3 * ROWS))
    assert (first["b"]["rows"], first["b"]["kept"]) == (ROWS, int(0.2 * ROWS))
    error = first["c"]["error"]
    assert "\n" not in error and "00000001.npz" in error and "cannot read" in error, error
    assert first["a"]["error"] is None and first["a"]["seconds"] > 0
    assert "c" in proc.stdout and "failed" in proc.stdout  # the printed table
    expected = select(SelectParams(metadata_dir=str(pools / "a"), out=str(tmp_path / "direct"),
                                   **DIRECT), Progress(quiet=True))  # fmt: skip
    assert expected["counts"]["selected"] == {"0.3": first["a"]["kept"]}
    same = np.array_equal(np.load(out / "a" / "uids.npy"), np.load(tmp_path / "direct/uids.npy"))
    assert same, "a bucket's uids differ from a plain select of its pool"
    assert (out / "a" / "report.html").exists() and (out / "index.html").exists()
    stamp = (out / "a" / "run.json").stat().st_mtime_ns

    npz.write_bytes(good_bytes)  # repaired: only c runs again
    again = batch_cli(jobs)
    assert again.returncode == 0, again.stderr
    second = summary(out)
    assert [second[n]["status"] for n in "abc"] == ["ok"] * 3
    assert [second[n]["skipped"] for n in "abc"] == [True, True, False]
    assert (out / "a" / "run.json").stat().st_mtime_ns == stamp
    assert second["c"]["kept"] == int(0.3 * ROWS)


def test_global_selects_once_over_the_union(pools, tmp_path):
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.yaml", {
        "out": str(out), "global": True, "defaults": DEFAULTS,
        "buckets": [{"name": "a", "metadata_dir": str(pools / "a")},
                    {"name": "b", "metadata_dir": str(pools / "b")}],
    })  # fmt: skip
    proc = batch_cli(jobs, "--quiet")
    assert proc.returncode == 0, proc.stderr
    records = summary(out)
    assert sum(r["kept"] for r in records.values()) == int(0.3 * 2 * ROWS)
    assert all(r["status"] == "ok" and r["rows"] == ROWS for r in records.values())
    # the same rows as one directory, files named so that a's come first
    merged = tmp_path / "merged"
    merged.mkdir()
    for bucket in "ab":
        for f in os.listdir(pools / bucket):
            shutil.copy(pools / bucket / f, merged / f"{bucket}-{f}")
    select(SelectParams(metadata_dir=str(merged), out=str(tmp_path / "one"), **DIRECT),
           Progress(quiet=True))  # fmt: skip
    uids = np.load(out / "global" / "uids.npy")
    assert np.array_equal(uids, np.load(tmp_path / "one" / "uids.npy"))
    run = json.loads((out / "global" / "run.json").read_text())
    assert run["input"]["shards"] == ["a/00000000", "a/00000001", "b/00000000", "b/00000001"]


def test_dry_run_lists_and_writes_nothing(pools, tmp_path):
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.yaml", {
        "out": str(out), "defaults": DEFAULTS,
        "buckets": [{"name": "a", "metadata_dir": str(pools / "a")},
                    {"name": "both", "metadata_dir": str(pools / "[ab]"), "gamma": 0.1},
                    {"name": "missing", "metadata_dir": str(tmp_path / "nope")}],
    })  # fmt: skip
    proc = batch_cli(jobs, "--dry-run")
    assert not out.exists()
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("dry run: 3 buckets")
    assert "a: run:" in lines[1] and f"{ROWS:,} rows in 2 shards" in lines[1]
    assert f"{2 * ROWS:,} rows in 4 shards" in lines[2] and "gamma=0.1" in lines[2]
    assert "missing: error:" in lines[3] and "does not exist" in lines[3]
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"buckets": [{"name": "a", "metadata_dir": "x"}]}, "'out'"),
        ({"out": "o", "bucket": []}, "unknown key 'bucket'"),
        ({"out": "o", "buckets": []}, "non-empty list"),
        ({"out": "o", "buckets": [{"name": "a", "metadata_dir": "x", "gama": 1}]},
         "bucket 'a': 'gama' is not a parameter"),
        ({"out": "o", "buckets": [{"name": "a", "metadata_dir": "x", "fraction": 1.5}]},
         r"bucket 'a': the 'fraction' parameter must be in \(0, 1\]"),
        ({"out": "o", "buckets": [{"name": "a", "metadata_dir": "x", "fraction": [0.3, 0.3]}]},
         "bucket 'a': the 'fraction' parameter gives 0.3 twice"),
        ({"out": "o", "buckets": [{"name": "a", "metadata_dir": "x", "method": "random",
          "then": ["random:0.5", "random"], "fraction": 0.7}]},
         "asked for 0.7 of the pool, more than the 0.5"),
        ({"out": "o", "defaults": {"n_neighbors": 0}, "buckets": [{"name": "a",
          "metadata_dir": "x"}]}, "defaults: the 'n_neighbors' parameter must be an integer"),
        ({"out": "o", "buckets": [{"name": "a", "metadata_dir": "x", "out": "y"}]},
         "'out' is set by the batch"),
        ({"out": "o", "buckets": [{"name": "a", "metadata_dir": "x"},
                                  {"name": "a", "metadata_dir": "y"}]}, "two buckets"),
        ({"out": "o", "buckets": [{"name": "../a", "metadata_dir": "x"}]}, "needs a 'name'"),
        ({"out": "o", "global": True, "buckets": [{"name": "a", "metadata_dir": "x",
                                                   "gamma": 2}]}, "global job"),
        ({"out": "o", "concurrency": 0, "buckets": [{"name": "a", "metadata_dir": "x"}]},
         "'concurrency' parameter must be an integer ≥ 1"),
        # methods and step options are checked before anything runs, as select checks them
        ({"out": "o", "defaults": {"method": "nope"}, "buckets": [{"name": "a",
          "metadata_dir": "x"}]}, "bucket 'a': the 'method' parameter must be one of"),
        ({"out": "o", "buckets": [{"name": "a", "metadata_dir": "x", "then": "d2:0.1",
          "fraction": 0.2}]}, "both say how much to keep"),
        # keys that would change nothing: 'name' without global, concurrency with it
        ({"out": "o", "name": "all", "buckets": [{"name": "a", "metadata_dir": "x"}]},
         "'name' names the selection of a global job"),
        ({"out": "o", "global": True, "concurrency": 2,
          "buckets": [{"name": "a", "metadata_dir": "x"}]}, "a global job .global: true. runs one"),
    ],
)  # fmt: skip
def test_jobs_are_checked_against_the_parameter_table(doc, message):
    with pytest.raises(D2ScaleError, match=message):
        parse_batch(doc)


@pytest.mark.parametrize("where", ["out", "log"])
def test_an_out_or_log_in_a_buckets_pool_is_refused_first(pools, tmp_path, where):
    """out: each bucket failed, but summary.json and index.html were written into the
    pool; --log-json: appended to a pool file (select and graph refused it)."""
    pool = tmp_path / "a"
    shutil.copytree(pools / "a", pool)
    before = sorted(os.listdir(pool))
    out = "a" if where == "out" else "out"
    jobs = write_jobs(tmp_path / "jobs.yaml", {"out": out, "defaults": DEFAULTS, "buckets": [
        {"name": "x", "metadata_dir": "a*"}]})  # fmt: skip
    log = ("--log-json", pool / "00000000.parquet") if where == "log" else ()
    proc = batch_cli(jobs, *log)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "inside the metadata directory" in proc.stderr
    assert sorted(os.listdir(pool)) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["summary.json", "x/run.json"])
def test_a_batch_log_that_is_an_output_file_is_refused(pools, tmp_path, name):
    jobs = write_jobs(tmp_path / "jobs.yaml", {"out": "out", "defaults": DEFAULTS, "buckets": [
        {"name": "x", "metadata_dir": str(pools / "a")}]})  # fmt: skip
    (tmp_path / "out" / "x").mkdir(parents=True)  # a rerun: the log can be opened
    proc = batch_cli(jobs, "--log-json", tmp_path / "out" / name)
    assert proc.returncode == 1 and "the JSON log" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "x" / "uids.npy").exists()


def test_cli_errors_are_one_line(tmp_path):
    bad = write_jobs(tmp_path / "jobs.yaml", {"out": "o", "buckets": [
        {"name": "a", "metadata_dir": "x", "seed": -1}]})  # fmt: skip
    for jobs in (bad, tmp_path / "nope.yaml", tmp_path / "jobs.txt"):
        proc = batch_cli(jobs)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(err) == 1 and err[0].startswith("d2scale: error:")
    assert "'seed' parameter" in batch_cli(bad).stderr


def test_toml_and_yaml_give_the_same_batch(tmp_path):
    from d2scale.select.batch import load_jobs

    (tmp_path / "jobs.toml").write_text(
        'out = "o"\n[defaults]\nfraction = 0.3\nfeature_type = "image"\nmemory_limit = "1GB"\n'
        '[[buckets]]\nname = "a"\nmetadata_dir = "/pools/a"\n'
        '[[buckets]]\nname = "b"\nmetadata_dir = "/pools/b"\nfraction = [0.1, 0.2]\n'
    )
    write_jobs(tmp_path / "jobs.yml", {
        "out": "o", "defaults": {"fraction": 0.3, "feature_type": "image", "memory_limit": "1GB"},
        "buckets": [{"name": "a", "metadata_dir": "/pools/a"},
                    {"name": "b", "metadata_dir": "/pools/b", "fraction": "0.1,0.2"}]})  # fmt: skip
    toml = parse_batch(load_jobs(str(tmp_path / "jobs.toml")), str(tmp_path))
    yml = parse_batch(load_jobs(str(tmp_path / "jobs.yml")), str(tmp_path))
    assert toml == yml
    assert toml.buckets[1].params.fraction == [0.1, 0.2]
    assert toml.buckets[0].params.memory_limit == 10**9
    assert toml.buckets[0].params.out == str(tmp_path / "o" / "a")


def test_bucket_pools_from_globs(pools):
    union = resolve_pool(str(pools / "[ab]"))
    assert union.n == 2 * ROWS and [s.offset for s in union.shards] == [0, 250, 500, 750]
    assert union.shards[2].name == "b/00000000"
    first = resolve_pool(str(pools / "a" / "*0.parquet"))
    assert first.n == 250 and [s.name for s in first.shards] == ["00000000"]
    assert first.fingerprint != resolve_pool(str(pools / "a")).fingerprint
    with pytest.raises(D2ScaleError, match="matches no directory"):
        resolve_pool(str(pools / "zz*"))


def test_bucket_pools_from_url_globs(pools):
    import fsspec

    fs = fsspec.filesystem("memory")
    for name in os.listdir(pools / "a"):
        fs.put_file(str(pools / "a" / name), f"/globs/a/{name}")
    one = resolve_pool("memory://globs/a/*1.parquet")
    assert one.n == 250 and one.shards[0].parquet.endswith("/globs/a/00000001.parquet")
    assert one.url.startswith("memory://") and one.url.endswith("/globs/a")
    both = resolve_pool("memory://globs/[a]")
    assert both.n == ROWS


def test_a_key_given_twice_in_a_yaml_mapping_is_refused(tmp_path):
    from d2scale.select.batch import load_jobs

    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("out: o\nbuckets:\n  - {name: a, metadata_dir: p, fraction: 0.1, "
                    "fraction: 0.5}\n")  # fmt: skip
    with pytest.raises(D2ScaleError, match="line 3: the key 'fraction' is given twice"):
        load_jobs(str(jobs))
    merged = tmp_path / "merged.yaml"  # a merge key's values may be overridden
    merged.write_text("out: o\ndefaults: &d {fraction: 0.2}\nbuckets:\n"
                      "  - {<<: *d, name: a, metadata_dir: p, fraction: 0.3}\n")  # fmt: skip
    assert load_jobs(str(merged))["buckets"][0]["fraction"] == 0.3


def test_ctrl_c_stops_the_running_bucket_at_once(pools, tmp_path):
    import signal
    import time

    jobs = write_jobs(tmp_path / "jobs.yaml", {
        "out": "out", "defaults": DEFAULTS,
        "buckets": [{"name": n, "metadata_dir": str(pools / n)} for n in "ab"],
    })  # fmt: skip
    argv = [sys.executable, "-m", "d2scale.cli.main", "batch", str(jobs), "--workers", "1"]
    env = {**os.environ, "D2SCALE_PAUSE_AT": "after-read"}  # the bucket sleeps there

    def default_sigint() -> None:  # as a terminal would (a background job ignores SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=default_sigint)  # fmt: skip
    for line in proc.stderr:
        if "paused at after-read" in line:
            break
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("batch did not stop within 30 s of SIGINT") from None
    assert proc.returncode == 130 and err.strip().splitlines() == ["d2scale: interrupted"]
    assert time.monotonic() - t0 < 15
    assert not (tmp_path / "out" / "b").exists()  # the next bucket never started
