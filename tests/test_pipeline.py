"""The stage contract of ``select``: keyed stages reused on rerun, outputs committed as one
set, SIGKILL at every stage boundary and inside the write stage, then identical uids."""

import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from d2scale import io
from d2scale.errors import D2ScaleError
from d2scale.params import SelectParams
from d2scale.progress import Progress
from d2scale.select.pipeline import select


def run(pool, out, **kw) -> dict:
    params = SelectParams(metadata_dir=str(pool), out=str(out), index="exact", workers=2, **kw)
    return select(params, Progress(quiet=True))


def uids(out, name="uids.npy"):
    return np.load(os.path.join(out, name))


def output_files(out) -> set[str]:
    return {f for f in os.listdir(out) if f != "work"}


def leftovers(out) -> list[str]:
    tmp = [p for p in io.find(str(out)) if os.path.basename(p).endswith(".tmp")]
    commits = [d for d in os.listdir(os.path.join(out, "work")) if d.startswith("commit-")]
    return tmp + commits


@pytest.fixture(scope="module")
def first(small_pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("first")
    return out, run(small_pool, out, fraction=[0.1, 0.3], n_neighbors=5)


def test_rerun_with_only_gamma_changed_reuses_graph_and_forward(first, small_pool, tmp_path):
    out, record = first
    again = run(small_pool, out, fraction=[0.1, 0.3], n_neighbors=5, gamma=0.5)
    reused = {name: s["reused"] for name, s in again["stages"].items()}
    assert reused == {"read": False, "graph": True, "forward": True, "reverse": False}
    clean = run(small_pool, tmp_path, fraction=[0.1, 0.3], n_neighbors=5, gamma=0.5)
    assert not any(clean["stages"][s]["reused"] for s in clean["stages"])
    for name in ("uids-0.1.npy", "uids-0.3.npy"):
        assert np.array_equal(uids(out, name), uids(tmp_path, name))


def test_smaller_k_reuses_an_exact_graph_and_smaller_budget_the_order(first, small_pool, tmp_path):
    out, _ = first
    again = run(small_pool, out, fraction=[0.1, 0.3], n_neighbors=3)
    assert again["stages"]["graph"]["reused"] and not again["stages"]["forward"]["reused"]
    assert again["stages"]["graph"]["directory"].endswith("-k5")
    clean = run(small_pool, tmp_path, fraction=[0.1, 0.3], n_neighbors=3)
    assert np.array_equal(uids(out, "uids-0.3.npy"), uids(tmp_path, "uids-0.3.npy"))
    smaller = run(small_pool, tmp_path, fraction=[0.2], n_neighbors=3)
    assert smaller["stages"]["reverse"]["reused"]
    assert clean["stages"]["reverse"]["key"] == smaller["stages"]["reverse"]["key"]


def test_stale_subset_files_are_removed(small_pool, tmp_path):
    """Finding 5: a run with fewer fractions leaves no subset files of an earlier run."""
    run(small_pool, tmp_path, fraction=[0.1, 0.3])
    assert {"uids-0.1.npy", "uids-0.3.npy"} <= output_files(tmp_path)
    record = run(small_pool, tmp_path, fraction=[0.3], gamma=0.1)
    assert output_files(tmp_path) == {"uids.npy", "ranking.parquet", "run.json"}
    assert record["outputs"] == ["uids.npy", "ranking.parquet"]


def test_a_full_disk_while_writing_keeps_the_previous_set(small_pool, tmp_path, monkeypatch):
    """Finding 6: a failing write leaves the previous complete set and no temporaries."""
    run(small_pool, tmp_path, fraction=[0.3])
    before = {f: (tmp_path / f).read_bytes() for f in output_files(tmp_path)}
    real_save = io.save_npy

    def full_disk(url, array):
        if "commit-" in url:
            raise D2ScaleError(f"cannot write {url}: {os.strerror(errno.ENOSPC)}")
        real_save(url, array)

    monkeypatch.setattr(io, "save_npy", full_disk)
    with pytest.raises(D2ScaleError, match="No space left on device"):
        run(small_pool, tmp_path, fraction=[0.3], gamma=0.2)
    assert {f: (tmp_path / f).read_bytes() for f in output_files(tmp_path)} == before
    monkeypatch.setattr(io, "save_npy", real_save)
    run(small_pool, tmp_path, fraction=[0.3], gamma=0.2)
    assert leftovers(tmp_path) == []


def test_output_inside_the_pool_is_refused(small_pool):
    with pytest.raises(D2ScaleError, match="inside the metadata directory"):
        run(small_pool, small_pool)
    with pytest.raises(D2ScaleError, match="inside the metadata directory"):
        run(small_pool, os.path.join(small_pool, "sub"))
    assert not os.path.exists(os.path.join(small_pool, "sub"))  # the pool is left as it was


def test_bad_scheduler_address_is_one_sentence(small_pool, tmp_path):
    for address in ("not-an-address", "foo://nowhere:1"):
        params = SelectParams(metadata_dir=str(small_pool), out=str(tmp_path), scheduler=address)
        with pytest.raises(D2ScaleError, match="Dask scheduler"):  # (no --workers beside it)
            select(params, Progress(quiet=True))


# --- fault injection -----------------------------------------------------------------------

KILL_POINTS = [
    "after-read",
    "before-marker-graph",
    "after-graph",
    "after-forward",
    "after-reverse",
    "commit",
    "commit-uids.npy",
    "commit-ranking.parquet",
]


def killed_at(point: str, pool, out) -> None:
    """Run select in a subprocess that pauses at ``point``; SIGKILL it there."""
    argv = [sys.executable, "-m", "d2scale.cli.main", "select", "--metadata-dir", str(pool),
            "--out", str(out), "--index", "exact", "--workers", "2"]  # fmt: skip
    env = {**os.environ, "D2SCALE_PAUSE_AT": point}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        if f"paused at {point}" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"never reached {point}"


@pytest.fixture(scope="module")
def clean_uids(small_pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    run(small_pool, out, fraction=[0.3])
    return uids(out)


@pytest.mark.parametrize(
    "point",
    [
        p if p in ("after-graph", "commit-uids.npy") else pytest.param(p, marks=pytest.mark.slow)
        for p in KILL_POINTS
    ],  # fmt: skip
)
def test_sigkill_then_rerun_gives_identical_uids(point, small_pool, tmp_path, clean_uids):
    killed_at(point, small_pool, tmp_path)
    assert not (tmp_path / "run.json").exists()  # nothing looks complete
    record = run(small_pool, tmp_path, fraction=[0.3])
    assert np.array_equal(uids(tmp_path), clean_uids)
    assert leftovers(tmp_path) == []
    assert not record["stages"]["read"]["reused"]  # the metadata is always read again
    json.loads((tmp_path / "run.json").read_text())


def test_ctrl_c_is_one_line_and_status_130(small_pool, tmp_path):
    argv = [sys.executable, "-m", "d2scale.cli.main", "select", "--metadata-dir", str(small_pool),
            "--out", str(tmp_path), "--index", "exact", "--workers", "2"]  # fmt: skip
    env = {**os.environ, "D2SCALE_PAUSE_AT": "after-read"}

    # a shell's background job starts with SIGINT ignored, and Python then keeps it ignored:
    # give the child the default disposition, as a terminal would
    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_sigint
    )
    for line in proc.stderr:
        if "paused at after-read" in line:
            break
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("select did not stop within 60 s of SIGINT") from None
    rest = err.strip().splitlines()
    assert proc.returncode == 130 and rest == ["d2scale: interrupted"], rest


@pytest.mark.parametrize("stage, name", [("reverse", "order.npy"), ("forward", "forward.npy")])
def test_a_truncated_file_of_a_finished_stage_is_recomputed(stage, name, small_pool, tmp_path):
    record = run(small_pool, tmp_path, fraction=[0.3])
    expected = uids(tmp_path)
    path = os.path.join(record["stages"][stage]["directory"], name)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    again = run(small_pool, tmp_path, fraction=[0.3])
    assert not again["stages"][stage]["reused"] and again["stages"]["graph"]["reused"]
    assert np.array_equal(uids(tmp_path), expected)
    assert "_files" not in json.dumps(again)  # the marker's own record stays out of run.json


def test_ctrl_c_while_a_command_loads_is_one_line(monkeypatch, capsys):
    from d2scale.cli import main as cli

    def interrupted(name: str):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert cli.main(["select", "--help"]) == 130
    assert capsys.readouterr().err == "d2scale: interrupted\n"


def test_ctrl_c_that_a_c_extension_turns_into_another_error_is_one_line(monkeypatch, capsys):
    import time

    from d2scale.cli import main as cli

    def numpy_like(name: str):  # numpy re-raises an interrupted C import as an ImportError
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ImportError("Importing the numpy C-extensions failed.") from None

    monkeypatch.setattr(cli.importlib, "import_module", numpy_like)
    # Python's own handler, as in a terminal (the shell of a background job may ignore SIGINT,
    # and the CLI keeps an ignored SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = cli.main(["select", "--help"])
        restored = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    assert capsys.readouterr().err == "d2scale: interrupted\n"
    assert restored is signal.default_int_handler
