"""``d2scale embed``: DataComp pairs from webdataset shards, skipped samples, uids, resume."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from web.webshards import make_samples, write_shard

from d2scale.errors import D2ScaleError
from d2scale.web.embed import EmbedParams, embed, model_prefix

TINY = os.path.join(os.path.dirname(__file__), "d2tiny.json")


def tiny(shards, out, **kw) -> EmbedParams:
    """A 2-layer random-init open_clip model (32-d embeddings): fast on a CPU."""
    kw = {"model": "d2tiny", "model_config": TINY, "batch_size": 16, "threads": 2} | kw
    return EmbedParams(shards=shards, out=str(out), **kw)


@pytest.fixture(scope="module")
def embedded(web_shards, tmp_path_factory):
    pattern, _ = web_shards
    out = tmp_path_factory.mktemp("embedded")
    record = embed(tiny(pattern, out), quiet=True)
    return out, record


def test_one_datacomp_pair_per_shard(embedded, web_shards):
    out, record = embedded
    _, by_uid = web_shards
    assert sorted(os.listdir(out)) == [
        "00000.npz",
        "00000.parquet",
        "00001.npz",
        "00001.parquet",
        "embed.json",
    ]
    assert record["totals"] == {"shards": 2, "samples": 80, "written": 80, "skipped": {}}
    for name in ("00000", "00001"):
        table = pq.read_table(out / f"{name}.parquet")
        assert table.column_names == [
            "uid",
            "key",
            "url",
            "text",
            "original_width",
            "original_height",
            "sha256",
            "clip_d2tiny_similarity_score",
        ]
        assert str(table.schema.field("original_width").type) == "int64"
        assert str(table.schema.field("clip_d2tiny_similarity_score").type) == "float"
        with np.load(out / f"{name}.npz") as npz:
            assert sorted(npz.files) == ["d2tiny_img", "d2tiny_txt"]
            img, txt = npz["d2tiny_img"], npz["d2tiny_txt"]
        assert img.dtype == txt.dtype == np.float16 and img.shape == txt.shape == (40, 32)
        for x in (img, txt):
            np.testing.assert_allclose(np.linalg.norm(x.astype(np.float64), axis=1), 1, atol=2e-3)
        score = table["clip_d2tiny_similarity_score"].to_numpy()
        cosine = np.einsum("ij,ij->i", img.astype(np.float64), txt.astype(np.float64))
        np.testing.assert_allclose(score, cosine, atol=3e-3)
        for row in table.to_pylist():  # parquet rows are the shard's samples, in tar order
            sample = by_uid[row["uid"]]
            meta = json.loads(sample["json"])
            assert row["key"] == sample["__key__"] and row["text"] == sample["txt"].decode()
            assert row["url"] == meta["url"]
            assert row["original_width"] == meta["original_width"]
            assert row["sha256"] == hashlib.sha256(sample["jpg"]).hexdigest()


def test_unusable_samples_are_counted_not_fatal(tmp_path):
    rng = np.random.default_rng(1)
    samples = make_samples(rng, 0, 8)
    samples[1]["jpg"] = b"\xff\xd8 truncated jpeg"
    del samples[2]["jpg"]
    samples[3]["json"] = b"{not json"
    samples[4]["json"] = json.dumps({"uid": "xyz"}).encode()
    samples[6]["json"] = samples[5]["json"]  # the same uid twice
    write_shard(tmp_path / "a.tar", samples)
    record = embed(tiny(str(tmp_path / "a.tar"), tmp_path / "out"), quiet=True)
    assert record["totals"]["written"] == 3 and record["totals"]["samples"] == 8
    assert record["totals"]["skipped"] == {
        "undecodable image": 1,
        "no image": 1,
        "bad json": 1,
        "malformed uid": 1,
        "duplicate uid": 1,
    }
    keys = pq.read_table(tmp_path / "out" / "a.parquet")["key"].to_pylist()
    assert keys == ["00000000", "00000005", "00000007"]


def test_uid_without_json_uid_is_a_hash_of_url_and_caption(tmp_path):
    samples = make_samples(np.random.default_rng(2), 0, 3, with_uid=False)
    del samples[2]["json"]  # no url either: the image bytes stand in for it
    write_shard(tmp_path / "a.tar", samples)
    embed(tiny(str(tmp_path / "a.tar"), tmp_path / "out"), quiet=True)
    table = pq.read_table(tmp_path / "out" / "a.parquet")
    expected = []
    for s in samples:
        first = (
            json.loads(s["json"])["url"].encode()
            if "json" in s
            else (hashlib.sha256(s["jpg"]).digest())
        )
        digest = hashlib.blake2b(first + b"\x00" + s["txt"], digest_size=16).hexdigest()
        expected.append(digest)
    assert table["uid"].to_pylist() == expected
    assert "url" in table.column_names and table["url"].null_count == 1


def test_resumes_per_shard_with_the_same_embeddings(embedded, web_shards, tmp_path):
    pattern, _ = web_shards
    out, _ = embedded
    for name in os.listdir(out):
        os.link(out / name, tmp_path / name)
    os.remove(tmp_path / "00001.npz")  # as if killed while writing the second pair
    before = os.stat(tmp_path / "00000.parquet").st_mtime_ns
    record = embed(tiny(pattern, tmp_path), quiet=True)
    assert record["resumed_shards"] == 1 and record["totals"]["written"] == 80
    assert os.stat(tmp_path / "00000.parquet").st_mtime_ns == before
    with np.load(out / "00001.npz") as a, np.load(tmp_path / "00001.npz") as b:
        np.testing.assert_array_equal(a["d2tiny_img"], b["d2tiny_img"])  # seeded weights
    with pytest.raises(D2ScaleError, match="seed=0"):
        embed(tiny(pattern, tmp_path, seed=1), quiet=True)


def test_local_checkpoint_file_gives_its_weights(web_shards, embedded, tmp_path):
    import torch

    from d2scale.web.embed import ClipEncoder

    pattern, _ = web_shards
    encoder = ClipEncoder(tiny(pattern, tmp_path / "x", seed=0))
    torch.save(encoder.model.state_dict(), tmp_path / "tiny.pt")
    out = tmp_path / "from-file"
    embed(tiny(pattern, out, pretrained=str(tmp_path / "tiny.pt"), seed=7), quiet=True)
    with np.load(embedded[0] / "00000.npz") as a, np.load(out / "00000.npz") as b:
        np.testing.assert_array_equal(a["d2tiny_txt"], b["d2tiny_txt"])


def test_prefixes():
    assert model_prefix("ViT-B-32") == "b32" and model_prefix("ViT-L-14") == "l14"
    assert model_prefix("ViT-S-32") == "vits32"
    assert model_prefix("hf-hub:org/My_Model-1") == "mymodel1"


def cli(*args):
    cmd = [sys.executable, "-m", "d2scale.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shards", "{tmp}/nope-{{0..1}}.tar"], "shard {tmp}/nope-0.tar does not exist"),
        (["--shards", "{tmp}/*.tar"], "matches no files"),
        (["--shards", "{shards}", "--pretrained", "{tmp}/w.pt"], "checkpoint file"),
        (["--shards", "{shards}", "--model", "nosuch"], "unknown open_clip model 'nosuch'"),
        (["--shards", "{shards}", "--prefix", "B_32"], "lowercase letters and digits"),
    ],
)
def test_errors_are_one_line(args, message, tmp_path, web_shards):
    fill = {"tmp": tmp_path, "shards": web_shards[0]}
    proc = cli("embed", "--out", tmp_path / "out", *[a.format(**fill) for a in args])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("d2scale: error: "), lines[0]
    assert message.format(**fill) in proc.stderr


def test_select_reads_another_models_prefix(embedded, tmp_path):
    out, _ = embedded
    proc = cli("select", "--metadata-dir", out, "--embedding-model", "d2tiny", "--fraction", 0.5,
               "--out", tmp_path / "sel", "--workers", 2, "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "sel" / "uids.npy").shape == (40,)  # 32-d, read from the files
    run = json.loads((tmp_path / "sel" / "run.json").read_text())
    assert run["params"]["score_column"] == "clip_d2tiny_similarity_score"
    proc = cli("select", "--metadata-dir", out, "--embedding-model", "vitb16", "--out",
               tmp_path / "x", "--quiet")  # fmt: skip
    assert proc.returncode == 1 and "has no array 'vitb16_img'" in proc.stderr
