"""``d2scale export``: exactly the subset's samples, byte for byte, in fixed-size shards."""

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from web.webshards import make_samples, write_shard

from d2scale.errors import D2ScaleError
from d2scale.pool.uids import encode_uids, subset_array
from d2scale.web import export as export_module
from d2scale.web.export import ExportParams, export

MISSING = "ffffffffffffffff0000000000000001"


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
    record = export(ExportParams(subset, pattern, str(out), samples_per_shard=7), quiet=True)
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
    export(ExportParams(subset, pattern, str(clean), samples_per_shard=5), quiet=True)
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
        export(ExportParams(subset, pattern, str(resumed), samples_per_shard=5), quiet=True)
    monkeypatch.setattr(export_module._ShardWriter, "flush", flush)
    assert len(json.loads((resumed / "export.json").read_text())["output"]) == 2
    record = export(ExportParams(subset, pattern, str(resumed), samples_per_shard=5), quiet=True)
    assert record["counts"]["read"] == 80 and record["counts"]["written"] == 27
    names = sorted(n for n in os.listdir(clean) if n.endswith((".tar", ".parquet")))
    assert names == sorted(n for n in os.listdir(resumed) if n.endswith((".tar", ".parquet")))
    for name in names:
        assert (clean / name).read_bytes() == (resumed / name).read_bytes(), name
    again = export(ExportParams(subset, pattern, str(resumed), samples_per_shard=5), quiet=True)
    assert again["counts"] == record["counts"]  # a finished export is not redone
    with pytest.raises(D2ScaleError, match="another samples per shard"):
        export(ExportParams(subset, pattern, str(resumed), samples_per_shard=6), quiet=True)


def test_repeated_uids_are_written_once_and_member_names_kept(tmp_path):
    samples = make_samples(np.random.default_rng(3), 0, 4)
    samples[2]["JPG"] = samples[2].pop("jpg")
    repeat = dict(samples[0], __key__="again")
    write_shard(tmp_path / "a.tar", [*samples, repeat])
    uids = [json.loads(s["json"])["uid"] for s in samples]
    subset = save_subset(tmp_path / "s.npy", uids)
    record = export(ExportParams(subset, str(tmp_path / "a.tar"), str(tmp_path / "o")), quiet=True)
    assert record["counts"]["duplicates"] == 1 and record["counts"]["written"] == 4
    exported = read_tar(tmp_path / "o" / "00000000.tar")
    assert sorted(exported) == ["00000000", "00000001", "00000002", "00000003"]
    assert "JPG" in exported["00000002"]


def cli(*args):
    cmd = [sys.executable, "-m", "d2scale.cli.main", "export", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True)


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
