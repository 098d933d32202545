"""install_cpu_layers (engine/cpu_layers.py): the kernel-backed norms, RoPE and fused SwiGLU MLPs
compute what the model's own modules do, on the kernels and on their fallback."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models import gemma

from engine import cpu_kernels
from engine.cpu_layers import CpuRMSNorm, CpuRoPE, CpuSwiGLU, install_cpu_layers
from engine.quantized_linear import EXACT, quantize_for_cpu
from tests.engine.tiny_models import tiny_llama, tiny_qwen3

pytestmark = pytest.mark.skipif(cpu_kernels.kernels() is None, reason="the CPU kernels are not built here")
PROMPT = mx.array([[5, 17, 42, 8, 99, 3, 60, 2]])


def kinds(model: nn.Module) -> set[type]:
    return {type(module) for module in model.modules()}


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen3], ids=["llama", "qwen3"])
def test_the_swapped_model_computes_what_mlx_s_modules_do(make):
    theirs, ours = make(), make()
    install_cpu_layers(ours)
    assert {CpuRMSNorm, CpuRoPE, CpuSwiGLU} <= kinds(ours)
    assert not {CpuRMSNorm, CpuRoPE, CpuSwiGLU} & kinds(theirs)
    expected = np.asarray(theirs(PROMPT))
    np.testing.assert_allclose(np.asarray(ours(PROMPT)), expected, rtol=1e-5, atol=1e-5)
    with cpu_kernels.disabled():  # the fallback: MLX's ops inside the swapped modules
        np.testing.assert_allclose(np.asarray(ours(PROMPT)), expected, rtol=1e-5, atol=1e-5)


def test_quantized_gate_and_up_fuse_into_one_exact_layer():
    theirs, ours = tiny_llama(), tiny_llama()
    for model in (theirs, ours):
        quantize_for_cpu(model, 4, 32, EXACT)
    install_cpu_layers(ours)
    mlp = ours.model.layers[0].mlp
    assert isinstance(mlp, CpuSwiGLU) and mlp.gate_up.n == 2 * theirs.model.layers[0].mlp.gate_proj.n
    np.testing.assert_allclose(np.asarray(ours(PROMPT)), np.asarray(theirs(PROMPT)), rtol=1e-5, atol=1e-5)


def test_an_mlp_of_another_activation_is_left_alone():
    holder = nn.Sequential(gemma.MLP(32, 64), nn.RMSNorm(32))
    install_cpu_layers(holder)
    assert type(holder.layers[0]) is gemma.MLP
    assert type(holder.layers[1]) is CpuRMSNorm
