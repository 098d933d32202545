"""The scheduler over a KV pool that grows on demand: blocks only from its allocated part, growth
before eviction, and preemption, not failure, when memory stops the growth."""

from scheduler.block_manager import BlockManager
from scheduler.config import SchedulerConfig
from scheduler.scheduler import Scheduler
from tests.scheduler.fake_runner import FakeRunner, random_prompt as prompt, reference_tokens
from tests.scheduler.test_scheduler_policy import BLOCK, run_until_done, step, submit


def make(num_blocks: int, grow_limit: int) -> tuple[Scheduler, FakeRunner]:
    runner = FakeRunner(num_blocks, BLOCK, grow_limit=grow_limit)
    config = SchedulerConfig(num_blocks=num_blocks, block_size=BLOCK, max_model_len=1024)
    return Scheduler(config, BlockManager(num_blocks, BLOCK, grow=runner.pool_growth)), runner


def test_the_pool_grows_with_the_work_and_outputs_match():
    scheduler, runner = make(num_blocks=256, grow_limit=256)
    assert scheduler.block_manager.num_allocated_blocks == 0
    requests = [submit(scheduler, prompt(40, seed), max_tokens=24) for seed in range(4)]
    run_until_done(scheduler, runner)  # the fake runner fails on a block past the allocated end
    for request in requests:
        assert request.output_token_ids == reference_tokens(request.token_ids[:40], 24)
    manager = scheduler.block_manager
    # 4 sequences of 64 tokens: 16 blocks, not the 256 of the budget.
    assert 16 <= manager.num_allocated_blocks == runner.num_allocated < 32
    assert manager.num_free_blocks == manager.num_blocks


def test_the_pool_grows_before_a_cached_prefix_is_evicted():
    scheduler, runner = make(num_blocks=64, grow_limit=64)
    first = prompt(64, seed=1)
    submit(scheduler, first, max_tokens=1)
    run_until_done(scheduler, runner)
    submit(scheduler, prompt(50, seed=2), max_tokens=1)  # fits the allocated part only by evicting
    run_until_done(scheduler, runner)
    again = submit(scheduler, first + [5], max_tokens=1)
    step(scheduler, runner)
    assert again.num_cached_tokens == 64


def test_memory_that_stops_the_growth_preempts_and_every_request_completes():
    scheduler, runner = make(num_blocks=256, grow_limit=12)  # memory for 12 of 256 blocks
    requests = [submit(scheduler, prompt(40, seed), max_tokens=40) for seed in range(6)]
    run_until_done(scheduler, runner)
    assert scheduler.counters.num_preempted > 0
    for request in requests:
        assert request.output_token_ids == reference_tokens(request.token_ids[:40], 40)
    assert scheduler.block_manager.num_allocated_blocks == 12
    assert scheduler.block_manager.num_free_blocks == 256


def test_a_cleared_cache_keeps_the_allocated_pool():
    manager = BlockManager(32, BLOCK, grow=lambda blocks: max(blocks, 8))
    assert manager.ensure_capacity(0, 5 * BLOCK, ())
    assert manager.num_allocated_blocks == 8
    manager.free(0)
    manager.clear()
    assert manager.num_allocated_blocks == 8
    assert manager.ensure_capacity(1, 8 * BLOCK, ())  # all from the allocated part: no growth
    assert manager.block_table(1) == list(range(8))
