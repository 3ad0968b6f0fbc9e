"""The DataComp-style chain basic → clip-score → semdedup → d2 in one command equals its
four steps run one by one, each on a pool holding the previous step's survivors."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clirun import run_cli

from d2scale.pool.uids import decode_uids, encode_uids

STEPS = ["basic", "clip-score", "semdedup:eps=0.05,clusters=8", "d2"]


def select(pool, out, *args):
    proc = run_cli("select", "--metadata-dir", pool, "--out", out, "--index", "exact",
                   "--workers", 2, "--quiet", *args)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(open(os.path.join(out, "run.json")).read())


def subset_pool(pool: str, uids: set[str], out: str) -> None:
    """The rows of ``pool`` whose uid is in ``uids``, as a pool of its own (same shards)."""
    os.makedirs(out)
    for name in sorted(f[:-8] for f in os.listdir(pool) if f.endswith(".parquet")):
        table = pq.read_table(os.path.join(pool, f"{name}.parquet"))
        keep = np.flatnonzero([u in uids for u in table["uid"].to_pylist()])
        pq.write_table(table.take(pa.array(keep)), os.path.join(out, f"{name}.parquet"))
        with np.load(os.path.join(pool, f"{name}.npz")) as z:
            np.savez(os.path.join(out, f"{name}.npz"), **{k: z[k][keep] for k in z.files})


def selected(out) -> set[str]:
    return set(decode_uids(np.load(os.path.join(out, "uids.npy"))))


def test_four_step_chain_equals_its_steps(small_pool, tmp_path):
    chain = select(small_pool, tmp_path / "chain", "--method", STEPS[0],
                   "--then", "clip-score:0.4", "--then", STEPS[2], "--then", "d2:0.2")  # fmt: skip
    kept = [s["kept"] for s in chain["steps"]]
    assert [s["method"] for s in chain["steps"]] == ["basic", "clip-score", "semdedup", "d2"]
    assert kept[1:] == [1200, kept[2], 600] and 3000 > kept[0] > 1200 > kept[2] > 600
    assert chain["steps"][2]["removed"] == 1200 - kept[2]
    pool, rows = str(small_pool), 3000
    for i, (step, count) in enumerate(zip(STEPS, kept, strict=True)):
        out = tmp_path / f"step{i}"
        record = select(pool, out, "--method", step, "--fraction", count / rows)
        assert record["counts"]["selected"] == {f"{count / rows:g}": count}
        if i < 3:
            subset_pool(pool, selected(out), str(tmp_path / f"pool{i}"))
            pool, rows = str(tmp_path / f"pool{i}"), count
    assert selected(out) == selected(tmp_path / "chain")


def test_method_options_are_checked_in_one_sentence(small_pool, tmp_path):
    cmd = ["select", "--metadata-dir", small_pool, "--out", tmp_path, "--quiet", "--workers", "2",
           "--method"]  # fmt: skip
    for step, message in [
        ("semdedup", "method 'semdedup' needs the option eps=VALUE."),
        ("semdedup:eps=x", "method 'semdedup': option eps must be a number; got 'x'."),
        ("random:sed=1", "method 'random' takes seed; got the option 'sed'."),
        ("image-clustering:targets=/nope.npy", "cannot read target embeddings /nope.npy"),
    ]:
        proc = run_cli(*cmd, step)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and message in lines[0], proc.stderr


@pytest.mark.parametrize("method", ["random", "clip-score", "d2-reference"])
def test_ranking_methods_write_every_fraction(small_pool, tmp_path, method):
    record = select(small_pool, tmp_path, "--method", method, "--fraction", "0.1,0.3")
    small, large = (set(decode_uids(np.load(tmp_path / f"uids-{f}.npy"))) for f in ("0.1", "0.3"))
    assert len(small) == 300 and len(large) == 900 and small <= large
    assert record["method"]["name"] == method
    if method == "clip-score":  # the 900 highest CLIP scores
        files = sorted(f for f in os.listdir(small_pool) if f.endswith(".parquet"))
        table = pa.concat_tables([pq.read_table(os.path.join(small_pool, f)) for f in files])
        scores = table["clip_l14_similarity_score"].to_numpy()
        top = encode_uids(table["uid"].take(pa.array(np.argsort(-scores, kind="stable")[:900])))
        assert large == set(decode_uids(top))


def test_image_clustering_keeps_the_target_clusters(small_pool, tmp_path):
    with np.load(os.path.join(small_pool, "00000000.npz")) as z:
        np.save(tmp_path / "targets.npy", z["l14_img"][:2].astype(np.float32))
    step = f"image-clustering:targets={tmp_path / 'targets.npy'},clusters=16"
    record = select(small_pool, tmp_path / "o", "--method", step, "--feature-type", "image",
                    "--fraction", 0.01)  # fmt: skip
    info = record["steps"][0]
    assert 1 <= info["target_clusters"] <= 2 and info["n_clusters"] == 16
    assert 30 <= info["kept"] < 3000 and record["counts"]["selected"] == {"0.01": 30}
