"""EngineLoop with the fake runner: a real engine thread feeding real asyncio queues."""

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import pytest

from engine.sampling_params import SamplingParams
from scheduler import engine_loop
from scheduler.config import SchedulerConfig
from scheduler.engine_loop import EngineLoop, EngineUnavailable, RequestRejected, RequestStream, TokenEvent
from tests.scheduler.fake_runner import FakeRunner, random_prompt as prompt, reference_tokens

BLOCK = 16
POISON = 7777  # a prompt token the fake runner fails on (it never generates it)


def make_engine(num_blocks: int = 128, delay_s: float = 0.0, **config) -> EngineLoop:
    runner = FakeRunner(num_blocks, BLOCK, delay_s=delay_s,
                        fail_if=lambda seqs: any(POISON in seq.token_ids for seq in seqs))
    config.setdefault("max_model_len", num_blocks * BLOCK)
    return EngineLoop(runner, SchedulerConfig(num_blocks=num_blocks, block_size=BLOCK, **config), "fake")


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


async def collect(stream: RequestStream) -> list[TokenEvent]:
    return [event async for event in stream]


async def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def tokens_of(events: list[TokenEvent]) -> list[int]:
    return [event.token_id for event in events if event.token_id is not None]


def test_streams_carry_each_requests_tokens_and_final_timings():
    async def main() -> tuple[EngineLoop, list[list[int]], list[list[TokenEvent]]]:
        engine = make_engine()
        engine.start()
        prompts = [prompt(30 + i, i) for i in range(5)]
        results = await asyncio.gather(*(collect(engine.submit(p, greedy(6))) for p in prompts))
        await engine.stop()
        return engine, prompts, results

    engine, prompts, results = asyncio.run(main())
    for tokens, events in zip(prompts, results):
        assert tokens_of(events) == reference_tokens(tokens, 6)
        assert [e.finish_reason for e in events] == [None] * 6 + ["length"]  # acceptance + 5 tokens
        final = events[-1]
        assert (final.prompt_tokens, final.output_tokens) == (len(tokens), 6)
        t = final.timings
        assert t.arrival <= t.first_scheduled <= t.first_token <= t.finish
    stats = engine.stats
    assert stats.finished == {"length": 5} and stats.generation_tokens_total == 30
    assert (stats.num_running, stats.num_waiting, stats.num_free_blocks) == (0, 0, 128)
    assert sorted(engine.runner.released) == list(range(5))
    assert not engine._thread.is_alive()


@pytest.mark.parametrize("how", ["aclose", "drop", "cancel"])
def test_leaving_a_stream_early_aborts_the_request(how):
    async def main() -> EngineLoop:
        engine = make_engine(delay_s=0.002)
        engine.start()
        stream = engine.submit(prompt(40, 1), greedy(1000))
        if how == "cancel":
            got_token = asyncio.Event()

            async def consume() -> None:
                async for _ in stream:
                    got_token.set()

            task = asyncio.create_task(consume())
            await got_token.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            async for _ in stream:
                break
            if how == "aclose":
                await stream.aclose()
            else:
                del stream  # dropped without closing: collected at once, which aborts
        await wait_until(lambda: engine.stats.finished.get("abort") == 1, "the abort")
        await engine.stop()
        return engine

    engine = asyncio.run(main())
    assert engine.stats.num_free_blocks == 128 and engine.stats.num_running == 0
    assert engine.stats.generation_tokens_total < 1000


def test_an_error_in_a_step_fails_only_that_steps_requests():
    async def main() -> tuple[list[list[TokenEvent]], list[int], list[TokenEvent], list[int]]:
        engine = make_engine(max_num_seqs=2)
        # Submitted before the thread starts, so the first step holds the first two (max_num_seqs).
        prompts = [[POISON] + prompt(20, 1), prompt(20, 2), prompt(20, 3)]
        streams = [engine.submit(p, greedy(4)) for p in prompts]
        engine.start()
        results = await asyncio.gather(*(collect(s) for s in streams))
        later = prompt(25, 4)
        after = await collect(engine.submit(later, greedy(4)))
        await engine.stop()
        assert engine.stats.finished == {"error": 2, "length": 2}
        assert engine.stats.num_free_blocks == 128
        return results, prompts[2], after, later

    (poisoned, bystander, survivor), survivor_prompt, after, later = asyncio.run(main())
    for events in (poisoned, bystander):
        assert events[-1].finish_reason == "error" and "injected step failure" in events[-1].error
    assert tokens_of(survivor) == reference_tokens(survivor_prompt, 4)
    assert tokens_of(after) == reference_tokens(later, 4)


