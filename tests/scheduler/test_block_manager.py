import hashlib
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scheduler.block_hash import ROOT_HASH, BlockHash, BlockHashChain, extra_keys, hash_block
from scheduler.block_manager import BlockManager

BS = 4  # block size used throughout


def hashes(tokens: list[int], salt: str | None = None) -> list[BlockHash]:
    """The chain a request over these tokens would keep."""
    chain = BlockHashChain(BS, extra_keys("m", salt))
    chain.extend(tokens)
    return chain.hashes


def query(tokens: list[int], salt: str | None = None) -> tuple[list[BlockHash], int]:
    """match_prefix's arguments for a prompt of these tokens."""
    return hashes(tokens, salt), len(tokens)


def compute(bm: BlockManager, seq_id: int, tokens: list[int], salt: str | None = None) -> None:
    """Admit a sequence with its prefix hits and compute (publish) all of its tokens."""
    bm.acquire(seq_id, bm.match_prefix(*query(tokens, salt)))
    assert bm.ensure_capacity(seq_id, len(tokens), hashes(tokens, salt))
    bm.publish(seq_id, hashes(tokens, salt), len(tokens))


def hits(bm: BlockManager, tokens: list[int], salt: str | None = None) -> int:
    return len(bm.match_prefix(*query(tokens, salt)).block_ids)


# -- block hashes -------------------------------------------------------------------------

KNOWN_DIGEST = "a62bb4ad5b22e41222bda419c993ea29b8ac26b606c377a5f394f1afff2c6246"


def test_block_hash_has_the_documented_layout_and_a_known_digest():
    digest = hash_block(ROOT_HASH, [1, 2, 3, 4], extra_keys("SmolLM2-135M-Instruct", None))
    model = b"SmolLM2-135M-Instruct"
    salt = b""
    layout = bytes(32) + struct.pack("<I", len(model)) + model + struct.pack("<I", len(salt)) + salt
    layout += struct.pack("<4i", 1, 2, 3, 4)
    assert digest == hashlib.sha256(layout).digest()
    assert digest.hex() == KNOWN_DIGEST


