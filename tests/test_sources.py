import io
import os
import shutil
import zipfile

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from d2scale.errors import D2ScaleError
from d2scale.sources import PoolEmbeddings, feature_keys, open_pool, read_columns
from d2scale.synth import write_pool


def _reference_embeddings(path: str, keys: list[str]) -> np.ndarray:
    """Independent read: np.load every shard, normalise each member in float64, concatenate."""
    blocks = []
    for name in sorted(f for f in os.listdir(path) if f.endswith(".npz")):
        with np.load(os.path.join(path, name)) as z:
            parts = []
            for k in keys:
                x = z[k].astype(np.float64)
                parts.append(x / np.linalg.norm(x, axis=1, keepdims=True))
            blocks.append(np.concatenate(parts, axis=1).astype(np.float32))
    return np.concatenate(blocks)


def test_pool_order_row_counts_and_fingerprint(small_pool):
    pool = open_pool(small_pool)
    assert [s.name for s in pool.shards] == ["00000000", "00000001", "00000002", "00000003"]
    assert pool.n == 3000 and [s.offset for s in pool.shards] == [0, 750, 1500, 2250]
    assert open_pool(small_pool).fingerprint == pool.fingerprint


@pytest.mark.parametrize("feature_type", ["image", "text", "image_text"])
def test_embeddings_match_independent_read_on_both_layouts(small_pool, feature_type):
    keys = feature_keys("l14", feature_type)
    blocks = PoolEmbeddings(open_pool(small_pool), keys)
    got = np.concatenate([blocks.load(i) for i in range(len(blocks.sizes))])
    assert got.dtype == np.float32 and got.shape == (3000, blocks.dim)
    np.testing.assert_array_equal(got, _reference_embeddings(small_pool, keys))
    norms = np.linalg.norm(got[:, :768], axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)


def test_layouts_are_really_mixed(small_pool):
    with zipfile.ZipFile(os.path.join(small_pool, "00000000.npz")) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    with zipfile.ZipFile(os.path.join(small_pool, "00000001.npz")) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
    with zipfile.ZipFile(os.path.join(small_pool, "00000003.npz")) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    dtypes = [
        np.load(os.path.join(small_pool, f"0000000{i}.npz"))["l14_img"].dtype for i in range(4)
    ]
    assert dtypes == [np.float16, np.float32, np.float16, np.float32]


def test_reader_works_on_an_fsspec_memory_filesystem(small_pool):
    mem = fsspec.filesystem("memory")
    for name in os.listdir(small_pool):
        with (
            open(os.path.join(small_pool, name), "rb") as src,
            mem.open(f"/pool/{name}", "wb") as dst,
        ):
            dst.write(src.read())
    pool = open_pool("memory://pool")
    assert pool.n == 3000
    blocks = PoolEmbeddings(pool, feature_keys("b32", "image"))
    local = PoolEmbeddings(open_pool(small_pool), feature_keys("b32", "image"))
    np.testing.assert_array_equal(blocks.load(2), local.load(2))
    table = read_columns(pool, pool.shards[1], ["uid", "clip_b32_similarity_score"])
    assert table.num_rows == 750 and table.column_names == ["uid", "clip_b32_similarity_score"]


def _copy(src, tmp_path):
    dst = tmp_path / "pool"
    shutil.copytree(src, dst)
    return str(dst)


def test_missing_npz_is_a_clear_error(small_pool, tmp_path):
    path = _copy(small_pool, tmp_path)
    os.remove(os.path.join(path, "00000001.npz"))
    with pytest.raises(D2ScaleError, match="00000001.parquet has no matching 00000001.npz"):
        open_pool(path)


def test_missing_directory_and_empty_pool(tmp_path):
    with pytest.raises(D2ScaleError, match="does not exist"):
        open_pool(str(tmp_path / "nope"))
    with pytest.raises(D2ScaleError, match="no .parquet files"):
        open_pool(str(tmp_path))


def _rewrite_npz(path: str, **changes) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def test_row_count_mismatch(small_pool, tmp_path):
    path = _copy(small_pool, tmp_path)
    npz = os.path.join(path, "00000002.npz")
    _rewrite_npz(npz, l14_img=np.load(npz)["l14_img"][:-1])
    blocks = PoolEmbeddings(open_pool(path), feature_keys("l14", "image"))
    with pytest.raises(D2ScaleError, match="row-count mismatch: .*749 rows .* has 750"):
        blocks.load(2)


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "contains NaN or inf"), (np.inf, "contains NaN or inf"), (0.0, "has zero norm")],
)
def test_bad_embeddings(small_pool, tmp_path, value, message):
    path = _copy(small_pool, tmp_path)
    npz = os.path.join(path, "00000000.npz")
    emb = np.load(npz)["l14_txt"].astype(np.float32)
    if value == 0.0:
        emb[7] = 0.0
    else:
        emb[7, 3] = value
    _rewrite_npz(npz, l14_txt=emb)
    blocks = PoolEmbeddings(open_pool(path), feature_keys("l14", "image_text"))
    with pytest.raises(D2ScaleError, match=f"array 'l14_txt', row 7: embedding {message}"):
        blocks.load(0)


def test_unknown_column_and_missing_key(small_pool, tmp_path):
    pool = open_pool(small_pool)
    with pytest.raises(D2ScaleError, match="column 'nope' is not in .*available: uid"):
        read_columns(pool, pool.shards[0], ["uid", "nope"])
    path = _copy(small_pool, tmp_path)
    npz = os.path.join(path, "00000000.npz")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files if k != "b32_img"}
    np.savez(npz, **arrays)
    with pytest.raises(D2ScaleError, match="has no array 'b32_img'"):
        PoolEmbeddings(open_pool(path), feature_keys("b32", "image")).load(0)


def test_synthetic_pool_has_the_datacomp_schema(small_pool):
    schema = pq.read_schema(os.path.join(small_pool, "00000000.parquet"))
    assert schema.names == [
        "uid", "url", "text", "original_width", "original_height",
        "clip_b32_similarity_score", "clip_l14_similarity_score", "face_bboxes", "sha256",
    ]  # fmt: skip
    assert str(schema.field("face_bboxes").type) == "list<element: list<element: double>>"
    assert str(schema.field("clip_l14_similarity_score").type) == "float"


def test_synthetic_geometry_is_clip_like(tmp_path):
    write_pool(str(tmp_path), rows=6000, shards=1, seed=3, layout="f32-stored")
    z = np.load(tmp_path / "00000000.npz")
    x = z["l14_img"]
    sims = x[:1500] @ x.T
    np.fill_diagonal(sims[:, :1500], -1)
    pairs = sims[:, 1500:3000][np.triu_indices(1500, 1)]
    assert 0.3 <= pairs.mean() <= 0.4  # shared mean direction
    nn = np.sort(sims, axis=1)[:, -1]
    plain = nn[nn < 0.99]  # leave out planted duplicates
    assert 0.8 <= np.median(plain) <= 0.92
    assert 0.005 <= np.mean(nn > 0.99999) <= 0.05  # exact duplicates exist
    scores = pq.read_table(tmp_path / "00000000.parquet")["clip_l14_similarity_score"].to_numpy()
    cos = np.einsum("ij,ij->i", x, z["l14_txt"])
    np.testing.assert_allclose(scores, cos, atol=1e-6)
    assert 0.15 < scores.mean() < 0.4


def test_synth_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_pool(str(a), rows=500, shards=2, seed=5)
    write_pool(str(b), rows=500, shards=2, seed=5)
    for name in ("00000000.parquet", "00000001.npz"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