def test_stop_drains_within_grace_then_aborts_the_rest_and_joins():
    async def main() -> None:
        engine = make_engine(delay_s=0.002)
        engine.start()
        short = asyncio.create_task(collect(engine.submit(prompt(20, 1), greedy(3))))
        endless = engine.submit(prompt(20, 2), greedy(2000))
        acceptance = await endless.__anext__()
        assert acceptance.token_id is None and acceptance.finish_reason is None
        first = await endless.__anext__()
        assert first.token_id is not None
        await engine.stop(grace_s=1.0)
        assert not engine._thread.is_alive()
        assert (await short)[-1].finish_reason == "length"
        rest = await collect(endless)
        assert rest[-1].finish_reason == "abort" and rest[-1].timings.finish is not None
        with pytest.raises(EngineUnavailable, match="shutting down"):
            engine.submit(prompt(20, 3), greedy(3))

    asyncio.run(main())


def test_idle_loop_sleeps_instead_of_spinning():
    async def main() -> None:
        engine = make_engine()
        engine.start()
        cpu_before = time.process_time()
        await asyncio.sleep(0.3)
        assert engine.num_steps == 0
        assert time.process_time() - cpu_before < 0.1, "the idle engine thread is burning CPU"
        await collect(engine.submit(prompt(20, 1), greedy(3)))
        steps = engine.num_steps
        assert steps > 0
        cpu_before = time.process_time()
        await asyncio.sleep(0.2)
        assert engine.num_steps == steps
        assert time.process_time() - cpu_before < 0.1
        await engine.stop()

    asyncio.run(main())


def test_submit_rejects_impossible_prompts_and_reused_ids():
    async def main() -> None:
        engine = make_engine(num_blocks=8)  # 128 tokens
        engine.start()
        with pytest.raises(RequestRejected, match="context"):
            engine.submit(prompt(200, 1), greedy(3))
        stream = engine.submit(prompt(20, 1), greedy(3), request_id="same")
        with pytest.raises(RequestRejected, match="already in use"):
            engine.submit(prompt(20, 2), greedy(3), request_id="same")
        assert stream.max_tokens == 3
        assert engine.submit(prompt(120, 2), greedy(50)).max_tokens == 8  # clamped to the context
        await collect(stream)
        await engine.stop()

    asyncio.run(main())


def test_a_follow_up_request_reports_its_prefix_hit():
    async def main() -> tuple[EngineLoop, list[TokenEvent], list[TokenEvent]]:
        engine = make_engine()
        engine.start()
        system = prompt(64, 1)
        first = await collect(engine.submit(system + prompt(5, 2), greedy(3)))
        second = await collect(engine.submit(system + prompt(9, 3), greedy(3)))
        await engine.stop()
        return engine, first, second

    engine, first, second = asyncio.run(main())
    assert (first[-1].cached_tokens, second[-1].cached_tokens) == (0, 64)
    assert engine.stats.prefix_hits_tokens == 64
    assert engine.stats.prefix_queries_tokens == 69 + 73
    assert engine.stats.prompt_tokens_total == 69 + 73
    # The acceptance event says the hit before any token: the Anthropic message_start needs it.
    assert second[0].token_id is None and second[0].finish_reason is None
    assert second[0].cached_tokens == 64 and second[0].prompt_tokens == 73
    assert sum(event.token_id is None for event in second) == 1


def test_a_dead_engine_thread_fails_every_open_stream_and_refuses_new_requests():
    async def main() -> None:
        engine = make_engine(delay_s=0.002)
        engine.start()
        decoding = engine.submit(prompt(20, 1), greedy(2000))
        await decoding.__anext__()  # accepted
        await decoding.__anext__()  # a token: it is running

        def broken_add(request) -> None:
            raise RuntimeError("injected inbox failure")

        engine.scheduler.add_request = broken_add  # fails on the engine thread, outside any step
        arriving = engine.submit(prompt(20, 2), greedy(3))
        for stream in (decoding, arriving):
            events = await asyncio.wait_for(collect(stream), 10)
            assert events[-1].finish_reason == "error"
            assert "injected inbox failure" in events[-1].error
        await wait_until(lambda: not engine._thread.is_alive(), "the thread to end")
        assert "injected inbox failure" in engine.health()
        with pytest.raises(EngineUnavailable, match="injected inbox failure"):
            engine.submit(prompt(20, 3), greedy(3))
        await asyncio.wait_for(engine.stop(), 10)

    asyncio.run(main())


@pytest.mark.parametrize("ending", ["stop", "thread failure"])
def test_the_engine_thread_releases_its_mlx_state_as_its_last_act(monkeypatch, ending):
    released: list[tuple[str, bool]] = []

    async def main() -> None:
        engine = make_engine()
        monkeypatch.setattr(engine_loop, "release_thread_state", lambda: released.append(
            (threading.current_thread().name, engine.scheduler.has_work)))
        engine.start()
        if ending == "thread failure":
            engine.scheduler.add_request = lambda request: 1 / 0
            await collect(engine.submit(prompt(20, 1), greedy(3)))
        await engine.stop()

    asyncio.run(main())
    assert released == [("pagedmlx-engine", False)]


