import io
import os
import re
import shutil
import zipfile

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from d2scale.errors import D2ScaleError
from d2scale.pool.sources import (
    PoolEmbeddings,
    feature_keys,
    open_pool,
    read_columns,
    read_metadata,
)
from d2scale.pool.synth import write_pool
from d2scale.pool.uids import decode_uids


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


def test_row_count_mismatch_is_found_from_the_headers(small_pool, tmp_path):
    path = _copy(small_pool, tmp_path)
    npz = os.path.join(path, "00000002.npz")
    _rewrite_npz(npz, l14_img=np.load(npz)["l14_img"][:-1])
    with pytest.raises(D2ScaleError, match="row-count mismatch: .*749 rows .* has 750"):
        open_pool(path)


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


@pytest.mark.parametrize(
    ("value", "message"), [(np.inf, "contains NaN or inf"), (0.0, "has zero norm")]
)
def test_bad_float16_embeddings_kept_as_halves(small_pool, tmp_path, value, message):
    """The halves-and-norms reading (the re-ranking's rows in list order) refuses a bad row
    with the same message as the float32 reading."""
    path = _copy(small_pool, tmp_path)
    npz = os.path.join(path, "00000000.npz")
    with np.load(npz) as z:
        img, txt = z["l14_img"].astype(np.float16), z["l14_txt"].astype(np.float16)
    txt[7] = value
    _rewrite_npz(npz, l14_img=img, l14_txt=txt)
    blocks = PoolEmbeddings(open_pool(path), feature_keys("l14", "image_text"))
    with pytest.raises(D2ScaleError, match=f"array 'l14_txt', row 7: embedding {message}"):
        list(blocks.iter_halves(0, np.arange(3, 20), 4))


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


# -- bad input at the reader level ------------------------------------------------


class _InlineClient:
    """The two ``distributed.Client`` calls read_metadata makes, run in this thread."""

    def map(self, fn, *iterables, pure=True):
        return [fn(*args) for args in zip(*iterables, strict=True)]

    def gather(self, futures):
        return futures


def _set_column(path, name, values, **write_options):
    table = pq.read_table(path)
    i = table.column_names.index(name)
    pq.write_table(table.set_column(i, name, values), path, **write_options)


def _same_size_same_mtime(path, write):
    """Rewrite ``path`` with ``write()``, asserting its size is unchanged; restore its mtime."""
    before = os.stat(path)
    write()
    assert os.path.getsize(path) == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_fingerprint_changes_with_embeddings_at_equal_size_and_mtime(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_pool(a, rows=600, shards=2, seed=1, layout="f16-stored")
    write_pool(b, rows=600, shards=2, seed=2, layout="f16-stored")  # "re-embedded"
    before = open_pool(a).fingerprint
    npz = os.path.join(a, "00000001.npz")
    _same_size_same_mtime(npz, lambda: shutil.copyfile(os.path.join(b, "00000001.npz"), npz))
    assert open_pool(a).fingerprint != before
    # a single changed value, in a file that is otherwise byte-identical
    before = open_pool(a).fingerprint
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["l14_txt"][123, 45] += np.float16(0.01)
    _same_size_same_mtime(npz, lambda: np.savez(npz, **arrays))
    assert open_pool(a).fingerprint != before


def test_fingerprint_changes_with_a_uid_at_equal_size_and_mtime(tmp_path):
    path = str(tmp_path / "pool")
    write_pool(path, rows=300, shards=1, seed=4)
    parquet = os.path.join(path, "00000000.parquet")
    plain = {"compression": "none", "use_dictionary": False, "write_statistics": False}
    pq.write_table(pq.read_table(parquet), parquet, **plain)  # uids stored as plain bytes
    before = open_pool(path).fingerprint
    uids = pq.read_table(parquet)["uid"].to_pylist()
    old = uids[200].encode()
    new = old[:-1] + (b"0" if old[-1:] != b"0" else b"1")

    def patch():
        with open(parquet, "rb") as f:
            data = f.read()
        assert data.count(old) == 1  # the uid's bytes in its data page
        with open(parquet, "wb") as f:
            f.write(data.replace(old, new))

    _same_size_same_mtime(parquet, patch)
    assert pq.read_table(parquet)["uid"][200].as_py() == new.decode()
    assert open_pool(path).fingerprint != before


def test_fingerprint_without_stamps_hashes_content(small_pool):
    """The memory filesystem gives no mtime or ETag: content alone must tell pools apart."""
    mem = fsspec.filesystem("memory")
    for name in os.listdir(small_pool):
        with open(os.path.join(small_pool, name), "rb") as src:
            mem.pipe(f"/fp/{name}", src.read())
    before = open_pool("memory://fp").fingerprint
    assert open_pool("memory://fp").fingerprint == before
    with mem.open("/fp/00000001.npz", "rb") as f:
        z = np.load(io.BytesIO(f.read()))
        arrays = {k: z[k] for k in z.files}
    arrays["b32_img"] = arrays["b32_img"][::-1].copy()  # same bytes, other row order
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    assert len(buf.getvalue()) == mem.size("/fp/00000001.npz")
    mem.pipe("/fp/00000001.npz", buf.getvalue())
    assert open_pool("memory://fp").fingerprint != before
    mem.rm("/fp", recursive=True)


def test_fingerprint_reads_a_bounded_number_of_bytes(tmp_path):
    """~100 MB of embeddings in one shard: opening the pool reads well under 2 MB of it."""
    path = str(tmp_path / "big")
    write_pool(path, rows=10_000, shards=1, seed=0, layout="f32-stored")
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))

    def read_bytes() -> int:
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("rchar:")).split()[1])

    start = read_bytes()
    open_pool(path)
    used = read_bytes() - start
    assert size > 90e6 and used < 2e6, (size, used)


