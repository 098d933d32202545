"""The int8 CPU quantized matmul (kernels/quantized_matmul.cpp), and the layers of both quantized kernels
(engine/quantized_linear.py; the exact kernel's own numerics are in test_dequant_matmul.py).

Two references: a NumPy model of exactly what the kernel computes (int8 absmax activations per row
and group, int32 dots, float group sums), which it must match to float rounding; and the float32
matmul of the dequantized weights, which it matches within the activations' quantization error.
"""

import os
import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from engine import cpu_kernels
from engine.model_loader import load_model
from engine.quantized_linear import EXACT, INT8, CpuQuantizedEmbedding, CpuQuantizedLinear, quantize_for_cpu
from engine.runner import ModelRunner
from engine.sampling_params import SamplingParams
from engine.step_types import SeqStep
from tests.engine.tiny_models import tiny_llama
from tests.prompts import chat_ids
from tests.token_compare import assert_tokens_match

K = cpu_kernels.kernels()
pytestmark = pytest.mark.skipif(K is None, reason="the CPU kernels are not built here")


def available_isas() -> list[str]:
    order = ["generic", "avx2", "avx512-vnni"]
    best = K.isa() if K is not None else "generic"
    best = "avx2" if best == "avx512" else best
    return order[: order.index(best) + 1] if best in order else ["generic"]


def quantized_weight(n: int, k: int, bits: int, group: int, seed: int = 0):
    w = mx.random.normal((n, k), key=mx.random.key(seed)) * 0.05
    wq, scales, biases = mx.quantize(w, group, bits)
    return wq, scales, biases, mx.dequantize(wq, scales, biases, group, bits)


