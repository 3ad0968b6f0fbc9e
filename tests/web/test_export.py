"""``d2scale export``: exactly the subset's samples, byte for byte, in fixed-size shards."""

import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from clirun import run_cli
from web.webshards import make_samples, write_shard

from d2scale.errors import D2ScaleError
from d2scale.pool.uids import encode_uids, subset_array
from d2scale.progress import Progress
from d2scale.web import export as export_module
from d2scale.web.export import ExportParams, export

MISSING = "ffffffffffffffff0000000000000001"
QUIET = Progress(quiet=True)


def read_tar(path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of a tar, read with tarfile (independently of webdataset)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def save_subset(path, uids) -> str:
    np.save(path, subset_array(encode_uids(list(uids))))
    return str(path)


@pytest.fixture
def chosen(web_shards, tmp_path):
    """Every third uid of the 80 test samples, plus one uid that is in no shard."""
    _, by_uid = web_shards
    uids = sorted(by_uid)[::3]
    return uids, save_subset(tmp_path / "subset.npy", [*uids, MISSING])


def test_exports_exactly_the_subset_with_every_member(web_shards, chosen, tmp_path):
    pattern, by_uid = web_shards
    uids, subset = chosen
    out = tmp_path / "out"
    record = export(ExportParams(subset, pattern, str(out), samples_per_shard=7), QUIET)
    sizes = [7, 7, 7, 6]  # 27 selected samples
    assert [o["samples"] for o in record["output"]] == sizes and len(uids) == 27
    got = {}
    for i, size in enumerate(sizes):
        samples = read_tar(out / f"{i:08d}.tar")
        side = pq.read_table(out / f"{i:08d}.parquet").to_pylist()
        assert len(samples) == len(side) == size
        for row in side:
            assert row["source"].endswith(".tar") and row["key"] in samples
            got[row["uid"]] = samples[row["key"]]
    assert sorted(got) == uids
    for uid, members in got.items():  # all members, byte for byte
        original = {k: v for k, v in by_uid[uid].items() if k != "__key__"}
        assert members == original
    assert record["counts"] == {
        "read": 80,
        "no_uid": 0,
        "duplicates": 0,
        "subset": 28,
        "written": 27,
        "missing": 1,
    }
    missing = np.load(out / "missing_uids.npy")
    assert missing.dtype == np.dtype("u8,u8") and missing.tolist() == [(2**64 - 1, 1)]


def test_resume_after_a_kill_gives_the_same_shards(web_shards, chosen, tmp_path, monkeypatch):
    pattern, _ = web_shards
    _, subset = chosen
    clean = tmp_path / "clean"
    export(ExportParams(subset, pattern, str(clean), samples_per_shard=5), QUIET)
    flush = export_module._ShardWriter.flush
    calls = []

    def dying_flush(self, position):
        calls.append(position)
        if len(calls) == 3:
            raise KeyboardInterrupt
        flush(self, position)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(export_module._ShardWriter, "flush", dying_flush)
    with pytest.raises(KeyboardInterrupt):
        export(ExportParams(subset, pattern, str(resumed), samples_per_shard=5), QUIET)
    monkeypatch.setattr(export_module._ShardWriter, "flush", flush)
    assert len(json.loads((resumed / "export.json").read_text())["output"]) == 2
    record = export(ExportParams(subset, pattern, str(resumed), samples_per_shard=5), QUIET)
    assert record["counts"]["read"] == 80 and record["counts"]["written"] == 27
    names = sorted(n for n in os.listdir(clean) if n.endswith((".tar", ".parquet")))
    assert names == sorted(n for n in os.listdir(resumed) if n.endswith((".tar", ".parquet")))
    for name in names:
        assert (clean / name).read_bytes() == (resumed / name).read_bytes(), name
    again = export(ExportParams(subset, pattern, str(resumed), samples_per_shard=5), QUIET)
    assert again["counts"] == record["counts"]  # a finished export is not redone
    with pytest.raises(D2ScaleError, match="another samples per shard"):
        export(ExportParams(subset, pattern, str(resumed), samples_per_shard=6), QUIET)


def test_repeated_uids_are_written_once_and_member_names_kept(tmp_path):
    samples = make_samples(np.random.default_rng(3), 0, 4)
    samples[2]["JPG"] = samples[2].pop("jpg")
    repeat = dict(samples[0], __key__="again")
    write_shard(tmp_path / "a.tar", [*samples, repeat])
    uids = [json.loads(s["json"])["uid"] for s in samples]
    subset = save_subset(tmp_path / "s.npy", uids)
    record = export(ExportParams(subset, str(tmp_path / "a.tar"), str(tmp_path / "o")), QUIET)
    assert record["counts"]["duplicates"] == 1 and record["counts"]["written"] == 4
    exported = read_tar(tmp_path / "o" / "00000000.tar")
    assert sorted(exported) == ["00000000", "00000001", "00000002", "00000003"]
    assert "JPG" in exported["00000002"]


def cli(*args):
    return run_cli("export", *args)


def test_cli_reports_missing_uids_and_errors_in_one_line(web_shards, chosen, tmp_path):
    pattern, _ = web_shards
    _, subset = chosen
    proc = cli("--uids", subset, "--shards", pattern, "--out", tmp_path / "a", "--quiet")
    assert proc.returncode == 0
    assert proc.stderr.strip() == (
        f"d2scale: warning: 1 of 28 uids are in none of the shards "
        f"(listed in {tmp_path / 'a'}/missing_uids.npy)"
    )
    proc = cli("--uids", subset, "--shards", pattern, "--out", tmp_path / "b", "--require-all")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith("d2scale: error: 1 of 28 uids")
    np.save(tmp_path / "bad.npy", np.arange(3))
    proc = cli("--uids", tmp_path / "bad.npy", "--shards", pattern, "--out", tmp_path / "c")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "must hold a 1-D array of dtype u8,u8" in proc.stderr


@pytest.mark.parametrize(
    "log", ["{shards}/00000.tar", "{subset}", "{out}/export.json", "{out}/00000000.tar",
            "{out}/missing_uids.npy"],
)  # fmt: skip
def test_a_log_json_over_an_input_or_an_output_is_refused(web_shards, chosen, tmp_path, log):
    """The log is appended to from the start: an input shard or the subset file was damaged;
    a file the export writes replaced it, and the events logged after that were lost."""
    shards = tmp_path / "shards"
    shutil.copytree(os.path.dirname(web_shards[0]), shards)
    subset, out = Path(chosen[1]), tmp_path / "out"
    out.mkdir()
    before = {p: p.read_bytes() for p in [*shards.iterdir(), subset]}
    path = log.format(shards=shards, subset=subset, out=out)
    proc = cli("--uids", subset, "--shards", f"{shards}/*.tar", "--out", out, "--log-json", path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"d2scale: error: the JSON log {path} is ")
    assert {p: p.read_bytes() for p in before} == before and not os.listdir(out)


def test_a_subset_file_that_is_the_missing_uids_file_it_writes_is_refused(web_shards, tmp_path):
    """``--uids OUT/missing_uids.npy --out OUT`` replaced the user's subset file with the
    (here empty) list of missing uids."""
    pattern, by_uid = web_shards
    out = tmp_path / "out"
    out.mkdir()
    subset = save_subset(out / "missing_uids.npy", sorted(by_uid)[:5])
    kept = Path(subset).read_bytes()
    with pytest.raises(D2ScaleError, match="is the missing_uids.npy this export writes"):
        export(ExportParams(subset, pattern, str(out)), QUIET)
    assert Path(subset).read_bytes() == kept and os.listdir(out) == ["missing_uids.npy"]


def test_stale_shards_of_an_earlier_export_are_refused(web_shards, chosen, tmp_path):
    pattern, _ = web_shards
    _, subset = chosen
    out = tmp_path / "out"
    export(ExportParams(subset, pattern, str(out), samples_per_shard=5), QUIET)  # 6 shards
    os.remove(out / "export.json")
    with pytest.raises(D2ScaleError, match=r"already holds 00000000.parquet \(12 such files"):
        export(ExportParams(subset, pattern, str(out), samples_per_shard=10), QUIET)
    assert sorted(os.listdir(out))[-1] == "missing_uids.npy"  # nothing was written


def test_the_input_shards_directory_is_refused(web_shards, chosen):
    pattern, _ = web_shards
    _, subset = chosen
    with pytest.raises(D2ScaleError, match="already holds 00000.tar"):
        export(ExportParams(subset, pattern, os.path.dirname(pattern)), QUIET)


def test_nothing_to_export_is_an_error(web_shards, tmp_path):
    pattern, _ = web_shards
    empty = save_subset(tmp_path / "empty.npy", [])
    with pytest.raises(D2ScaleError, match="holds no uids"):
        export(ExportParams(empty, pattern, str(tmp_path / "a")), QUIET)
    elsewhere = save_subset(tmp_path / "elsewhere.npy", [MISSING])
    with pytest.raises(D2ScaleError, match="none of the 1 uids .* is in the shards"):
        export(ExportParams(elsewhere, pattern, str(tmp_path / "b")), QUIET)


def test_cli_rerun_and_progress_lines(web_shards, chosen, tmp_path):
    pattern, _ = web_shards
    _, subset = chosen
    args = ("--uids", subset, "--shards", pattern, "--out", f"{tmp_path}/out/")
    first = cli(*args)
    assert first.returncode == 0 and "\r" not in first.stderr
    assert re.search(r"\] export 00001 \(2/2 shards\): 40/40 samples \[", first.stderr)
    assert f"{tmp_path}/out/missing_uids.npy" in first.stderr and "//" not in first.stderr
    again = cli(*args)
    assert "nothing to export: already complete, 27 samples in 1 shards" in again.stderr
