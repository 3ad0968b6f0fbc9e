"""The fast float16 → float32 conversion equals numpy's for every half."""

import numpy as np

from d2scale.pool.halfprec import to_float32


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
