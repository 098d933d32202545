"""Tiny random-weight mlx-lm models (float32) for numerics tests of the paged attention, and as
model folders on disk for the loader's tests."""

import dataclasses
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models import llama, qwen3

VOCAB = 101


def tiny_llama(num_heads: int = 6, num_kv_heads: int = 2, head_dim: int = 16, seed: int = 0,
               vocab_size: int = VOCAB) -> llama.Model:
    """Llama with GQA (3 query heads per kv head by default, like SmolLM2)."""
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=num_heads * head_dim,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        rms_norm_eps=1e-5,
        vocab_size=vocab_size,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
    return _initialized(llama.Model, args, seed)


def tiny_qwen3(seed: int = 0) -> qwen3.Model:
    """Qwen3: q/k RMS norms before RoPE, head_dim independent of the hidden size, GQA 2:1."""
    args = qwen3.ModelArgs(
        model_type="qwen3",
        hidden_size=48,
        num_hidden_layers=2,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-6,
        vocab_size=VOCAB,
        max_position_embeddings=4096,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
    )
    return _initialized(qwen3.Model, args, seed)


class OwnAttention(nn.Module):
    """Llama attention that calls MLX's fused attention itself instead of mlx-lm's
    `scaled_dot_product_attention`: on a paged cache it would see the new tokens only."""

    def __init__(self, inner: llama.Attention):
        super().__init__()
        self.inner = inner

    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        a = self.inner
        B, L, _ = x.shape
        q = a.q_proj(x).reshape(B, L, a.n_heads, -1).transpose(0, 2, 1, 3)
        k = a.k_proj(x).reshape(B, L, a.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = a.v_proj(x).reshape(B, L, a.n_kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = a.rope(q, offset=cache.offset), a.rope(k, offset=cache.offset)
        k, v = cache.update_and_fetch(k, v)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=a.scale, mask=mask)
        return a.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


def tiny_llama_own_attention(layer: int = 1) -> llama.Model:
    """A tiny llama whose layer `layer` computes attention its own way."""
    model = tiny_llama()
    block = model.model.layers[layer]
    block.self_attn = OwnAttention(block.self_attn)
    return model


def write_tiny_llama_folder(path: Path, tokenizer, vocab_size: int = VOCAB) -> Path:
    """An mlx-lm model folder at `path`: tiny_llama()'s config and weights, and `tokenizer` as
    save_pretrained writes it (tokenizer.json, tokenizer_config.json, chat_template.jinja)."""
    model = tiny_llama(vocab_size=vocab_size)
    path.mkdir(parents=True, exist_ok=True)
    config = {key: value for key, value in dataclasses.asdict(model.args).items() if value is not None}
    (path / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    tokenizer.save_pretrained(path)
    return path


def _initialized(model_class, args, seed: int):
    mx.random.seed(seed)
    model = model_class(args)
    mx.eval(model.parameters())
    return model
