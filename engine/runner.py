"""The batched step: every decode row in one `[B, 1]` forward, each prefill chunk in its own `[1, L]`
forward, all over the paged KV pool, then one batched sampling call for the rows that want a token."""

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from engine.attention_dispatch import check_paged_dispatch, install_paged_attention
from engine.kv_block_copy import copy_blocks_in, copy_blocks_out
from engine.kv_pool import KVPool, default_kv_budget_bytes
from engine.model_loader import LoadedModel
from engine.paged_cache import build_layout, count_runs, make_caches
from engine.pool_growth import PoolGrowth
from engine.sampler import Sampler
from engine.step_types import SeqStep, TokenOutput

_FLOAT_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def activation_dtype(loaded: LoadedModel) -> mx.Dtype:
    """The dtype the model computes in, hence of its K/V: its float weights' dtype when quantized."""
    if loaded.dtype in _FLOAT_DTYPES:
        return _FLOAT_DTYPES[loaded.dtype]
    for _, weight in tree_flatten(loaded.model.parameters()):
        if mx.issubdtype(weight.dtype, mx.floating):
            return weight.dtype
    return mx.float32


def split_head(model: nn.Module) -> tuple[Callable, Callable]:
    """(body, head) with head(body(x, cache=c)) == model(x, cache=c).

    mlx-lm's standard Model is `self.model(...)` then `lm_head` or the tied `embed_tokens.as_linear`;
    splitting there lets the runner take the last position of each sampled row before the head, which
    matters for prefill chunks (L x vocab logits otherwise). Models that do more after the body
    (logit soft-capping or scaling) fail the one-off check and keep the whole model as the body.
    """
    body = getattr(model, "model", None)
    if body is None:
        return model, _identity
    if hasattr(model, "lm_head"):
        head = model.lm_head
    elif hasattr(body, "embed_tokens"):
        head = body.embed_tokens.as_linear
    else:
        return model, _identity
    probe = mx.array([[1, 2, 3]])
    if not mx.allclose(head(body(probe)), model(probe), rtol=1e-5, atol=1e-5).item():
        return model, _identity
    return body, head


def _identity(x: mx.array) -> mx.array:
    return x


class ModelRunner:
    def __init__(self, loaded: LoadedModel, num_blocks: int, block_size: int = 16, *,
                 on_demand: bool = False, guaranteed_blocks: int = 0):
        """num_blocks: the pool's budget. on_demand: start empty and grow (pool_growth.py), never
        past guaranteed_blocks without free memory to spare; else allocate it all now."""
        self.model = loaded.model
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.pool = KVPool(
            loaded.num_layers,
            loaded.num_kv_heads,
            loaded.head_dim,
            0 if on_demand else num_blocks,
            block_size,
            activation_dtype(loaded),
        )
        self.pool_growth = PoolGrowth(self.pool, num_blocks, guaranteed_blocks) if on_demand else None
        install_paged_attention(self.model)
        check_paged_dispatch(self.model)
        self._body, self._head = split_head(self.model)
        self.sampler = Sampler()
        self.last_step_runs: list[int] = []  # contiguous block runs of each sequence, last step

    @staticmethod
    def blocks_for_budget(loaded: LoadedModel, kv_cache_gb: float | None, block_size: int) -> int:
        budget = default_kv_budget_bytes() if kv_cache_gb is None else int(kv_cache_gb * 2**30)
        per_block = KVPool.bytes_per_block(
            loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, block_size, activation_dtype(loaded)
        )
        if budget < per_block:
            raise ValueError(f"a KV budget of {budget} bytes holds no {per_block}-byte block")
        return budget // per_block

    def step(self, seqs: list[SeqStep]) -> list[TokenOutput]:
        """Run one scheduler step; outputs for the seqs with sample=True, in their order."""
        if not seqs:
            return []
        decodes = [i for i, seq in enumerate(seqs) if len(seq.token_ids) == 1]
        chunks = [i for i, seq in enumerate(seqs) if len(seq.token_ids) > 1]
        last_rows = []  # last positions of the forward rows: decodes first, then chunks
        if decodes:
            last_rows.append(self._forward([seqs[i] for i in decodes])[:, -1, :])
        for i in chunks:
            last_rows.append(self._forward([seqs[i]])[:, -1, :])
        row_of = {seq_index: row for row, seq_index in enumerate(decodes + chunks)}
        self.last_step_runs = [count_runs(seq.block_table) for seq in seqs]

        sampled = [i for i, seq in enumerate(seqs) if seq.sample]
        if not sampled:
            mx.eval(self.pool.keys, self.pool.values)
            return []
        last_hidden = mx.concatenate(last_rows) if len(last_rows) > 1 else last_rows[0]
        rows = [row_of[i] for i in sampled]
        if rows != list(range(last_hidden.shape[0])):
            last_hidden = last_hidden[mx.array(rows)]
        logits = self._head(last_hidden).astype(mx.float32)
        # Unsampled chunks' pool writes are read by later steps only: evaluate them with the logits.
        mx.async_eval(logits, self.pool.keys, self.pool.values)
        return self.sampler(logits, [seqs[i] for i in sampled])

    def copy_blocks_out(self, block_ids: list[int]) -> np.ndarray:
        """Whole blocks' K/V for the disk tier (engine/kv_block_copy.py); between steps."""
        return copy_blocks_out(self.pool, block_ids)

    def restore_blocks(self, blocks: list[tuple[int, np.ndarray]]) -> None:
        """Copy (block id, K/V) pairs read from the disk tier into the pool, before a step."""
        copy_blocks_in(self.pool, [block_id for block_id, _ in blocks], [kv for _, kv in blocks])

    def release(self, seq_id: int) -> None:
        self.sampler.release(seq_id)

    def reset_pool(self) -> None:
        """Every block's KV is lost: the scheduler must recompute all of them."""
        self.pool.reset()

    def _forward(self, rows: list[SeqStep]) -> mx.array:
        """Hidden states `[len(rows), L, dim]` (logits for a model without a split head).

        The graph goes to the device at once, so building the next forward's layout and graph in Python
        overlaps this one's compute.
        """
        layout = build_layout(
            [seq.block_table for seq in rows],
            [seq.start_pos for seq in rows],
            len(rows[0].token_ids),
            self.block_size,
        )
        inputs = mx.array([seq.token_ids for seq in rows])
        hidden = self._body(inputs, cache=make_caches(self.pool, layout))
        mx.async_eval(hidden)
        return hidden