def test_npz_without_parquet_is_refused(small_pool, tmp_path):
    path = _copy(small_pool, tmp_path)
    os.remove(os.path.join(path, "00000002.parquet"))
    with pytest.raises(D2ScaleError, match="00000002.npz has no matching 00000002.parquet"):
        open_pool(path)
    for name in os.listdir(path):
        if name.endswith(".parquet"):
            os.remove(os.path.join(path, name))
    with pytest.raises(D2ScaleError, match=r"00000000.npz has no matching .*\(4 unpaired"):
        open_pool(path)


def test_spark_style_parquet_directory_is_refused(small_pool, tmp_path):
    path = _copy(small_pool, tmp_path)
    spark = os.path.join(path, "00000001.parquet")
    os.rename(spark, os.path.join(path, "part-0.parquet"))
    os.mkdir(spark)
    os.rename(os.path.join(path, "part-0.parquet"), os.path.join(spark, "part-0.parquet"))
    with pytest.raises(D2ScaleError, match="00000001.parquet in .* is a directory .*Spark"):
        open_pool(path)


def test_symlinked_files_are_read(small_pool, tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    for name in os.listdir(small_pool):
        (links / name).symlink_to(os.path.join(small_pool, name))
    pool, real = open_pool(str(links)), open_pool(small_pool)
    assert pool.n == 3000 and [s.name for s in pool.shards] == [s.name for s in real.shards]
    assert pool.fingerprint == real.fingerprint
    blocks = PoolEmbeddings(pool, feature_keys("l14", "image"))
    want = PoolEmbeddings(real, feature_keys("l14", "image"))
    np.testing.assert_array_equal(blocks.load(3), want.load(3))
    (links / "00000002.npz").unlink()
    (links / "00000002.npz").symlink_to(tmp_path / "gone.npz")
    with pytest.raises(D2ScaleError, match="00000002.npz in .* is a broken symbolic link"):
        open_pool(str(links))


def test_upper_case_extension_is_refused_not_skipped(small_pool, tmp_path):
    path = _copy(small_pool, tmp_path)
    for ext in ("parquet", "npz"):
        os.rename(
            os.path.join(path, f"00000003.{ext}"), os.path.join(path, f"00000003.{ext.upper()}")
        )
    with pytest.raises(D2ScaleError, match="must end in lower-case .parquet or .npz"):
        open_pool(path)


def test_zero_row_pair_is_checked_then_left_out(small_pool, tmp_path):
    path = _copy(small_pool, tmp_path)
    table = pq.read_table(os.path.join(path, "00000000.parquet")).slice(0, 0)
    pq.write_table(table, os.path.join(path, "00000001b.parquet"))
    with np.load(os.path.join(path, "00000000.npz")) as z:
        np.savez(os.path.join(path, "00000001b.npz"), **{k: z[k][:0] for k in z.files})
    pool = open_pool(path)
    assert pool.n == 3000 and [s.name for s in pool.shards] == [
        "00000000", "00000001", "00000002", "00000003"
    ]  # fmt: skip
    assert pool.fingerprint != open_pool(small_pool).fingerprint


def _member_case(small_pool, tmp_path, key, array):
    path = _copy(small_pool, tmp_path)
    _rewrite_npz(os.path.join(path, "00000001.npz"), **{key: array})
    return path


@pytest.mark.parametrize(
    ("dtype", "name"), [(np.complex64, "complex64"), (np.int32, "int32"), (np.bool_, "bool")]
)
def test_non_float_embeddings_are_refused(small_pool, tmp_path, dtype, name):
    arr = np.ones((750, 768), dtype=dtype)
    path = _member_case(small_pool, tmp_path, "l14_img", arr)
    with pytest.raises(D2ScaleError, match=f"array 'l14_img' holds {name} values; embeddings"):
        open_pool(path)


def test_each_member_width_is_checked(small_pool, tmp_path):
    """1024-d image + 512-d text has the right total width for l14 but is refused."""
    rng = np.random.default_rng(0)
    path = _copy(small_pool, tmp_path)
    _rewrite_npz(
        os.path.join(path, "00000002.npz"),
        l14_img=rng.standard_normal((750, 1024)).astype(np.float16),
        l14_txt=rng.standard_normal((750, 512)).astype(np.float16),
    )
    with pytest.raises(D2ScaleError, match="'l14_img' has 1024 dimensions but l14 .* 768"):
        open_pool(path)


def test_3d_embeddings_report_their_real_shape(small_pool, tmp_path):
    path = _member_case(small_pool, tmp_path, "b32_txt", np.ones((750, 32, 16), np.float32))
    with pytest.raises(
        D2ScaleError, match=r"must be 2-D \(rows × 512\), has shape \(750, 32, 16\)"
    ):
        open_pool(path)


def test_unknown_protocol_and_missing_filesystem_package():
    with pytest.raises(D2ScaleError, match="cannot open metadata directory foo://x: Protocol"):
        open_pool("foo://x")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(D2ScaleError, match=r"needs the s3fs package \(pip install s3fs\)"):
            open_pool("s3://bucket/pool")


def _damage(path: str, member: str, at: int, length: int = 64) -> None:
    """Overwrite ``length`` bytes of a member's stored data ``at`` bytes from its start."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
        f.seek(info.header_offset + 30 + int(name_len) + int(extra_len) + at)
        f.write(bytes(range(256))[:length] * 1)


def test_damaged_or_truncated_npz_is_one_clear_error(small_pool, tmp_path):
    path = _copy(small_pool, tmp_path)
    npz = os.path.join(path, "00000000.npz")  # deflated
    _damage(npz, "l14_txt.npy", at=2)
    with pytest.raises(D2ScaleError, match="cannot read embeddings from .*00000000.npz: damaged"):
        open_pool(path)
    shutil.copyfile(os.path.join(small_pool, "00000000.npz"), npz)
    with open(npz, "r+b") as f:
        f.truncate(os.path.getsize(npz) // 2)
    with pytest.raises(D2ScaleError, match="00000000.npz: not a complete zip/npz file"):
        open_pool(path)


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        (["n/a", "0.3"], "string values (e.g. 'n/a')"),
        (["0.25", "0.3"], "string values (e.g. '0.25')"),  # finding 13: numeric strings
        ([True, False], "bool values"),  # finding 13
        ([[0.1], [0.2]], "list<element: double> values"),
    ],
)
def test_13_non_numeric_score_columns_are_refused(small_pool, tmp_path, values, shown):
    path = _copy(small_pool, tmp_path)
    parquet = os.path.join(path, "00000003.parquet")
    _set_column(parquet, "clip_l14_similarity_score", pa.array(values * 375))
    pool = open_pool(path)
    with pytest.raises(
        D2ScaleError,
        match=re.escape(
            f"00000003.parquet: score column 'clip_l14_similarity_score' holds {shown}"
        ),
    ):
        read_metadata(pool, "clip_l14_similarity_score", _InlineClient())
    with pytest.raises(D2ScaleError, match="score column 'text' holds string values"):
        read_metadata(pool, "text", _InlineClient())


@pytest.mark.parametrize("kind", [pa.int16(), pa.uint64(), pa.float16(), pa.decimal128(9, 2)])
def test_integer_float_and_decimal_scores_are_accepted(small_pool, tmp_path, kind):
    path = _copy(small_pool, tmp_path)
    values = pa.array(np.arange(750) % 300, pa.int16()).cast(kind)
    _set_column(os.path.join(path, "00000000.parquet"), "original_width", values)
    meta = read_metadata(open_pool(path), "original_width", _InlineClient())
    assert meta.scores.dtype == np.float64
    assert meta.scores[:750].tolist() == (np.arange(750) % 300).tolist()


@pytest.mark.parametrize("kind", [pa.large_string(), pa.string_view(), "dictionary"])
def test_large_string_and_other_uid_column_types(small_pool, tmp_path, kind):
    path = _copy(small_pool, tmp_path)
    parquet = os.path.join(path, "00000001.parquet")
    uids = pq.read_table(parquet)["uid"]
    cast = uids.dictionary_encode() if kind == "dictionary" else uids.cast(kind)
    _set_column(parquet, "uid", cast)
    assert pq.read_table(parquet)["uid"].type == cast.type
    meta = read_metadata(open_pool(path), "clip_l14_similarity_score", _InlineClient())
    want = read_metadata(open_pool(small_pool), "clip_l14_similarity_score", _InlineClient())
    np.testing.assert_array_equal(meta.uids, want.uids)
    assert meta.spelling is None


def test_uid_spelling_is_kept(small_pool, tmp_path):
    path = _copy(small_pool, tmp_path)
    parquet = os.path.join(path, "00000002.parquet")
    uids = pq.read_table(parquet)["uid"].to_pylist()
    spelt = [u.upper() if i % 2 else u.lstrip("0") or "0" for i, u in enumerate(uids)]
    spelt[0] = "00ab"  # fewer than 32 digits: left-padded, kept as written
    _set_column(parquet, "uid", pa.array(spelt))
    meta = read_metadata(open_pool(path), "clip_l14_similarity_score", _InlineClient())
    want = read_metadata(open_pool(small_pool), "clip_l14_similarity_score", _InlineClient())
    assert want.spelling is None and meta.spelling is not None
    text = meta.uid_strings().to_pylist()
    assert text[1500:2250] == spelt and text[:1500] == want.uid_strings().to_pylist()[:1500]
    assert decode_uids(meta.uids[1501:1502]) == [spelt[1].lower()]
    assert decode_uids(meta.uids[1500:1501]) == ["0" * 28 + "00ab"]


def test_synth_refuses_a_directory_with_an_older_pool(tmp_path):
    write_pool(str(tmp_path), rows=40, shards=4, seed=0)
    write_pool(str(tmp_path), rows=40, shards=4, seed=1)  # same shard names: all replaced
    with pytest.raises(D2ScaleError, match="already holds 00000002.npz .*4 pool files in all"):
        write_pool(str(tmp_path), rows=40, shards=2, seed=0)
    assert open_pool(str(tmp_path)).n == 40


def test_other_models_members_are_checked_too(small_pool, tmp_path):
    """``<prefix>_img``/``_txt`` of any model (e.g. from d2scale embed): float, 2-D, one row
    per parquet row, and one width across the pool."""
    rng = np.random.default_rng(0)
    path = _copy(small_pool, tmp_path)
    for i in range(4):
        width = 32 if i == 2 else 64
        _rewrite_npz(os.path.join(path, f"0000000{i}.npz"), vit_img=rng.random((750, width)))
    with pytest.raises(D2ScaleError, match="'vit_img' has 32 dimensions but in .*00000000.npz"):
        open_pool(path)
    _rewrite_npz(os.path.join(path, "00000002.npz"), vit_img=rng.random((750, 64)) + 1j)
    with pytest.raises(D2ScaleError, match="'vit_img' holds complex128 values"):
        open_pool(path)
    _rewrite_npz(os.path.join(path, "00000002.npz"), vit_img=rng.random((750, 64)))
    assert PoolEmbeddings(open_pool(path), feature_keys("vit", "image")).dim == 64


def test_macos_appledouble_files_beside_a_pool_are_not_pool_files(small_pool, tmp_path):
    from d2scale.pool.buckets import resolve_pool

    pool = tmp_path / "pool"
    shutil.copytree(small_pool, pool)
    for name in ("._00000000.npz", "._00000000.parquet", "._extra.npz"):
        (pool / name).write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")
    assert open_pool(str(pool)).fingerprint == open_pool(small_pool).fingerprint
    assert resolve_pool(str(pool / "*.parquet")).n == open_pool(small_pool).n
