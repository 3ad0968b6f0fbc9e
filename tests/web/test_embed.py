"""``d2scale embed``: DataComp pairs from webdataset shards, skipped samples, uids, resume."""

import hashlib
import json
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from clirun import run_cli
from web.webshards import make_samples, write_shard

from d2scale.errors import D2ScaleError
from d2scale.progress import Progress
from d2scale.web.embed import EmbedParams, embed, model_prefix

TINY = os.path.join(os.path.dirname(__file__), "d2tiny.json")
QUIET = Progress(quiet=True)


def tiny(shards, out, **kw) -> EmbedParams:
    """A 2-layer random-init open_clip model (32-d embeddings): fast on a CPU."""
    kw = {"model": "d2tiny", "model_config": TINY, "pretrained": "none", "batch_size": 16,
          "threads": 2} | kw  # fmt: skip
    return EmbedParams(shards=shards, out=str(out), **kw)


@pytest.fixture(scope="module")
def embedded(web_shards, tmp_path_factory):
    pattern, _ = web_shards
    out = tmp_path_factory.mktemp("embedded")
    record = embed(tiny(pattern, out), QUIET)
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
    assert record["totals"] == {
        "shards": 2,
        "samples": 80,
        "written": 80,
        "empty_captions": 0,
        "skipped": {},
    }
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
    record = embed(tiny(str(tmp_path / "a.tar"), tmp_path / "out"), QUIET)
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
    embed(tiny(str(tmp_path / "a.tar"), tmp_path / "out"), QUIET)
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
    record = embed(tiny(pattern, tmp_path), QUIET)
    assert record["resumed_shards"] == 1 and record["totals"]["written"] == 80
    assert os.stat(tmp_path / "00000.parquet").st_mtime_ns == before
    with np.load(out / "00001.npz") as a, np.load(tmp_path / "00001.npz") as b:
        np.testing.assert_array_equal(a["d2tiny_img"], b["d2tiny_img"])  # seeded weights
    with pytest.raises(D2ScaleError, match="seed=0"):
        embed(tiny(pattern, tmp_path, seed=1), QUIET)


def test_local_checkpoint_file_gives_its_weights(web_shards, embedded, tmp_path):
    import torch

    from d2scale.web.embed import ClipEncoder

    pattern, _ = web_shards
    encoder = ClipEncoder(tiny(pattern, tmp_path / "x", seed=0))
    torch.save(encoder.model.state_dict(), tmp_path / "tiny.pt")
    out = tmp_path / "from-file"
    record = embed(tiny(pattern, out, pretrained=str(tmp_path / "tiny.pt"), seed=7), QUIET)
    assert record["random_weights"] is False and "warnings" not in record
    with np.load(embedded[0] / "00000.npz") as a, np.load(out / "00000.npz") as b:
        np.testing.assert_array_equal(a["d2tiny_txt"], b["d2tiny_txt"])


def test_prefixes():
    assert model_prefix("ViT-B-32") == "b32" and model_prefix("ViT-L-14") == "l14"
    assert model_prefix("ViT-S-32") == "vits32"
    assert model_prefix("hf-hub:org/My_Model-1") == "mymodel1"


