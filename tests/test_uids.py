import numpy as np
import pyarrow as pa
import pytest

from d2scale.errors import D2ScaleError
from d2scale.uids import UID_DTYPE, check_unique, decode_uids, encode_uids, subset_array


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
