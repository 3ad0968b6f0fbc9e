"""The fast float16 → float32 conversion equals numpy's for every half."""

import numpy as np

from d2scale.pool.halfprec import to_float32, unit_rows


def test_every_half_converts_exactly():
    halves = np.arange(65536, dtype=np.uint16).view(np.float16)
    got, want = to_float32(halves), halves.astype(np.float32)
    nan = np.isnan(want)
    assert np.isnan(got[nan]).all()
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_shapes_strides_and_other_dtypes():
    x = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float16)
    np.testing.assert_array_equal(to_float32(x[:, ::2]), x[:, ::2].astype(np.float32))
    assert to_float32(x[:0]).shape == (0, 5)
    y = np.arange(6, dtype=np.float64).reshape(2, 3)
    got = to_float32(y)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.base is None
    np.testing.assert_array_equal(got, y)


def _numpy_unit(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64)  # float16 → float64 is exact too
    return (z / np.sqrt((z * z).sum(axis=1, keepdims=True))).astype(np.float32)


def test_unit_rows_match_float64_numpy_normalisation():
    rng = np.random.default_rng(1)
    cases = ((np.float16, 768), (np.float32, 513), (np.float64, 3), (np.int8, 7), (">f2", 9))
    for dtype, cols in cases:
        x = (rng.standard_normal((300, cols)) * (100 if dtype == np.int8 else 1)).astype(dtype)
        x[0] = 1  # every row nonzero
        out = np.empty(x.shape, np.float32)
        assert unit_rows(x, out) == -1
        np.testing.assert_allclose(out, _numpy_unit(x), rtol=2e-7, atol=0)
        assert (out != _numpy_unit(x)).mean() < 1e-4  # equal but for the sums' rounding


def test_unit_rows_writes_column_slices_and_names_the_first_bad_row():
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float16)
    out = np.zeros((5, 8), np.float32)
    assert unit_rows(x, out[:, 4:]) == -1
    assert (out[:, :4] == 0).all()
    np.testing.assert_allclose(out[:, 4:], _numpy_unit(x), rtol=2e-7)
    for bad in (0.0, np.inf, np.nan):
        y = x.copy()
        y[3] = bad
        assert unit_rows(y, np.empty((5, 4), np.float32)) == 3
