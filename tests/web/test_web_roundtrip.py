"""Done-when of issue 13: shards → embed (ViT-B-32) → select → export → the selected samples."""

import os
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow.parquet as pq

from d2scale.pool.uids import decode_uids


def d2scale(*args):
    cmd = [sys.executable, "-m", "d2scale.cli.main", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_embed_select_export_round_trip(web_shards, tmp_path):
    pattern, by_uid = web_shards
    pool, sel, shards = tmp_path / "pool", tmp_path / "sel", tmp_path / "shards"
    d2scale("embed", "--shards", pattern, "--out", pool, "--threads", 2, "--quiet")
    with np.load(pool / "00000.npz") as npz:
        assert sorted(npz.files) == ["b32_img", "b32_txt"] and npz["b32_img"].shape == (40, 512)
    assert "clip_b32_similarity_score" in pq.read_schema(pool / "00001.parquet").names
    d2scale(
        "select",
        "--metadata-dir",
        pool,
        "--embedding-model",
        "b32",
        "--fraction",
        0.5,
        "--out",
        sel,
        "--workers",
        2,
        "--quiet",
    )
    selected = decode_uids(np.load(sel / "uids.npy"))
    assert len(selected) == 40
    d2scale(
        "export",
        "--uids",
        sel / "uids.npy",
        "--shards",
        pattern,
        "--out",
        shards,
        "--samples-per-shard",
        16,
        "--quiet",
    )
    exported = {}
    names = sorted(n for n in os.listdir(shards) if n.endswith(".tar"))
    assert names == ["00000000.tar", "00000001.tar", "00000002.tar"]
    for name in names:
        with tarfile.open(shards / name) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                exported.setdefault(key, {})[ext] = tar.extractfile(m).read()
    originals = {s["__key__"]: (uid, s) for uid, s in by_uid.items()}
    assert sorted(originals[key][0] for key in exported) == sorted(selected)
    for key, members in exported.items():
        assert members == {k: v for k, v in originals[key][1].items() if k != "__key__"}