def int8_times(x: np.ndarray, w: np.ndarray, group: int) -> np.ndarray:
    """x @ w.T in float64 with x quantized to int8 per row and group by its absmax, as the kernel does."""
    m, k = x.shape
    xg = x.reshape(m, k // group, group).astype(np.float64)
    top = np.abs(xg).max(axis=2, keepdims=True)
    scale = top / 127
    q = np.trunc(xg / np.where(scale > 0, scale, 1) + np.copysign(0.5, xg))
    centred = (q * scale).reshape(m, k)
    return centred @ w.T.astype(np.float64)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("m", [1, 3, 16, 33, 512])
def test_kernel_matches_the_float_matmul_of_the_dequantized_weights(bits, group, m):
    n, k = (200, 192) if m == 512 else (72, 256)  # N not a multiple of 16: a partial last panel
    wq, scales, biases, w = quantized_weight(n, k, bits, group)
    x = mx.random.normal((m, k), key=mx.random.key(1))
    packed = K.pack_quantized(wq, scales, biases, bits, group)
    exact = np.asarray(x @ w.T)
    for isa in available_isas():
        y = np.asarray(K.quantized_matmul(x, *packed, bits, group, n, k, isa=isa))
        error = np.abs(y - exact) / np.abs(exact).max()
        # int8 absmax steps are 1/254 of a group's range; over K terms the dot's error stays ~1%.
        assert error.max() < 3e-2 and error.mean() < 5e-3, (isa, error.max(), error.mean())


@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_computes_exactly_its_int8_model(bits):
    n, k, group, m = 40, 128, 32, 5
    wq, scales, biases, _ = quantized_weight(n, k, bits, group)
    x = np.asarray(mx.random.normal((m, k), key=mx.random.key(2)))
    q = np.asarray(mx.dequantize(wq, mx.ones_like(scales), mx.zeros_like(biases), group, bits))  # the integers
    s, b = np.asarray(scales).repeat(group, axis=1), np.asarray(biases).repeat(group, axis=1)
    # Only the scale part of w sees the int8 x; the bias part multiplies x's exact float group sums.
    expected = int8_times(x, q * s, group) + x.astype(np.float64) @ b.T
    packed = K.pack_quantized(wq, scales, biases, bits, group)
    for isa in available_isas():
        y = np.asarray(K.quantized_matmul(mx.array(x), *packed, bits, group, n, k, isa=isa))
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_env_cap_selects_generic_and_isa_variants_agree():
    capped = subprocess.run(
        [sys.executable, "-c", "from engine import _kernels; print(_kernels.isa())"],
        env={**os.environ, "PAGEDMLX_ISA": "generic"},
        capture_output=True,
        check=True,
        text=True,
    )
    assert capped.stdout.strip().endswith("generic"), capped.stdout
    w = mx.random.normal((48, 64), key=mx.random.key(0))
    x = mx.random.normal((3, 64), key=mx.random.key(1))
    packed = K.pack_quantized(*mx.quantize(w, 32, 8), 8, 32)
    results = [np.asarray(K.quantized_matmul(x, *packed, 8, 32, 48, 64, isa=isa)) for isa in available_isas()]
    for result in results[1:]:
        np.testing.assert_allclose(result, results[0], rtol=1e-5, atol=1e-5)  # FMA or not


def test_bias_is_added_and_leading_axes_kept():
    linear = nn.Linear(64, 40, bias=True)
    linear.weight = linear.weight.astype(mx.float32)
    layer = CpuQuantizedLinear(*mx.quantize(linear.weight, 64, 8), 8, 64, INT8, bias=linear.bias)
    x = mx.random.normal((2, 3, 64), key=mx.random.key(3))
    y = layer(x)
    assert y.shape == (2, 3, 40)
    no_bias = CpuQuantizedLinear(*mx.quantize(linear.weight, 64, 8), 8, 64, INT8)(x)
    np.testing.assert_allclose(np.asarray(y - no_bias), np.broadcast_to(np.asarray(linear.bias), y.shape), atol=1e-5)


@pytest.mark.parametrize("bits", [8, 4])
def test_an_mlx_quantized_linear_is_repacked_not_requantized(bits):
    # Requantizing MLX's dequantized weights does not always give back the same groups, so the layer
    # must take the stored q/scales/biases as they are.
    mx.random.seed(4)
    mlx_layer = nn.QuantizedLinear.from_linear(nn.Linear(128, 48), group_size=64, bits=bits)
    holder = nn.Sequential(mlx_layer)
    quantize_for_cpu(holder, bits, 32, INT8)  # its own group size wins
    assert isinstance(holder.layers[0], CpuQuantizedLinear)
    x = mx.random.normal((5, 128), key=mx.random.key(5))
    packed = K.pack_quantized(mlx_layer.weight, mlx_layer.scales, mlx_layer.biases, bits, 64)
    direct = K.quantized_matmul(x, *packed, bits, 64, 48, 128) + mlx_layer.bias
    np.testing.assert_array_equal(np.asarray(holder(x)), np.asarray(direct))
    mlx_output = np.asarray(mlx_layer(x))
    assert np.abs(np.asarray(holder(x)) - mlx_output).max() < 3e-2 * np.abs(mlx_output).max()


@pytest.mark.parametrize("kernel", [EXACT, INT8], ids=["exact", "int8"])
@pytest.mark.parametrize("bits", [8, 4])
def test_embedding_lookups_dequantize_rows(bits, kernel):
    embedding = nn.Embedding(50, 64)
    wq, scales, biases = mx.quantize(embedding.weight, 32, bits)
    layer = CpuQuantizedEmbedding(wq, scales, biases, bits, 32, kernel)
    ids = mx.array([[0, 49, 7], [3, 3, 16]])
    expected = mx.dequantize(wq, scales, biases, 32, bits)[ids]
    np.testing.assert_array_equal(np.asarray(layer(ids)), np.asarray(expected))


def greedy(model: nn.Module, prompt: list[int], steps: int) -> tuple[list[int], list[list[tuple[int, float]]]]:
    tokens, tops = list(prompt), []
    for _ in range(steps):
        logits = model(mx.array([tokens]))[0, -1].astype(mx.float32)
        logprobs = np.asarray(logits - mx.logsumexp(logits))
        best = np.argsort(-logprobs)[:2]
        tops.append([(int(t), float(logprobs[t])) for t in best])
        tokens.append(int(best[0]))
    return tokens[len(prompt) :], tops


@pytest.mark.parametrize("kernel", [EXACT, INT8], ids=["exact", "int8"])
@pytest.mark.parametrize("bits", [8, 4])
def test_tiny_model_greedy_matches_mlx_quantized(bits, kernel):
    mlx_model, cpu_model = tiny_llama(), tiny_llama()
    nn.quantize(mlx_model, group_size=32, bits=bits)
    quantize_for_cpu(cpu_model, bits, 32, kernel)
    assert isinstance(cpu_model.model.embed_tokens, CpuQuantizedEmbedding)
    prompt = [5, 17, 42, 8, 99, 3]
    ours, our_tops = greedy(cpu_model, prompt, 16)
    theirs, their_tops = greedy(mlx_model, prompt, 16)
    assert_tokens_match(ours, theirs, our_tops, their_tops)


@pytest.mark.parametrize("dtype, named", [("q8", "q4"), ("q4", "q4"), ("q8-int8", "q4-int8"), ("q4-int8", "q4-int8")])
def test_the_default_model_on_the_kernels_answers(dtype, named):
    """`--dtype q8/q4[-int8]` end to end: the loader swaps in the kernel layers and the runner answers. The
    GGUF's layers are 4-bit: q8 keeps them so (and its 8-bit embedding), q4 requantizes the embedding."""
    loaded = load_model(None, dtype)
    assert loaded.dtype == named
    assert any(isinstance(m, CpuQuantizedLinear) for m in loaded.model.modules())
    runner = ModelRunner(loaded, num_blocks=8, block_size=16)
    prompt = chat_ids(loaded, "What is the capital of France?")
    greedy = SamplingParams(max_tokens=8, temperature=0.0)
    tokens, history = [], list(prompt)
    for _ in range(8):
        start = len(history) - (len(prompt) if not tokens else 1)
        step = SeqStep(seq_id=0, token_ids=history[start:], start_pos=start, block_table=list(range(8)),
                       sampling=greedy, sample=True, prompt_len=len(prompt), history=history)
        (out,) = runner.step([step])
        tokens.append(out.token_id)
        history.append(out.token_id)
    assert "Paris" in loaded.tokenizer.decode(tokens)
