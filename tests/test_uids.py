import numpy as np
import pyarrow as pa
import pytest

from d2scale.errors import D2ScaleError
from d2scale.pool.uids import (
    UID_DTYPE,
    canonical_text,
    check_unique,
    decode_uids,
    encode_uids,
    subset_array,
)


def test_encoding_matches_hand_computed_values():
    enc = encode_uids(
        ["0123456789abcdeffedcba9876543210", "ff", "00000000000000010000000000000002"]
    )
    assert enc.dtype == np.dtype("u8,u8")
    assert enc[0]["f0"] == 0x0123456789ABCDEF and enc[0]["f1"] == 0xFEDCBA9876543210
    assert (enc[1]["f0"], enc[1]["f1"]) == (0, 255)  # left-padded with zeros
    assert (enc[2]["f0"], enc[2]["f1"]) == (1, 2)


def test_encoding_agrees_with_datacomp_formula():
    rng = np.random.default_rng(0)
    uids = [bytes(rng.integers(0, 256, 16, dtype=np.uint8)).hex() for _ in range(500)]
    expected = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    enc = encode_uids(pa.array(uids))
    assert np.array_equal(enc, expected)
    assert decode_uids(enc) == uids


def test_uppercase_is_accepted_and_normalised():
    assert decode_uids(encode_uids(["ABCDEF"])) == ["0" * 26 + "abcdef"]


@pytest.mark.parametrize("bad", ["xyz", "", "0" * 33, "12 34", "é", "0x12"])
def test_malformed_uids_name_the_row(bad):
    with pytest.raises(D2ScaleError, match=r"shard\.parquet, row 1: malformed uid"):
        encode_uids(["ab", bad], where="shard.parquet")


def test_null_uid_is_rejected():
    with pytest.raises(D2ScaleError, match="row 0"):
        encode_uids(pa.array([None, "ab"], pa.string()))


def test_duplicates_are_reported():
    enc = encode_uids(["01", "02", "1"])  # "01" and "1" are the same uid once padded
    with pytest.raises(D2ScaleError, match="duplicate uid 0+1 "):
        check_unique(enc)


def test_subset_array_is_sorted_little_endian_u8_pairs():
    enc = encode_uids(["ff", "01", "10" + "0" * 16])
    arr = subset_array(enc)
    assert arr.dtype == np.dtype("<u8,<u8") == UID_DTYPE
    assert decode_uids(arr) == sorted(decode_uids(enc))  # fixed width hex sorts like the pair
    assert np.array_equal(arr, np.sort(enc))


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.string_view()])
def test_large_string_and_string_view_encode_like_string(kind):
    rng = np.random.default_rng(1)
    uids = [bytes(rng.integers(0, 256, 16, dtype=np.uint8)).hex() for _ in range(300)]
    want = encode_uids(uids)
    arr = pa.array(["zz", *uids, "zz"], kind)[1:-1]  # a slice: offsets do not start at 0
    assert np.array_equal(encode_uids(arr), want)
    chunked = pa.chunked_array([arr[:100], arr[100:]])
    assert np.array_equal(encode_uids(chunked), want)
    assert np.array_equal(encode_uids(pa.array(uids).dictionary_encode()), want)


@pytest.mark.parametrize(
    ("uids", "found"), [([1, 2], "uids must be strings"), (pa.array([b"ab"]), "found binary")]
)
def test_non_string_uid_columns_are_refused(uids, found):
    with pytest.raises(D2ScaleError, match=found):
        encode_uids(uids)


def test_the_first_bad_row_is_reported_whatever_the_fault():
    with pytest.raises(D2ScaleError, match="row 1: malformed uid 'xyz'"):
        encode_uids(["ab", "xyz", "0" * 40])
    with pytest.raises(D2ScaleError, match="row 1: the uid is missing"):
        encode_uids(["ab", None, "xyz"])


def test_canonical_text_is_32_lowercase_digits():
    enc = encode_uids(["ABC", "0123456789abcdeffedcba9876543210"])
    text = canonical_text(enc)
    assert text.type == pa.string()
    assert text.to_pylist() == ["0" * 29 + "abc", "0123456789abcdeffedcba9876543210"]
    assert canonical_text(enc[:0]).to_pylist() == []


def test_arrow_buffers_read_without_pyarrow_conversions():
    """Nulls and slices read from the Arrow buffers as pyarrow's own conversion reads them
    (that conversion imports pandas: a small select avoids it)."""
    from d2scale.pool.sources import _float_values
    from d2scale.pool.uids import not_null
    from d2scale.select.sinks import arrow_array

    for values in ([1.5, None, 3.0, None, 5.0, 6.0, 7.0, 8.0, None], [1, None, 3, 4, None]):
        for kind in (pa.float64(), pa.float32(), pa.int64(), pa.int32(), pa.uint8()):
            arr = pa.array(values, kind)
            column = pa.chunked_array([arr.slice(1), arr.slice(0, 2), arr.slice(3, 0)])
            assert list(np.concatenate([not_null(c) for c in column.chunks])) == [
                v is not None for v in values[1:] + values[:2]
            ]
            np.testing.assert_array_equal(_float_values(column),
                                          column.to_numpy().astype(np.float64))  # fmt: skip
    rank = np.array([3, -1, 0, 7, -1, 2, 1, 9, 4, -1], np.int64)
    assert arrow_array(rank, mask=rank < 0).equals(pa.array(rank, pa.int64(), mask=rank < 0))
    for x in (np.array([0.5, np.nan, 2.0]), np.arange(5, dtype=np.int32), np.array([True])):
        got = arrow_array(x)
        assert got.type == pa.array(x).type and got.null_count == 0
        np.testing.assert_array_equal(got.to_numpy(zero_copy_only=False), x)  # NaN == NaN
