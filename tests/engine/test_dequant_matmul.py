"""The exact CPU quantized matmul (kernels/dequant_matmul.cpp): weights dequantized in cache to the same
float32 values mx.dequantize gives, activations left float32, so the product equals float32's up to
summation order; and the default model served on it, which is the CPU default for its Q4_1 GGUF."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.utils import dequantize_model

from engine import cpu_kernels
from engine.model_loader import load_model
from engine.quantized_linear import EXACT, CpuQuantizedEmbedding, CpuQuantizedLinear, quantize_for_cpu
from tests.engine.tiny_models import tiny_llama
from tests.token_compare import assert_tokens_match

K = cpu_kernels.kernels()
pytestmark = pytest.mark.skipif(K is None, reason="the CPU kernels are not built here")


def available_isas() -> list[str]:
    best = K.isa() if K is not None else "generic"
    if best.startswith("avx512"):
        return ["generic", "avx2", "avx512"]
    return ["generic", "avx2"] if best == "avx2" else ["generic"]


def quantized_weight(n: int, k: int, bits: int, group: int, seed: int = 0):
    w = mx.random.normal((n, k), key=mx.random.key(seed)) * 0.05
    wq, scales, biases = mx.quantize(w, group, bits)
    scales, biases = scales.astype(mx.float16), biases.astype(mx.float16)  # as GGUF files store them
    return wq, scales, biases, mx.dequantize(wq, scales.astype(mx.float32), biases.astype(mx.float32), group, bits)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_the_weights_it_multiplies_are_mx_dequantize_s_bit_for_bit(bits, group):
    # x = I: each output is one weight times 1 plus zeros, so nothing but the weight itself can differ.
    n, k = 72, 256  # N not a multiple of 32: a partial last panel
    wq, scales, biases, w = quantized_weight(n, k, bits, group)
    packed = K.pack_dequant(wq, scales, biases, bits, group)
    for isa in available_isas():
        y = K.dequant_matmul(mx.eye(k), *packed, bits, group, n, k, isa=isa)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(w.T), err_msg=isa)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 12, 13, 16, 33, 300])
def test_it_equals_the_float32_matmul_up_to_summation_order(bits, m):
    n, k, group = 200, 576, 32
    wq, scales, biases, w = quantized_weight(n, k, bits, group)
    x = mx.random.normal((m, k), key=mx.random.key(1))
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    packed = K.pack_dequant(wq, scales, biases, bits, group)
    for isa in available_isas():
        y = np.asarray(K.dequant_matmul(x, *packed, bits, group, n, k, isa=isa))
        # float32 sums of 576 terms: a few ulps of the largest partial sums.
        np.testing.assert_allclose(y, exact, rtol=0, atol=2e-6 * np.abs(exact).max() * np.sqrt(k), err_msg=isa)


def test_bias_and_leading_axes_and_embedding_rows():
    wq, scales, biases, w = quantized_weight(96, 64, 8, 32)
    bias = mx.random.normal((96,), key=mx.random.key(2))
    layer = CpuQuantizedLinear(wq, scales, biases, 8, 32, EXACT, bias=bias)
    x = mx.random.normal((2, 3, 64), key=mx.random.key(3))
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(x @ w.T + bias), rtol=1e-5, atol=1e-5)
    embedding = CpuQuantizedEmbedding(wq, scales, biases, 8, 32, EXACT)
    ids = mx.array([[0, 95, 7], [3, 3, 40]])
    np.testing.assert_array_equal(np.asarray(embedding(ids)), np.asarray(w[ids]))
    np.testing.assert_allclose(np.asarray(embedding.as_linear(x)), np.asarray(x @ w.T), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [64, 40])
def test_two_layers_concatenate_into_one_when_their_panels_are_whole(n):
    first = CpuQuantizedLinear(*quantized_weight(n, 128, 4, 32)[:3], 4, 32, EXACT)
    second = CpuQuantizedLinear(*quantized_weight(n, 128, 4, 32, seed=1)[:3], 4, 32, EXACT)
    joined = first.concatenate(second)
    if n % EXACT.panel:
        assert joined is None
        return
    x = mx.random.normal((5, 128), key=mx.random.key(4))
    np.testing.assert_array_equal(np.asarray(joined(x)), np.asarray(mx.concatenate([first(x), second(x)], -1)))
    assert (first.n, joined.n) == (n, 2 * n)


def test_bad_arguments_are_value_errors():
    wq, scales, biases, _ = quantized_weight(32, 64, 4, 32)
    packed = K.pack_dequant(wq, scales, biases, 4, 32)
    with pytest.raises(ValueError, match="last axis must be K"):
        K.dequant_matmul(mx.zeros((2, 63)), *packed, 4, 32, 32, 64)
    with pytest.raises(ValueError, match="pack_dequant"):
        K.dequant_matmul(mx.zeros((2, 64)), *packed, 8, 32, 32, 64)
    with pytest.raises(ValueError, match="not available"):
        K.dequant_matmul(mx.zeros((2, 64)), *packed, 4, 32, 32, 64, isa="sve")


def test_a_quantized_tiny_model_computes_what_its_float32_dequantization_does():
    stored, dequantized = tiny_llama(), tiny_llama()  # the same seed: the same weights
    for model in (stored, dequantized):
        nn.quantize(model, group_size=32, bits=4)
    dequantize_model(dequantized)
    quantize_for_cpu(stored, 8, 32, EXACT, stored_only=True)
    assert isinstance(stored.model.embed_tokens, CpuQuantizedEmbedding)
    prompt = mx.array([[5, 17, 42, 8, 99, 3]])
    np.testing.assert_allclose(np.asarray(stored(prompt)), np.asarray(dequantized(prompt)), rtol=1e-4, atol=1e-4)


def test_the_default_model_keeps_its_q4_weights_on_the_cpu_by_default():
    loaded = load_model(None)
    assert loaded.dtype == "q4"
    layers = [m for m in loaded.model.modules() if isinstance(m, (CpuQuantizedLinear, CpuQuantizedEmbedding))]
    assert {m.kernel for m in layers} == {EXACT}
    assert {(type(m).__name__, m.bits) for m in layers} >= {("CpuQuantizedLinear", 4), ("CpuQuantizedEmbedding", 8)}
