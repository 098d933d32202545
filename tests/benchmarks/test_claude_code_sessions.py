"""The scripted Claude Code conversations: what each turn carries, and the per-turn TTFT summary."""

import pytest

from benchmarks import claude_code_traffic as cc
from benchmarks.claude_code_sessions import SessionsWorkload, conversation_turns, per_turn, workload_turns
from benchmarks.load_generator import RequestRecord

WORKLOAD = SessionsWorkload(sessions=3, turns=5, prompt_scale=0.2, max_tokens=16)


@pytest.fixture(scope="module")
def conversations():
    return workload_turns(WORKLOAD)


def _blocks(message: dict) -> list[dict]:
    return message["content"] if isinstance(message["content"], list) else [{"type": "text"}]


def _without_cache_control(messages: list[dict]) -> list[dict]:
    return [{**m, "content": [{k: v for k, v in b.items() if k != "cache_control"} for b in m["content"]]}
            if isinstance(m["content"], list) else m for m in messages]


def test_sizes_and_sampling(conversations):
    assert [len(turns) for turns in conversations] == [5, 5, 5]
    for turns in conversations:
        assert [turn.index for turn in turns] == [1, 2, 3, 4, 5]
        for turn in turns:
            assert turn.body["max_tokens"] == 16 and turn.body["temperature"] == 0 and turn.body["stream"]


def test_conversations_differ_in_billing_line_and_directory(conversations):
    firsts = [turns[0].body for turns in conversations]
    assert len({body["system"][0]["text"] for body in firsts}) == len(firsts)
    assert len({body["system"][2]["text"] for body in firsts}) == len(firsts)
    assert all(cc.memory_path(f"/home/u/src/project-{i}") in body["system"][2]["text"]
               for i, body in enumerate(firsts))


def test_every_turn_resends_the_history(conversations):
    for turns in conversations:
        for earlier, later in zip(turns[1:], turns[2:]):
            previous = _without_cache_control(earlier.body["messages"])
            assert _without_cache_control(later.body["messages"])[:len(previous)] == previous


def test_the_environment_message_is_blocks_first_then_a_string(conversations):
    first, second = conversations[0][0].body["messages"], conversations[0][1].body["messages"]
    assert first[1]["role"] == "system" and isinstance(first[1]["content"], list)
    assert second[1]["role"] == "system" and isinstance(second[1]["content"], str)


def test_tool_calls_results_and_a_deferred_tool_loaded_mid_conversation(conversations):
    turns = conversations[1]
    last = turns[-1].body["messages"]
    kinds = [block["type"] for message in last for block in _blocks(message)]
    assert "tool_use" in kinds and "tool_result" in kinds
    uses = [block["id"] for message in last for block in _blocks(message) if block["type"] == "tool_use"]
    results = [block["tool_use_id"] for message in last for block in _blocks(message)
               if block["type"] == "tool_result"]
    assert uses == results and len(set(uses)) == len(uses)
    names = [[tool["name"] for tool in turn.body["tools"]] for turn in turns]
    assert all(turn[:len(cc.CORE_TOOLS)] == [tool["name"] for tool in cc.CORE_TOOLS] for turn in names)
    assert "CronList" not in names[1] and "CronList" in names[2]
    references = [part for message in turns[2].body["messages"] for block in _blocks(message)
                  if block["type"] == "tool_result" and isinstance(block["content"], list)
                  for part in block["content"]]
    assert {"type": "tool_reference", "tool_name": "CronList"} in references


def test_the_same_workload_builds_the_same_bodies():
    assert conversation_turns(2, WORKLOAD) == conversation_turns(2, WORKLOAD)


def test_per_turn_ttft_and_the_later_over_first_ratio():
    def record(ttft_s: float) -> RequestRecord:
        return RequestRecord(ok=True, chunk_times_s=[ttft_s], e2e_s=ttft_s, prompt_tokens=100, cached_tokens=50,
                             output_tokens=1)

    records = {(0, 1): record(10.0), (1, 1): record(12.0), (0, 2): record(1.0), (1, 2): record(0.5),
               (0, 3): record(0.8), (1, 3): RequestRecord(ok=False, error="HTTP 500")}
    summary = per_turn(records)
    assert summary["ttft_by_turn"]["1"]["median_ttft_ms"] == pytest.approx(11_000)
    assert summary["ttft_by_turn"]["3"]["prompt_tokens"] == [100]
    assert summary["later_turns_median_ttft_ms"] == pytest.approx(800)
    assert summary["later_over_first_turn_ttft_p50"] == pytest.approx(800 / 11_000)
