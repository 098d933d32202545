"""The dispatcher: every attention layer of a loaded model goes through it, a layer that computes
attention its own way (or a cache the pool cannot serve) is caught, and mlx-lm's KVCache path
is unchanged."""

import sys

import mlx.core as mx
import pytest
from mlx_lm.models import base, llama
from mlx_lm.models.cache import make_prompt_cache

from engine.attention_dispatch import (
    check_paged_dispatch,
    install_paged_attention,
    scaled_dot_product_attention,
)
from engine.kv_pool import KVPool
from engine.paged_cache import build_layout, make_caches
from tests.engine.tiny_models import tiny_llama, tiny_llama_own_attention, tiny_qwen3


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_qwen3])
def test_every_attention_layer_goes_through_the_dispatcher(make_model):
    model = make_model()
    install_paged_attention(model)
    install_paged_attention(model)  # idempotent
    check_paged_dispatch(model)

    assert sys.modules[type(model).__module__].scaled_dot_product_attention is scaled_dot_product_attention
    args = model.args
    pool = KVPool(len(model.layers), args.num_key_value_heads, args.head_dim, 8, 4, mx.float32)
    caches = make_caches(pool, build_layout([[0, 1], [2]], [0, 0], 3, 4))
    mx.eval(model(mx.array([[1, 2, 3], [4, 5, 6]]), cache=caches))
    assert [cache.reads for cache in caches] == [1] * len(model.layers)


def test_a_layer_computing_attention_its_own_way_is_caught():
    model = tiny_llama_own_attention(layer=1)
    install_paged_attention(model)
    with pytest.raises(ValueError, match=r"layers \[1\]"):
        check_paged_dispatch(model)


def test_a_sliding_window_layer_is_refused():
    model = tiny_llama()
    model.model.layers[1].use_sliding = True
    model.model.sliding_window = 8
    install_paged_attention(model)
    with pytest.raises(ValueError, match="RotatingKVCache"):
        check_paged_dispatch(model)


def test_kv_cache_path_is_unchanged_after_install(monkeypatch):
    monkeypatch.setattr(llama, "scaled_dot_product_attention", base.scaled_dot_product_attention)
    model = tiny_llama(seed=3)
    tokens = mx.array([[3, 1, 4, 1, 5, 9, 2, 6]])

    def dense_logits():
        cache = make_prompt_cache(model)
        model(tokens[:, :5], cache=cache)
        return model(tokens[:, 5:], cache=cache)

    reference = dense_logits()
    install_paged_attention(model)

    assert llama.scaled_dot_product_attention is scaled_dot_product_attention
    assert mx.array_equal(dense_logits(), reference).item()
