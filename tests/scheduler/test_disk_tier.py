"""The disk tier under the engine loop, with the fake runner: its "KV" is the token each slot holds, so a
block restored from disk into the wrong place, or a damaged one served, raises KVCorruption or changes
the output."""

import asyncio
from pathlib import Path

import numpy as np
import pytest

from engine.kv_block_file import block_path, read_block, write_block
from scheduler.config import SchedulerConfig
from scheduler.disk_tier import DiskTier
from scheduler.engine_loop import EngineLoop
from tests.scheduler.fake_runner import FakeRunner, random_prompt as prompt, reference_tokens
from tests.scheduler.test_engine_loop import BLOCK, collect, greedy, tokens_of

KEY = "fake-model"
PROMPT_BLOCKS = 12  # full blocks that can hit in a prompt of PROMPT_BLOCKS * BLOCK + 8 tokens


def make_engine(directory: Path, capacity_blocks: int = 1000, num_blocks: int = 128) -> EngineLoop:
    runner = FakeRunner(num_blocks, BLOCK)
    block_bytes = len(_file_of_one_block(directory))
    disk = DiskTier(directory, KEY, capacity_blocks * block_bytes, "int32")
    config = SchedulerConfig(num_blocks=num_blocks, block_size=BLOCK, max_model_len=num_blocks * BLOCK)
    return EngineLoop(runner, config, "fake", disk=disk)


def _file_of_one_block(directory: Path) -> bytes:
    """A sample block file's bytes (every fake block file has the same size)."""
    scratch = directory.parent / "sample"
    write_block(scratch, KEY, bytes(32), [0] * BLOCK, np.zeros(BLOCK, np.int32))
    return block_path(scratch, bytes(32)).read_bytes()


def run(engine: EngineLoop, prompts: list[list[int]], max_tokens: int = 4) -> list[list[int]]:
    """Each prompt in turn (one at a time), then a clean stop: the writes are drained."""
    async def main() -> list[list[int]]:
        engine.start()
        outputs = [tokens_of(await collect(engine.submit(p, greedy(max_tokens)))) for p in prompts]
        await engine.stop()
        return outputs

    return asyncio.run(main())


def long_prompt(seed: int, blocks: int = PROMPT_BLOCKS) -> list[int]:
    return prompt(blocks * BLOCK + 8, seed)


def test_a_restarted_engine_reads_the_prefix_from_disk(tmp_path: Path):
    p = long_prompt(1)
    first = make_engine(tmp_path / "kv")
    assert run(first, [p]) == [reference_tokens(p, 4)]
    assert first.stats.disk.num_blocks >= PROMPT_BLOCKS and first.stats.disk.hits == 0

    restarted = make_engine(tmp_path / "kv")
    assert run(restarted, [p]) == [reference_tokens(p, 4)]
    stats = restarted.stats
    assert stats.disk.hits == PROMPT_BLOCKS and stats.disk.bytes_read > 0
    assert stats.prefix_hits_tokens == PROMPT_BLOCKS * BLOCK
    # Only the last partial block and the decodes ran: the 12 blocks came from disk.
    assert restarted.runner.tokens_run[0] == 8 + 3


def damage_flip(path: Path, key: str) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_truncate(path: Path, key: str) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def damage_other_model(path: Path, key: str) -> None:
    stored = read_block(path.parent.parent, KEY, bytes.fromhex(path.stem))
    write_block(path.parent.parent, "another-model", bytes.fromhex(path.stem), stored.token_ids, stored.kv)


def damage_other_tokens(path: Path, key: str) -> None:
    """A file that checks out (right key, hash and digest) but holds other tokens: foreign all the same."""
    stored = read_block(path.parent.parent, KEY, bytes.fromhex(path.stem))
    tokens = [t + 1 for t in stored.token_ids]
    write_block(path.parent.parent, KEY, bytes.fromhex(path.stem), tokens, np.array(tokens, np.int32))