def test_health_reports_a_thread_that_is_not_running():
    async def main() -> None:
        engine = make_engine()
        assert engine.health() == "the engine thread is not running"
        engine.start()
        assert engine.health() is None
        await engine.stop()
        assert engine.health() == "the engine thread is not running"

    asyncio.run(main())


def test_repeated_step_failures_rebuild_the_pool_and_clear_the_prefix_cache(caplog):
    async def main() -> tuple[EngineLoop, list[TokenEvent], list[int]]:
        engine = make_engine(max_num_seqs=1)  # one request per step: two failures in a row
        engine.start()
        system = prompt(64, 1)
        await collect(engine.submit(system + prompt(5, 2), greedy(3)))  # fills the prefix cache
        poisoned = [engine.submit([POISON] + prompt(20, seed), greedy(3)) for seed in (3, 4)]
        follow_up = system + prompt(9, 5)
        after = engine.submit(follow_up, greedy(4))
        for stream in poisoned:
            assert (await collect(stream))[-1].finish_reason == "error"
        events = await collect(after)
        await engine.stop()
        return engine, events, follow_up

    with caplog.at_level("DEBUG", logger="scheduler"):
        engine, events, follow_up = asyncio.run(main())
    assert engine.runner.num_resets == 1 and engine.stats.num_pool_rebuilds == 1
    assert engine.stats.num_failed_steps == 2
    assert tokens_of(events) == reference_tokens(follow_up, 4)
    assert events[-1].cached_tokens == 0  # the cache went with the pool
    assert engine.stats.num_free_blocks == 128
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is not None  # logged once, with its traceback
    assert sum("rebuilding the KV pool" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("when", ["idle", "right after start", "mid-step"])
def test_stop_always_reaches_the_thread_and_joins_within_the_timeout(when):
    async def main() -> None:
        for attempt in range(20):
            engine = make_engine(delay_s=0.01 if when == "mid-step" else 0.0)
            engine.start()
            if when == "idle":
                await asyncio.sleep(0.001 * (attempt % 5))
            elif when == "mid-step":
                stream = engine.submit(prompt(20, attempt), greedy(1000))
                await stream.__anext__()
            await asyncio.wait_for(engine.stop(grace_s=0, join_timeout_s=5), 10)
            assert not engine._thread.is_alive()

    asyncio.run(main())


def test_the_abort_of_a_dropped_stream_only_posts_to_the_inbox():
    async def main() -> EngineLoop:
        engine = make_engine(delay_s=0.002)
        engine.start()
        stream = engine.submit(prompt(20, 1), greedy(1000))
        await stream.__anext__()
        # The finalizer may run on any thread, even the engine's own mid-step: it must not need
        # a lock the thread holds. Run it on a foreign thread while the loop steps.
        await asyncio.to_thread(stream._abort_on_drop)
        await wait_until(lambda: engine.stats.finished.get("abort") == 1, "the abort")
        await engine.stop()
        return engine

    engine = asyncio.run(main())
    assert engine.stats.num_free_blocks == 128


def test_every_finish_reaches_on_finish_even_after_the_stream_was_left():
    async def main() -> list[TokenEvent]:
        engine = make_engine(delay_s=0.002)
        engine.start()
        finished: list[TokenEvent] = []
        stream = engine.submit(prompt(20, 1), greedy(1000), on_finish=finished.append)
        await stream.__anext__()
        await stream.__anext__()
        engine.abort(stream.request_id, "stop")  # what a stop string does
        await stream.aclose()
        await wait_until(lambda: finished, "the final event")
        await collect(engine.submit(prompt(20, 2), greedy(2), on_finish=finished.append))
        await engine.stop()
        return finished

    finished = asyncio.run(main())
    assert [event.finish_reason for event in finished] == ["stop", "length"]
    assert all(event.timings.first_token is not None for event in finished)


def test_one_step_delivers_its_tokens_in_one_call_per_event_loop():
    async def main() -> tuple[int, int]:
        engine = make_engine()
        loop = asyncio.get_running_loop()
        calls = 0
        original = loop.call_soon_threadsafe

        def counting(*args):
            nonlocal calls
            calls += 1
            return original(*args)

        loop.call_soon_threadsafe = counting
        streams = [engine.submit(prompt(20, seed), greedy(5)) for seed in range(8)]
        engine.start()
        await asyncio.gather(*(collect(s) for s in streams))
        await engine.stop()
        return calls, engine.num_steps

    calls, steps = asyncio.run(main())
    assert calls <= steps + 2  # the acceptance events, one per step, the stop's abort_all


def test_submit_hands_the_session_to_the_scheduler():
    async def main() -> None:
        engine = make_engine(delay_s=0.002)
        engine.start()
        stream = engine.submit(prompt(20, 1), greedy(1000), session="claude-code:abc")
        await stream.__anext__()
        await wait_until(lambda: [r.session for r in engine.scheduler.running] == ["claude-code:abc"],
                         "the request to run under its session")
        await stream.aclose()
        await engine.stop()

    asyncio.run(main())