def cli(*args):
    return run_cli(*args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shards", "{tmp}/nope-{{0..1}}.tar"], "shard {tmp}/nope-0.tar does not exist"),
        (["--shards", "{tmp}/*.tar"], "matches no files"),
        (["--shards", "{shards}", "--pretrained", "{tmp}/w.pt"], "checkpoint file"),
        (["--shards", "{shards}", "--model", "nosuch"], "unknown open_clip model 'nosuch'"),
        (["--shards", "{shards}", "--prefix", "B_32"], "lowercase letters and digits"),
        (["--shards", "{shards}", "--pretrained", "{junk}", "--model", "d2tiny",
          "--model-config", TINY], "cannot load {junk} as weights of open_clip model"),
        (["--shards", "{shards}", "--model-config", "{junk}"], "{junk} is not valid JSON"),
        (["--shards", "{shards}", "--seed", "99999999999999999999999"],
         "--seed must be in [0, 4294967295]"),
        # the log is appended to from the start: it would damage an input file, or be lost
        # when the output file it is gets replaced
        (["--shards", "{shards}", "--log-json", "{tmp}/out/embed.json"],
         "the JSON log {tmp}/out/embed.json is a file written into {tmp}/out;"),
        (["--shards", "{shards}", "--model", "d2tiny", "--model-config", TINY, "--pretrained",
          "{junk}", "--log-json", "{junk}"], "the JSON log {junk} is an input file;"),
        # select refuses an l14 member that is not 768-d: so does embed, before any work
        (["--shards", "{shards}", "--model", "d2tiny", "--model-config", TINY, "--prefix",
          "l14"], "the npz prefix l14 holds 768-d embeddings, but d2tiny makes 32-d ones"),
    ],
)  # fmt: skip
def test_errors_are_one_line(args, message, tmp_path, web_shards):
    (tmp_path / "junk.pt").write_text("{not a checkpoint")
    fill = {"tmp": tmp_path, "shards": web_shards[0], "junk": tmp_path / "junk.pt"}
    proc = cli("embed", "--out", tmp_path / "out", "--pretrained", "none", "--quiet",
               *[a.format(**fill) for a in args])  # fmt: skip
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


def cut_at_member(src, dst, samples: int) -> None:
    """``src`` up to the header of sample ``samples`` (4 members each): no tar end marker."""
    import tarfile

    with tarfile.open(src) as tar:
        offset = tar.getmembers()[4 * samples].offset
    with open(src, "rb") as f:
        data = f.read(offset)
    with open(dst, "wb") as f:
        f.write(data)


def test_weights_must_be_named(tmp_path, web_shards):
    with pytest.raises(D2ScaleError, match="--pretrained is required"):
        embed(tiny(web_shards[0], tmp_path / "a", pretrained=None), QUIET)
    proc = cli("embed", "--shards", web_shards[0], "--out", tmp_path / "b")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("d2scale: error: --pretrained is required")


def test_random_weights_warn_and_are_recorded(embedded, web_shards, tmp_path, capsys):
    out, record = embedded
    assert record["random_weights"] is True and len(record["warnings"]) == 1
    assert "random weights" in record["warnings"][0]
    assert json.loads((out / "embed.json").read_text())["warnings"] == record["warnings"]
    embed(tiny(web_shards[0], tmp_path / "b"), QUIET)
    err = capsys.readouterr().err
    assert err.startswith("d2scale: warning: random weights (--pretrained none, seed 0)")
    assert err.count("\n") == 1  # also with a quiet progress: one line


def test_a_shard_cut_at_a_member_boundary_is_refused(tmp_path):
    write_shard(tmp_path / "whole.tar", make_samples(np.random.default_rng(4), 0, 20))
    cut_at_member(tmp_path / "whole.tar", tmp_path / "cut.tar", 11)
    with pytest.raises(D2ScaleError, match=r"cut.tar is truncated: it stops after 44 files"):
        embed(tiny(str(tmp_path / "cut.tar"), tmp_path / "out"), QUIET)
    assert not (tmp_path / "out" / "cut.parquet").exists()


def test_a_uid_repeated_across_shards_is_written_once(tmp_path):
    rng = np.random.default_rng(6)
    a, b = make_samples(rng, 0, 6), make_samples(rng, 6, 6)
    b[2] = dict(a[4], __key__="again")  # a later shard repeats a uid
    write_shard(tmp_path / "a.tar", a)
    write_shard(tmp_path / "b.tar", b)
    record = embed(tiny(str(tmp_path / "{a,b}.tar"), tmp_path / "one"), QUIET)
    assert record["totals"]["written"] == 11
    assert record["shards"]["b"]["skipped"] == {"duplicate uid": 1}
    assert "in an earlier shard" in record["shards"]["b"]["skipped_examples"][0]
    embed(tiny(str(tmp_path / "a.tar"), tmp_path / "two"), QUIET)  # resumed: a is done
    record = embed(tiny(str(tmp_path / "{a,b}.tar"), tmp_path / "two"), QUIET)
    assert record["resumed_shards"] == 1 and record["totals"]["written"] == 11
    for out in ("one", "two"):
        uids = [u for n in "ab" for u in pq.read_table(tmp_path / out / f"{n}.parquet")["uid"]]
        assert len(uids) == len(set(uids)) == 11