@pytest.mark.parametrize("damage", [damage_flip, damage_truncate, damage_other_model, damage_other_tokens])
def test_a_damaged_or_foreign_block_is_never_served(tmp_path: Path, damage):
    p = long_prompt(2)
    first = make_engine(tmp_path / "kv")
    run(first, [p])
    hashes = first.scheduler.new_request(p, greedy(1)).block_hashes.hashes
    bad = 5
    damage(block_path(tmp_path / "kv", hashes[bad]), KEY)

    restarted = make_engine(tmp_path / "kv")
    assert run(restarted, [p]) == [reference_tokens(p, 4)]  # KVCorruption had the bad block been used
    assert restarted.stats.disk.hits == bad  # the blocks before it; a hit must be contiguous
    stored = read_block(tmp_path / "kv", KEY, hashes[bad])
    assert stored is not None and stored.token_ids == tuple(p[bad * BLOCK:(bad + 1) * BLOCK]), \
        "the bad file was deleted, and the restarted engine wrote the block again"


def test_the_size_bound_holds_under_a_larger_workload(tmp_path: Path):
    capacity_blocks = 20
    prompts = [long_prompt(10 + i, blocks=6) for i in range(6)]  # 6 x 6 blocks and more, > 20
    engine = make_engine(tmp_path / "kv", capacity_blocks=capacity_blocks)
    run(engine, prompts)
    disk = engine.stats.disk
    files = list((tmp_path / "kv").glob("??/*.kv"))
    assert disk.num_blocks == len(files) <= capacity_blocks
    assert disk.size_bytes == sum(f.stat().st_size for f in files) <= disk.capacity_bytes
    newest = engine.scheduler.new_request(prompts[-1], greedy(1)).block_hashes.hashes[:6]
    assert all(block_path(tmp_path / "kv", h).exists() for h in newest), "the least recently used go"

    reopened = make_engine(tmp_path / "kv", capacity_blocks=10)  # a smaller bound at start-up
    assert reopened.stats.disk.num_blocks == len(list((tmp_path / "kv").glob("??/*.kv"))) <= 10
    asyncio.run(reopened.stop())


def test_two_engines_on_one_directory_both_work(tmp_path: Path):
    shared = tmp_path / "kv"
    p1, p2 = long_prompt(21), long_prompt(22)
    a, b = make_engine(shared), make_engine(shared)

    async def both() -> tuple[list[int], list[int]]:
        a.start()
        b.start()
        outputs = await asyncio.gather(collect(a.submit(p1, greedy(4))), collect(b.submit(p2, greedy(4))))
        await asyncio.gather(a.stop(), b.stop())
        return tuple(tokens_of(events) for events in outputs)

    assert asyncio.run(both()) == (reference_tokens(p1, 4), reference_tokens(p2, 4))
    third = make_engine(shared)
    assert run(third, [p1, p2]) == [reference_tokens(p1, 4), reference_tokens(p2, 4)]
    assert third.stats.disk.hits == 2 * PROMPT_BLOCKS


def test_a_block_another_server_deleted_is_a_miss(tmp_path: Path):
    p = long_prompt(3)
    run(make_engine(tmp_path / "kv"), [p])
    restarted = make_engine(tmp_path / "kv")  # its index lists every block
    hashes = restarted.scheduler.new_request(p, greedy(1)).block_hashes.hashes
    block_path(tmp_path / "kv", hashes[0]).unlink()  # the other server evicted it
    assert run(restarted, [p]) == [reference_tokens(p, 4)]
    assert restarted.stats.disk.hits == 0


def test_requests_sharing_a_prefix_on_disk_read_it_once(tmp_path: Path):
    base = long_prompt(4)
    run(make_engine(tmp_path / "kv"), [base])
    restarted = make_engine(tmp_path / "kv")
    prompts = [base[:-8] + prompt(8, 100 + i) for i in range(4)]

    async def together() -> list[list[int]]:
        restarted.start()
        events = await asyncio.gather(*(collect(restarted.submit(p, greedy(4))) for p in prompts))
        await restarted.stop()
        return [tokens_of(e) for e in events]

    assert asyncio.run(together()) == [reference_tokens(p, 4) for p in prompts]
    stats = restarted.stats
    assert stats.disk.hits == PROMPT_BLOCKS  # once, then the pool
    assert stats.prefix_hits_tokens == 4 * PROMPT_BLOCKS * BLOCK
    assert stats.num_free_blocks == 128
