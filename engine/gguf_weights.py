"""GGUF llama tensors -> an mlx-lm llama model.

`mx.load` reads GGUF natively: Q4_0/Q4_1/Q8_0 tensors arrive as MLX affine-quantized triplets
(`weight`, `scales`, `biases`, one group per 32-value GGUF block), other tensors as floats.
What is left to do is llama.cpp's naming, its q/k row order, and bits that differ per tensor.
"""

import re
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.llama import Model, ModelArgs

GGUF_GROUP_SIZE = 32

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|scales|biases|bias)$")
_GLOBAL_TENSOR = re.compile(r"(\w+)\.(weight|scales|biases|bias)$")
# llama.cpp's per-frequency RoPE divisors (Llama 3.1-style scaling); not a module weight.
_ROPE_FREQS = "rope_freqs.weight"


def _mlx_name(gguf_name: str) -> str:
    if match := _LAYER_TENSOR.match(gguf_name):
        layer, part, kind = match.groups()
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    elif (match := _GLOBAL_TENSOR.match(gguf_name)) and match.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[match.group(1)]}.{match.group(2)}"
    raise ValueError(f"unexpected tensor {gguf_name!r} in a llama GGUF")


def _unpermute_rows(tensor: mx.array, heads: int) -> mx.array:
    """Undo llama.cpp's q/k row interleave (its RoPE pairs adjacent rows, HF pairs halves)."""
    rows = tensor.shape[0]
    return (
        tensor.reshape(heads, rows // heads // 2, 2, *tensor.shape[1:])
        .swapaxes(1, 2)
        .reshape(tensor.shape)
    )


def read_gguf(path: str) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """(tensors, metadata) of a GGUF file, metadata as plain Python values (str, int, float, bool, list)."""
    tensors, metadata = mx.load(path, return_metadata=True)
    return tensors, {k: v.tolist() if isinstance(v, mx.array) else v for k, v in metadata.items()}


def llama_args_from_gguf(metadata: dict, tensors: dict[str, mx.array]) -> ModelArgs:
    """mlx-lm llama ModelArgs from the `llama.*` GGUF metadata keys."""

    def key(name, default=None):
        return metadata.get(f"llama.{name}", default)

    heads = key("attention.head_count")
    hidden = key("embedding_length")
    context = key("context_length")
    rope_scaling = None
    if _ROPE_FREQS in tensors:
        # "longrope" with equal context lengths is plain RoPE with per-frequency factors.
        factors = tensors[_ROPE_FREQS].astype(mx.float32).tolist()
        rope_scaling = {
            "rope_type": "longrope",
            "long_factor": factors,
            "short_factor": factors,
            "original_max_position_embeddings": context,
        }
    elif key("rope.scaling.type") == "linear":
        rope_scaling = {"rope_type": "linear", "factor": key("rope.scaling.factor")}
    return ModelArgs(
        model_type="llama",
        hidden_size=hidden,
        num_hidden_layers=key("block_count"),
        intermediate_size=key("feed_forward_length"),
        num_attention_heads=heads,
        num_key_value_heads=key("attention.head_count_kv", heads),
        head_dim=key("attention.key_length", hidden // heads),
        rms_norm_eps=key("attention.layer_norm_rms_epsilon"),
        vocab_size=key("vocab_size") or len(metadata["tokenizer.ggml.tokens"]),
        rope_theta=key("rope.freq_base", 10000.0),
        rope_scaling=rope_scaling,
        max_position_embeddings=context,
        tie_word_embeddings="output.weight" not in tensors,
    )


def llama_weights_from_gguf(tensors: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Rename to mlx-lm's llama names and restore HF's q/k row order (weights, scales, biases)."""
    weights = {}
    for gguf_name, tensor in tensors.items():
        if gguf_name == _ROPE_FREQS:
            continue
        if ".attn_q." in gguf_name:
            tensor = _unpermute_rows(tensor, args.num_attention_heads)
        elif ".attn_k." in gguf_name:
            tensor = _unpermute_rows(tensor, args.num_key_value_heads)
        weights[_mlx_name(gguf_name)] = tensor
    return weights


def quantization_by_module(weights: dict[str, mx.array]) -> dict[str, dict]:
    """{module path: {"group_size", "bits"}} for every quantized tensor, bits read from its packed width."""
    params = {}
    for name, scales in weights.items():
        if name.endswith(".scales"):
            module = name.removesuffix(".scales")
            in_features = scales.shape[-1] * GGUF_GROUP_SIZE
            bits = weights[f"{module}.weight"].shape[-1] * 32 // in_features
            params[module] = {"group_size": GGUF_GROUP_SIZE, "bits": bits}
    return params


def load_gguf_llama(tensors: dict[str, mx.array], metadata: dict) -> nn.Module:
    """An mlx-lm llama Model holding the GGUF's weights as stored (quantized layers stay quantized)."""
    args = llama_args_from_gguf(metadata, tensors)
    weights = llama_weights_from_gguf(tensors, args)
    model = Model(args)
    quantization = quantization_by_module(weights)
    if quantization:
        nn.quantize(model, class_predicate=lambda path, _module: quantization.get(path, False))
    model.eval()
    model.load_weights(list(weights.items()), strict=True)
    return model