def test_block_hash_is_stable_across_processes():
    code = (
        "from scheduler.block_hash import ROOT_HASH, extra_keys, hash_block\n"
        "print(hash_block(ROOT_HASH, [1, 2, 3, 4], extra_keys('SmolLM2-135M-Instruct', None)).hex())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == KNOWN_DIGEST


def test_block_hash_covers_parent_tokens_model_and_salt():
    extra = extra_keys("m", None)
    base = hash_block(ROOT_HASH, [1, 2], extra)
    assert hash_block(base, [1, 2], extra) != base
    assert hash_block(ROOT_HASH, [2, 1], extra) != base
    assert hash_block(ROOT_HASH, [1, 2], extra_keys("other", None)) != base
    assert hash_block(ROOT_HASH, [1, 2], extra_keys("m", "tenant")) != base
    assert hash_block(ROOT_HASH, [1, 2], extra_keys("m", "")) == base


# -- prefix cache -------------------------------------------------------------------------


def test_hit_leaves_the_last_prompt_token_to_compute():
    bm = BlockManager(16, BS)
    compute(bm, 1, list(range(8)))
    assert hits(bm, list(range(8))) == 1  # 2 full blocks, but the last token needs logits
    match = bm.match_prefix(*query(list(range(9))))
    assert len(match.block_ids) == 2 and match.num_tokens == 8 and not match.pending


def test_next_turn_hits_the_previous_answer():
    bm = BlockManager(16, BS)
    prompt, answer = [7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24]
    history = prompt + answer  # the last answer token was sampled but never computed
    bm.acquire(1, bm.match_prefix(*query(prompt)))
    assert bm.ensure_capacity(1, len(history), hashes(history))
    bm.publish(1, hashes(history), len(history) - 1)
    bm.free(1)
    assert hits(bm, history + [30, 31, 32]) == 2  # both full blocks, the second one half answer


def test_cache_salt_isolates_tenants():
    bm = BlockManager(16, BS)
    tokens = list(range(9))
    compute(bm, 1, tokens, salt="alice")
    assert hits(bm, tokens, "alice") == 2
    assert hits(bm, tokens, "bob") == 0
    assert hits(bm, tokens) == 0



def test_lru_evicts_the_least_recently_freed_leaf_first():
    bm = BlockManager(4, BS)
    a, b = list(range(8)), list(range(100, 108))
    compute(bm, 1, a)
    compute(bm, 2, b)
    bm.free(1)
    bm.free(2)
    assert bm.num_free_blocks == 4 and bm.num_cached_blocks == 4
    assert bm.ensure_capacity(3, 1, hashes([50]))  # evicts a's second block (a leaf), not its root
    assert (hits(bm, a + [0]), hits(bm, b + [0])) == (1, 2)
    assert bm.num_cached_blocks == 3
    assert bm.ensure_capacity(3, 5, hashes([50] * 5))
    assert (hits(bm, a + [0]), hits(bm, b + [0])) == (0, 2)


def test_hit_takes_its_block_out_of_the_middle_of_the_free_queue():
    bm = BlockManager(3, BS)
    prompts = {1: [1] * 4, 2: [2] * 4, 3: [3] * 4}
    for seq_id, tokens in prompts.items():
        compute(bm, seq_id, tokens)
    for seq_id in prompts:
        bm.free(seq_id)
    queue = list(bm._lru)
    bm.acquire(4, bm.match_prefix(*query(prompts[2] + [0])))
    assert list(bm._lru) == [queue[0], queue[2]] and bm.num_free_blocks == 2
    assert bm.ensure_capacity(5, 8, hashes([9] * 8))  # evicts the other two, not the hit
    assert hits(bm, prompts[2] + [0]) == 1 and bm.num_free_blocks == 0


# -- pending blocks -----------------------------------------------------------------------


def test_a_prompt_being_computed_is_pending_until_published():
    bm = BlockManager(16, BS)
    prompt = list(range(13))  # 3 full blocks can hit
    bm.acquire(1, bm.match_prefix(*query(prompt)))
    assert bm.ensure_capacity(1, 4, hashes(prompt))  # only the first chunk has blocks yet
    match = bm.match_prefix(*query(prompt))
    assert not match.block_ids and match.pending
    bm.publish(1, hashes(prompt), 4)
    match = bm.match_prefix(*query(prompt))
    assert len(match.block_ids) == 1 and match.pending
    assert bm.ensure_capacity(1, 13, hashes(prompt))
    bm.publish(1, hashes(prompt), 13)
    match = bm.match_prefix(*query(prompt))
    assert len(match.block_ids) == 3 and not match.pending


def test_expected_hits_count_cached_and_pending_blocks():
    bm = BlockManager(16, BS)
    prompt = list(range(13))
    bm.acquire(1, bm.match_prefix(*query(prompt)))
    assert bm.ensure_capacity(1, 13, hashes(prompt))  # all three full blocks pending
    assert bm.num_expected_hit_tokens(*query(prompt)) == 12
    bm.publish(1, hashes(prompt), 8)  # two cached, the third still pending
    assert bm.num_expected_hit_tokens(*query(prompt + [99])) == 12
    assert bm.num_expected_hit_tokens(*query(prompt[:6] + [50] * 8)) == 4
    assert bm.num_expected_hit_tokens(*query([7] * 13)) == 0
    assert bm.match_prefix(*query(prompt + [99])).num_tokens == 8  # what hits today: cached blocks only


def test_freeing_the_computing_sequence_ends_its_pending_blocks():
    bm = BlockManager(16, BS)
    prompt = list(range(13))
    bm.acquire(1, bm.match_prefix(*query(prompt)))
    assert bm.ensure_capacity(1, 13, hashes(prompt))
    assert bm.match_prefix(*query(prompt)).pending
    bm.free(1)
    match = bm.match_prefix(*query(prompt))
    assert not match.pending and not match.block_ids
    assert bm.num_free_blocks == 16


def test_second_copy_of_a_block_stays_out_of_the_cache():
    bm = BlockManager(16, BS)
    prompt = list(range(9))
    for seq_id in (1, 2):  # both compute the prompt: the second did not wait
        bm.acquire(seq_id, bm.match_prefix(*query([])))
        assert bm.ensure_capacity(seq_id, 9, hashes(prompt))
    for seq_id in (1, 2):
        bm.publish(seq_id, hashes(prompt), 9)
    assert bm.match_prefix(*query(prompt)).block_ids == bm.block_table(1)[:2]
    bm.free(1)
    bm.free(2)
    assert bm.num_cached_blocks == 2 and bm.num_free_blocks == 16


# -- allocation ---------------------------------------------------------------------------


def test_ensure_capacity_is_all_or_nothing():
    bm = BlockManager(4, BS)
    assert bm.ensure_capacity(1, 12, hashes([0] * 12))
    assert not bm.ensure_capacity(2, 8, hashes([1] * 8))
    assert bm.block_table(2) == [] and bm.num_free_blocks == 1
    assert not bm.ensure_capacity(1, 20, hashes([0] * 20))
    assert len(bm.block_table(1)) == 3 and bm.num_free_blocks == 1
    bm.acquire(2, bm.match_prefix(*query([])))  # the failed call left no state behind


def test_admission_counts_free_hits_and_new_blocks():
    bm = BlockManager(8, BS)
    prompt = list(range(9))
    compute(bm, 1, prompt)
    bm.free(1)
    match = bm.match_prefix(*query(prompt + [1, 2, 3, 4]))
    assert bm.num_blocks_to_admit(match, 13) == 2 + 2
    bm.acquire(2, match)
    assert bm.num_blocks_needed(2, 13) == 2
    assert bm.num_free_blocks == 8 - 2  # the hits left the free pool


def test_acquire_rejects_a_match_whose_blocks_were_evicted():
    bm = BlockManager(2, BS)
    compute(bm, 1, list(range(8)))
    bm.free(1)
    match = bm.match_prefix(*query(list(range(9))))
    assert bm.ensure_capacity(2, 8, hashes([5] * 8))
    with pytest.raises(ValueError):
        bm.acquire(3, match)


# -- contiguous runs ----------------------------------------------------------------------


def test_fresh_pool_gives_a_new_sequence_one_run():
    bm = BlockManager(64, BS)
    assert bm.ensure_capacity(1, 40, hashes([0] * 40))
    assert bm.num_runs(1) == 1 and len(bm.block_table(1)) == 10


def test_hit_prefix_and_new_blocks_form_one_run():
    bm = BlockManager(64, BS)
    prompt = list(range(8))
    compute(bm, 1, prompt)
    bm.free(1)
    assert bm.ensure_capacity(2, 4, hashes([9] * 4))  # someone else allocates meanwhile
    longer = prompt + list(range(20, 40))
    bm.acquire(3, bm.match_prefix(*query(longer)))
    assert bm.ensure_capacity(3, len(longer), hashes(longer))
    assert bm.num_runs(3) == 1 and len(bm.block_table(3)) == 7


def test_concurrent_decoders_grow_in_place():
    bm = BlockManager(256, BS)
    tokens = {seq_id: [seq_id] * 8 for seq_id in range(4)}
    for seq_id, history in tokens.items():
        assert bm.ensure_capacity(seq_id, len(history), hashes(history))
    for _ in range(60):  # decode steps: every sequence gains one token
        for seq_id, history in tokens.items():
            history.append(seq_id)
            assert bm.ensure_capacity(seq_id, len(history), hashes(history))
    assert all(bm.num_runs(seq_id) <= 2 for seq_id in tokens)
    assert all(len(bm.block_table(seq_id)) == 17 for seq_id in tokens)


def test_fragmented_pool_allocates_with_the_fewest_runs():
    bm = BlockManager(32, BS)
    for seq_id in range(32):
        assert bm.ensure_capacity(seq_id, BS, hashes([seq_id] * BS))
    owner = {bm.block_table(seq_id)[0]: seq_id for seq_id in range(32)}
    holes = [2, 3, 4, 5, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27]  # one hole of 4, five of 2
    for block_id in holes:
        bm.free(owner[block_id])
    assert bm.ensure_capacity(100, 32, hashes([0] * 32))
    assert bm.block_table(100)[:4] == [2, 3, 4, 5] and bm.num_runs(100) == 3
    assert bm.ensure_capacity(101, 24, hashes([1] * 24))
    assert bm.num_runs(101) == 3 and bm.num_free_blocks == 0
    assert sorted(bm.block_table(100) + bm.block_table(101)) == holes


def test_evicted_blocks_come_back_in_id_order():
    bm = BlockManager(8, BS)
    prompt = list(range(32))
    compute(bm, 1, prompt)
    bm.free(1)  # all 8 blocks now cached, queued deepest first
    assert bm.ensure_capacity(2, 32, hashes([5] * 32))
    assert bm.num_runs(2) == 1


# -- random workloads ---------------------------------------------------------------------

_rng = random.Random(0)
_BASES = [[_rng.randrange(3) for _ in range(30)] for _ in range(2)]
_BASES.append(_BASES[0][:10] + [_rng.randrange(3) for _ in range(20)])  # shares 2 blocks with base 0


class BlockManagerMachine(RuleBasedStateMachine):
    """Random admissions, prefill chunks, decode steps, frees and aborts against a model of
    what each block's KV holds: every hit must hold exactly the KV of the query's prefix."""

    num_blocks = 24

    def __init__(self) -> None:
        super().__init__()
        self.bm = BlockManager(self.num_blocks, BS)
        self.seqs: dict[int, dict] = {}  # seq id -> tokens, salt, computed, allocated
        self.kv: dict[int, tuple] = {}  # block id -> (salt, token prefix its KV was computed for)
        self.next_id = 0

    def check_match(self, match, tokens: list[int], salt: str | None) -> None:
        assert len(match.block_ids) <= (len(tokens) - 1) // BS
        assert match.num_tokens == len(match.block_ids) * BS
        for i, block_id in enumerate(match.block_ids):
            assert self.kv.get(block_id) == ((salt or ""), tuple(tokens[: (i + 1) * BS]))

    @rule(
        base=st.sampled_from(_BASES),
        length=st.integers(1, 30),
        tail=st.lists(st.integers(0, 2), max_size=6),
        salt=st.sampled_from([None, "t"]),
        chunk=st.integers(1, 12),
    )
    def admit(self, base, length, tail, salt, chunk):
        tokens = base[:length] + tail
        match = self.bm.match_prefix(*query(tokens, salt))
        self.check_match(match, tokens, salt)
        seq_id, self.next_id = self.next_id, self.next_id + 1
        self.bm.acquire(seq_id, match)
        target = min(len(tokens), match.num_tokens + chunk)
        if not self.bm.ensure_capacity(seq_id, target, hashes(tokens, salt)):
            self.bm.free(seq_id)
            return
        self.seqs[seq_id] = dict(
            tokens=tokens, salt=salt, computed=match.num_tokens, allocated=target, chunk=chunk
        )

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), new_token=st.integers(0, 2))
    def step(self, data, new_token):
        seq_id = data.draw(st.sampled_from(sorted(self.seqs)))
        seq, table = self.seqs[seq_id], self.bm.block_table(seq_id)
        written = (seq["salt"] or ""), seq["tokens"][: seq["allocated"]]
        for i in range(seq["computed"] // BS, -(-seq["allocated"] // BS)):
            assert self.bm._blocks[table[i]].ref_count == 1  # never write KV into a shared block
            self.kv[table[i]] = (written[0], tuple(written[1][: (i + 1) * BS]))
        seq["computed"] = seq["allocated"]
        self.bm.publish(seq_id, hashes(seq["tokens"], seq["salt"]), seq["computed"])
        if seq["computed"] == len(seq["tokens"]):
            seq["tokens"].append(new_token)  # sampled; its KV is computed next step
        target = min(len(seq["tokens"]), seq["computed"] + seq["chunk"])
        if self.bm.ensure_capacity(seq_id, target, hashes(seq["tokens"], seq["salt"])):
            seq["allocated"] = target
        else:  # preempted
            self.free(seq_id)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def finish_or_abort(self, data):
        self.free(data.draw(st.sampled_from(sorted(self.seqs))))

    def free(self, seq_id: int) -> None:
        del self.seqs[seq_id]
        self.bm.free(seq_id)
        self.bm.free(seq_id)  # a second free (abort after finish) must change nothing

    @invariant()
    def blocks_are_accounted_for(self):
        bm = self.bm
        refs = [0] * self.num_blocks
        for seq_id in self.seqs:
            for block_id in bm.block_table(seq_id):
                refs[block_id] += 1
        assert [block.ref_count for block in bm._blocks] == refs
        in_lru = set(bm._lru)
        hashless = {i for i in range(self.num_blocks) if bm._hashless_free[i]}
        assert not in_lru & hashless
        assert in_lru | hashless == {i for i in range(self.num_blocks) if refs[i] == 0}
        assert bm.num_free_blocks == len(in_lru) + len(hashless) == self.num_blocks - sum(map(bool, refs))
        assert all(bm._blocks[i].block_hash is not None for i in in_lru)
        assert all(bm._blocks[i].block_hash is None for i in hashless)
        assert {h: b.block_id for b in bm._blocks if b.block_hash for h in [b.block_hash]} == bm._cached
        assert set(bm._pending.values()) <= set(self.seqs)

    def teardown(self):
        for seq_id in list(self.seqs):
            self.free(seq_id)
        assert self.bm.num_free_blocks == self.num_blocks and self.bm.usage == 0.0
        assert not self.bm._pending


TestBlockManagerMachine = BlockManagerMachine.TestCase
TestBlockManagerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
