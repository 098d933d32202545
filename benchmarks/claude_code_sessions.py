"""The Claude Code sessions workload: S conversations at once, T turns each, every turn resending the whole
history as the CLI does (bodies from benchmarks/claude_code_traffic.py).

A conversation is scripted in full before it is sent, so that every server gets the same prompts: turn 1 is
the first user turn with the environment as a mid-conversation system message (blocks; a string in later
turns); the assistant's replies in the history are the script's, whatever the server answered: a Read call
answered by a file's contents, a ToolSearch call that loads the deferred CronList through a tool_reference
(in `tools` from then on), a Grep call, a text answer and a new user request, then again. Each
conversation works in its own directory, so the system block differs from the memory path on; the
billing line changes on every request.

pagedmlx gets the bodies on POST /v1/messages?beta=true (Anthropic SSE). Servers without that endpoint
(mlx-lm's drops the tools too) get each turn pre-rendered by pagedmlx's own renderer to the same token
sequence, as text on /v1/completions; both report the prompt tokens they processed. The TTFT of every turn
is kept by turn index.
"""

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from benchmarks import claude_code_traffic as cc
from benchmarks.load_generator import RequestRecord, client_session, latency_stats, measured_run, progress_bar
from benchmarks.sse_clients import INCLUDE_USAGE, fold_completion_chunk, fold_messages_event, stream_request

FIRST_PROMPTS = (
    "Why does the retry loop in src/client.py never stop? Look before you answer.",
    "Add a --verbose flag to the CLI in tools/run.py and document it.",
    "The test test_parse_dates fails since yesterday. Find out why.",
    "Explain what merge_intervals in utils/ranges.py does, then write tests for it.",
    "Our CI takes 20 minutes. Find the slowest tests in this project.",
    "Rename the config loader's load() to read_config() everywhere.",
    "Why does the server log every request twice?",
    "Make the cache in store/lru.py thread-safe.",
)
FILE_LINE = "    {n:4d}\tresult = fetch(session, url, retries=retries - {n})  # attempt {n}\n"
CLI_TOOL_RESULT_CHARS = 6_000  # one Read or Grep result at scale 1.0
NEXT_REQUEST = "Good. Keep going: fix it, then run the tests."


@dataclass(frozen=True)
class SessionsWorkload:
    sessions: int = 4
    turns: int = 4
    prompt_scale: float = 0.25
    max_tokens: int = 32


@dataclass(frozen=True)
class Turn:
    conversation: int
    index: int  # 1-based
    body: dict[str, Any]


def workdir(conversation: int) -> str:
    return f"/home/u/src/project-{conversation}"


def tool_output(conversation: int, turn: int, scale: float) -> str:
    """A Read or Grep result of about `scale` of the CLI's typical size, distinct per conversation and turn."""
    lines, text, n = [], 0, 1
    while text < scale * CLI_TOOL_RESULT_CHARS:
        lines.append(FILE_LINE.format(n=n + 1000 * conversation + 100 * turn))
        text += len(lines[-1])
        n += 1
    return "".join(lines)


def _tool_use(conversation: int, turn: int, text: str, name: str, tool_input: dict) -> tuple[dict, str]:
    call_id = f"toolu_01Bench{conversation:03d}Turn{turn:03d}"
    return {"role": "assistant", "content": [{"type": "text", "text": text},
                                             {"type": "tool_use", "id": call_id, "name": name,
                                              "input": tool_input}]}, call_id


def scripted_step(conversation: int, turn: int, scale: float) -> tuple[list[dict], tuple[str, ...]]:
    """What follows turn `turn` in the history: the assistant's scripted reply and the next user message;
    and the deferred tools this step loads."""
    step = (turn - 1) % 4
    if step == 0:
        reply, call_id = _tool_use(conversation, turn, "Let me read the file first.", "Read",
                                   {"file_path": f"{workdir(conversation)}/src/client.py"})
        return [reply, _tool_result(call_id, tool_output(conversation, turn, scale))], ()
    if step == 1:
        reply, call_id = _tool_use(conversation, turn, "I'll load the scheduler tool.", "ToolSearch",
                                   {"query": "select:CronList"})
        reference = [{"type": "tool_reference", "tool_name": "CronList"}]
        return [reply, _tool_result(call_id, reference)], ("CronList",)
    if step == 2:
        reply, call_id = _tool_use(conversation, turn, "Now the callers.", "Grep",
                                   {"pattern": "fetch\\(", "output_mode": "content", "-n": True})
        return [reply, _tool_result(call_id, tool_output(conversation, turn, scale))], ()
    answer = {"role": "assistant", "content": [{"type": "text", "text": (
        "The loop never decrements `retries` on success paths that raise later, so it spins. "
        "I will change the loop to count attempts and re-raise after the last one.")}]}
    return [answer, {"role": "user", "content": [{"type": "text", "text": NEXT_REQUEST}]}], ()


