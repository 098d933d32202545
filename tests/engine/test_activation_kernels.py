"""The CPU kernels of kernels/activations.cpp: swiglu, rms_norm and rope against MLX's own ops.

Each runs in its best variant here ("") and the portable one ("generic"), on shapes that are not
multiples of the vector width, with leading dims, and big enough to be split over the threads.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from engine import cpu_kernels

K = cpu_kernels.kernels()
pytestmark = pytest.mark.skipif(K is None, reason="the CPU kernels are not built here")

ISAS = ["", "generic"]


def normal(shape, seed, scale=1.0):
    return mx.random.normal(shape, key=mx.random.key(seed)) * scale


def assert_close(got: mx.array, want: mx.array, rtol: float, atol: float):
    assert got.shape == want.shape and got.dtype == mx.float32
    g, w = np.array(got), np.array(want)
    assert np.isfinite(g).all() == np.isfinite(w).all()
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def reference_swiglu(h: mx.array) -> mx.array:
    f = h.shape[-1] // 2
    return nn.silu(h[..., :f]) * h[..., f:]


# --- swiglu -----------------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(16, 2 * 1536), (1, 2 * 1536), (3, 26), (5, 2), (2, 3, 2 * 37), (64, 2 * 1536)])
def test_swiglu_matches_mlx(isa, shape):
    h = normal(shape, 1, 4.0)
    assert_close(K.swiglu(h, isa=isa), reference_swiglu(h), rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("isa", ISAS)
def test_swiglu_large_inputs_saturate_without_nan(isa):
    gate = mx.concatenate([mx.linspace(-100, 100, 401), mx.array([-1e30, 1e30, -88.5, 88.5, 0.0])])
    up = normal(gate.shape, 2, 3.0)
    h = mx.concatenate([gate, up])[None]
    got = K.swiglu(h, isa=isa)
    assert not np.isnan(np.array(got)).any()
    # Below about -87 the sigmoid's exp(-|a|) stops at 2**-126: silu is then ~1e-36 instead of ~0.
    assert_close(got, reference_swiglu(h), rtol=2e-6, atol=1e-28)


@pytest.mark.parametrize("isa", ISAS)
def test_swiglu_strided_input(isa):
    h = normal((2 * 1536, 8), 3).T  # not row-contiguous
    assert_close(K.swiglu(h, isa=isa), reference_swiglu(h), rtol=2e-6, atol=1e-30)


def test_swiglu_threads_equal_one_thread():
    big = normal((64, 2 * 1536), 4, 4.0)  # 98k outputs: split over the threads
    small = mx.concatenate([K.swiglu(big[i : i + 1]) for i in range(64)])  # one row at a time
    np.testing.assert_array_equal(np.array(K.swiglu(big)), np.array(small))


def test_swiglu_rejects_other_dtypes_and_odd_widths():
    with pytest.raises(ValueError, match="float32"):
        K.swiglu(mx.zeros((2, 8), dtype=mx.float16))
    with pytest.raises(ValueError, match="even"):
        K.swiglu(mx.zeros((2, 7)))
    with pytest.raises(ValueError, match="isa"):
        K.swiglu(mx.zeros((2, 8)), isa="sse9")


# --- rms_norm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(16, 576), (1, 576), (3, 7), (2, 5, 64), (4, 1), (128, 576)])
def test_rms_norm_matches_mlx(isa, shape):
    x = normal(shape, 5, 3.0)
    w = normal(shape[-1:], 6) + 1.0
    for eps in (1e-5, 1e-6):
        want = mx.fast.rms_norm(x, w, eps)
        assert_close(K.rms_norm(x, w, eps, isa=isa), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
def test_rms_norm_strided_input(isa):
    x = normal((576, 9), 7).T
    w = normal((576,), 8)
    assert_close(K.rms_norm(x, w, 1e-5, isa=isa), mx.fast.rms_norm(x, w, 1e-5), rtol=1e-6, atol=1e-6)


def test_rms_norm_threads_equal_one_thread():
    x = normal((128, 576), 9)  # 74k elements: split over the threads
    w = normal((576,), 10)
    rows = mx.concatenate([K.rms_norm(x[i : i + 1], w, 1e-5) for i in range(128)])
    np.testing.assert_array_equal(np.array(K.rms_norm(x, w, 1e-5)), np.array(rows))


def test_rms_norm_rejects_bad_inputs():
    with pytest.raises(ValueError, match="float32"):
        K.rms_norm(mx.zeros((2, 8), dtype=mx.bfloat16), mx.ones((8,)), 1e-5)
    with pytest.raises(ValueError, match="weight"):
        K.rms_norm(mx.zeros((2, 8)), mx.ones((7,)), 1e-5)


# --- rope -------------------------------------------------------------------------------------


def decode_queries(b, h, l, d, seed):
    """[B, H, L, D] as the attention builds it: a transposed view of the projection's output."""
    return normal((b, l, h * d), seed).reshape(b, l, h, d).transpose(0, 2, 1, 3)