def test_another_pools_directory_is_refused(tmp_path, web_shards):
    from d2scale.pool.synth import write_pool

    write_pool(str(tmp_path / "pool"), rows=20)
    with pytest.raises(D2ScaleError, match="already holds 00000000.npz"):
        embed(tiny(web_shards[0], tmp_path / "pool"), QUIET)
    assert not (tmp_path / "pool" / "embed.json").exists()


def test_a_download_directory_is_refused(tmp_path):
    """img2dataset writes NAME.parquet beside NAME.tar: a pair must not overwrite it."""
    write_shard(tmp_path / "00000.tar", make_samples(np.random.default_rng(12), 0, 2))
    (tmp_path / "00000.parquet").write_bytes(b"the download's metadata")
    with pytest.raises(D2ScaleError, match="already holds 00000.parquet"):
        embed(tiny(str(tmp_path / "00000.tar"), tmp_path), QUIET)
    assert (tmp_path / "00000.parquet").read_bytes() == b"the download's metadata"


def test_progress_lines_per_shard_in_samples(web_shards, tmp_path):
    import io

    stream = io.StringIO()
    progress = Progress(stream=stream, tty=False, interval=0.0, log_json=str(tmp_path / "e.jsonl"))
    embed(tiny(web_shards[0], tmp_path / "out"), progress)
    progress.close()
    text = stream.getvalue()
    assert "load open_clip model d2tiny done in" in text
    assert "embed 00000 (1/2 shards): 40/40 samples" in text
    assert re.search(r"embed 00001 \(2/2 shards\): \d+ samples \[", text), text  # running
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"stage", "progress", "warning"} <= kinds


def test_cli_rerun_and_paths(tmp_path):
    samples = make_samples(np.random.default_rng(8), 0, 6)
    samples[1]["json"] = b"{not json"
    write_shard(tmp_path / "a.tar", samples)
    args = ("embed", "--shards", tmp_path / "a.tar", "--out", f"{tmp_path}/pool/",
            "--pretrained", "none", "--model", "d2tiny", "--model-config", TINY,
            "--threads", 2)  # fmt: skip
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert f"{tmp_path}/pool/embed.json" in first.stderr and "//" not in first.stderr
    assert "d2scale: warning: 1 of 6 samples skipped: 1 bad json" in first.stderr
    assert "5 of 6 samples embedded from 1 shards" in first.stderr and "\r" not in first.stderr
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert "nothing to embed: all 1 shards are already in" in again.stderr
    assert "samples embedded" not in again.stderr and "skipped" not in again.stderr


def test_a_run_that_embeds_nothing_is_an_error(tmp_path):
    samples = make_samples(np.random.default_rng(10), 0, 3)
    for sample in samples:
        sample["png"] = sample.pop("jpg")[:20]  # cut images
    write_shard(tmp_path / "a.tar", samples)
    with pytest.raises(D2ScaleError, match="none of the 3 samples of 1 shards could be embedded "
                       r"\(3 undecodable image; examples in"):  # fmt: skip
        embed(tiny(str(tmp_path / "a.tar"), tmp_path / "out"), QUIET)


def test_skipped_samples_and_empty_captions_are_warnings(tmp_path, capsys):
    samples = make_samples(np.random.default_rng(11), 0, 4)
    del samples[0]["txt"]
    samples[0]["json"] = json.dumps({"uid": "ab"}).encode()  # no caption anywhere
    del samples[1]["jpg"]
    write_shard(tmp_path / "a.tar", samples)
    record = embed(tiny(str(tmp_path / "a.tar"), tmp_path / "out"), QUIET)
    assert record["run"]["empty_captions"] == 1 and record["shards"]["a"]["empty_captions"] == 1
    warnings = capsys.readouterr().err.splitlines()[1:]  # after the random-weights one
    assert warnings == [
        f"d2scale: warning: 1 of 4 samples skipped: 1 no image "
        f"(examples in {tmp_path / 'out' / 'embed.json'})",
        "d2scale: warning: 1 of 3 samples have no caption: their text embeddings and clip "
        f"scores are those of an empty text (counted per shard in {tmp_path / 'out'}/embed.json)",
    ]