def _tool_result(call_id: str, content: Any) -> dict:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": content}]}


def conversation_turns(conversation: int, workload: SessionsWorkload) -> list[Turn]:
    """The bodies of one conversation's turns, in order."""
    scale, directory = workload.prompt_scale, workdir(conversation)
    history = [cc.first_user_turn(FIRST_PROMPTS[conversation % len(FIRST_PROMPTS)], scale)]
    sent = history + [cc.environment_message(directory, as_blocks=True)]
    history.append(cc.environment_message(directory, as_blocks=False))
    loaded: tuple[str, ...] = ()
    turns = []
    for index in range(1, workload.turns + 1):
        request_number = conversation * 1000 + index
        body = cc.request_body(sent, request_number, directory, loaded, scale)
        turns.append(Turn(conversation, index, {**body, "max_tokens": workload.max_tokens, "temperature": 0}))
        following, newly_loaded = scripted_step(conversation, index, scale)
        history += following
        loaded += newly_loaded
        sent = list(history)
    return turns


def workload_turns(workload: SessionsWorkload) -> list[list[Turn]]:
    return [conversation_turns(conversation, workload) for conversation in range(workload.sessions)]


def rendered_prompt(tokenizer: Any, body: dict) -> list[int]:
    """The token ids pagedmlx's /v1/messages renders `body` to."""
    from api.anthropic.convert import to_conversation
    from api.anthropic.schema import parse_messages_request
    from api.prompt_render import render_prompt

    return render_prompt(tokenizer, to_conversation(parse_messages_request(body)))


def completion_payload(tokenizer: Any, turn: Turn, model: str) -> tuple[dict, bool]:
    """The turn as a /v1/completions payload whose text encodes to the same tokens, and whether it does."""
    ids = rendered_prompt(tokenizer, turn.body)
    text = tokenizer.decode(ids)
    same = tokenizer.encode(text, add_special_tokens=False) == ids
    return {"model": model, "prompt": text, "max_tokens": turn.body["max_tokens"], "temperature": 0}, same


async def run_sessions(base_url: str, conversations: Sequence[Sequence[Turn]],
                       payloads: dict[tuple[int, int], dict] | None, label: str) -> dict:
    """Every conversation at once, each turn after the previous one's answer. `payloads` maps (conversation,
    turn) to a /v1/completions payload; None sends the bodies to /v1/messages."""
    records: dict[tuple[int, int], RequestRecord] = {}

    async def send(session: aiohttp.ClientSession, turn: Turn) -> RequestRecord:
        if payloads is None:
            return await stream_request(session, f"{base_url}{cc.MESSAGES_PATH}", turn.body,
                                        fold_messages_event, cc.headers(f"bench-session-{turn.conversation}"))
        return await stream_request(session, f"{base_url}/v1/completions",
                                    {**payloads[turn.conversation, turn.index], **INCLUDE_USAGE},
                                    fold_completion_chunk)

    async def conversation(session: aiohttp.ClientSession, turns: Sequence[Turn], bar) -> None:
        for turn in turns:
            sent = time.perf_counter() - start
            record = await send(session, turn)
            record.sent_s = sent
            records[turn.conversation, turn.index] = record
            bar.update()
            if not record.ok:
                return

    async def everything() -> tuple[list[RequestRecord], float]:
        async with client_session(len(conversations)) as session:
            with progress_bar(sum(len(turns) for turns in conversations), label) as bar:
                await asyncio.gather(*(conversation(session, turns, bar) for turns in conversations))
        return list(records.values()), time.perf_counter() - start

    start = time.perf_counter()
    _, summary = await measured_run(base_url, everything())
    return {**summary, **per_turn(records)}


def per_turn(records: dict[tuple[int, int], RequestRecord]) -> dict:
    """TTFT stats and prompt / cached tokens by turn index, and the later turns' TTFT p50 over turn 1's."""
    turns = sorted({turn for _, turn in records})
    by_turn = {turn: [record for (_, t), record in sorted(records.items()) if t == turn and record.ok]
               for turn in turns}
    stats = {str(turn): {**latency_stats("ttft", [r.ttft_s for r in done]),
                         "prompt_tokens": [r.prompt_tokens for r in done],
                         "cached_tokens": [r.cached_tokens for r in done]}
             for turn, done in by_turn.items()}
    later = [r.ttft_s for turn, done in by_turn.items() if turn >= 2 for r in done]
    first = stats.get("1", {}).get("median_ttft_ms")
    later_p50 = latency_stats("ttft", later)["median_ttft_ms"] if later else None
    return {"ttft_by_turn": stats, "later_turns_median_ttft_ms": later_p50,
            "later_over_first_turn_ttft_p50": later_p50 / first if later_p50 and first else None}