def reference_rope(x, dims, traditional, base, scale, offset):
    return mx.fast.rope(x, dims, traditional=traditional, base=base, scale=scale, offset=offset)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize(
    "b,h,l,d,dims",
    [(16, 9, 1, 64, 64), (1, 3, 1, 64, 64), (2, 9, 5, 64, 32), (3, 2, 4, 7 * 2, 10), (1, 4, 200, 64, 64),
     (2, 3, 3, 96, 96), (2, 2, 2, 8, 2)],
)
def test_rope_matches_mlx_on_strided_input(isa, traditional, b, h, l, d, dims):
    x = decode_queries(b, h, l, d, 11)
    offsets = mx.array(np.random.default_rng(0).integers(0, 32768 - l, size=b), dtype=mx.int32)
    for offset in (offsets, 7, 32760 - l):
        want = reference_rope(x, dims, traditional, 10000.0, 1.0, offset)
        got = K.rope(x, dims, traditional, 10000.0, 1.0, offset, isa=isa)
        assert_close(got, want, rtol=0, atol=1e-5)
        assert got.shape == (b, h, l, d)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("traditional", [False, True])
def test_rope_contiguous_input_other_base_and_scale(isa, traditional):
    x = normal((4, 3, 6, 64), 12)
    offsets = mx.array([0, 100, 16000, 32700], dtype=mx.int32)
    for base, scale in ((10000.0, 1.0), (500000.0, 0.25), (100.0, 2.0)):
        want = reference_rope(x, 48, traditional, base, scale, offsets)
        assert_close(K.rope(x, 48, traditional, base, scale, offsets, isa=isa), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_rope_positions_near_32k_match_exactly_enough_per_row(isa):
    x = decode_queries(8, 9, 1, 64, 13)
    offsets = mx.arange(32760, 32768, dtype=mx.int32)
    want = reference_rope(x, 64, False, 10000.0, 1.0, offsets)
    got = K.rope(x, 64, False, 10000.0, 1.0, offsets, isa=isa)
    assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_rope_three_dims_and_int64_offsets(isa):
    x = normal((3, 5, 64), 14)
    offsets = mx.array([1, 2, 3], dtype=mx.int64)
    want = reference_rope(x, 64, False, 10000.0, 1.0, offsets)
    assert_close(K.rope(x, 64, False, 10000.0, 1.0, offsets, isa=isa), want, rtol=0, atol=1e-5)


def test_rope_the_variants_agree():
    x = decode_queries(16, 9, 3, 64, 15)
    offsets = mx.array(np.arange(16) * 2000, dtype=mx.int32)
    for traditional in (False, True):
        best = K.rope(x, 64, traditional, 10000.0, 1.0, offsets)
        generic = K.rope(x, 64, traditional, 10000.0, 1.0, offsets, isa="generic")
        np.testing.assert_array_equal(np.array(best), np.array(generic))  # the same arithmetic


def test_rope_threads_equal_one_thread():
    x = decode_queries(4, 9, 64, 64, 16)  # 147k elements: split over the threads
    offsets = mx.array([0, 5, 1000, 30000], dtype=mx.int32)
    full = K.rope(x, 64, False, 10000.0, 1.0, offsets)
    rows = mx.concatenate([K.rope(x[i : i + 1], 64, False, 10000.0, 1.0, offsets[i : i + 1]) for i in range(4)])
    np.testing.assert_array_equal(np.array(full), np.array(rows))


def test_rope_rejects_bad_inputs():
    x = mx.zeros((1, 2, 3, 8))
    with pytest.raises(ValueError, match="float32"):
        K.rope(x.astype(mx.float16), 8, False, 10000.0, 1.0, 0)
    with pytest.raises(ValueError, match="dims"):
        K.rope(x, 7, False, 10000.0, 1.0, 0)
    with pytest.raises(ValueError, match="offset"):
        K.rope(x, 8, False, 10000.0, 1.0, mx.array([1, 2, 3], dtype=mx.int32))
