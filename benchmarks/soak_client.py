"""One soak request sent, left as its plan says, and judged.

A response, whole or streamed, of any protocol becomes an Answer in common terms (text, parsed tool-call
arguments, finish reason, usage, whether the stream reached its end); the check on it is then the same
for all. Streams are folded by the load generator's per-protocol fold functions, plus the tool-call
fragments those leave out.
"""

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import orjson

from benchmarks.load_generator import RequestRecord
from benchmarks.soak_workload import Fate, Protocol, RequestSpec
from benchmarks.sse_clients import JSON_HEADERS, fold_chat_chunk, fold_completion_chunk, fold_messages_event

OK, ABORTED, EXPECTED_4XX, FAILED = "ok", "aborted", "expected_4xx", "failed"
REQUEST_TIMEOUT_S = 300.0  # a request still running this long is counted as hung (~30x its time unloaded)
TOOL_FINISH = {"tool_calls", "tool_use"}
TEXT_FINISH = {"stop", "length", "end_turn", "max_tokens"}
_FOLDS = {Protocol.CHAT: fold_chat_chunk, Protocol.COMPLETION: fold_completion_chunk,
          Protocol.MESSAGES: fold_messages_event}


class Invalid(Exception):
    """The response is not what the request should have had."""


@dataclass
class Outcome:
    number: int
    kind: str
    status: str  # OK, ABORTED, EXPECTED_4XX or FAILED
    latency_s: float
    output_tokens: int = 0
    error: str = ""


@dataclass
class Answer:
    text: str
    tool_inputs: list
    finish_reason: str | None
    prompt_tokens: int
    output_tokens: int
    complete: bool = True  # a stream that reached [DONE] / message_stop


def answer_from_body(protocol: Protocol, body: dict) -> Answer:
    """A whole (non-streamed) response."""
    usage = body["usage"]
    if protocol is Protocol.MESSAGES:
        blocks = body["content"]
        return Answer("".join(block["text"] for block in blocks if block["type"] == "text"),
                      [block["input"] for block in blocks if block["type"] == "tool_use"], body["stop_reason"],
                      usage["input_tokens"] + (usage.get("cache_read_input_tokens") or 0)
                      + (usage.get("cache_creation_input_tokens") or 0), usage["output_tokens"])
    if usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
        raise Invalid(f"usage does not add up: {usage}")
    choice = body["choices"][0]
    if protocol is Protocol.COMPLETION:
        text, calls = choice["text"], []
    else:
        text = choice["message"]["content"] or ""
        calls = [orjson.loads(call["function"]["arguments"]) for call in choice["message"].get("tool_calls") or ()]
    return Answer(text, calls, choice["finish_reason"], usage["prompt_tokens"], usage["completion_tokens"])


class StreamFold:
    """A stream's data lines folded, as they come, into what an Answer needs."""

    def __init__(self, protocol: Protocol):
        self.protocol = protocol
        self.record = RequestRecord(ok=False)
        self.tool_json: dict[int, str] = {}  # a call's argument text by its index
        self.done = False

    def add(self, data: bytes) -> bool:
        """Fold one data payload; returns whether it carried content."""
        if self.done:
            raise Invalid(f"data after the end of the stream: {data[:120]!r}")
        if data == b"[DONE]" and self.protocol is not Protocol.MESSAGES:
            self.done = True
            return False
        event = orjson.loads(data)
        chunks = len(self.record.chunk_times_s)
        _FOLDS[self.protocol](self.record, event, 0.0)
        if self.record.error:
            raise Invalid(self.record.error)
        self._fold_tool_fragments(event)
        self.done = event.get("type") == "message_stop"
        return len(self.record.chunk_times_s) > chunks

    def _fold_tool_fragments(self, event: dict) -> None:
        for choice in event.get("choices") or ():
            for call in (choice.get("delta") or {}).get("tool_calls") or ():
                fragment = (call.get("function") or {}).get("arguments") or ""
                self.tool_json[call["index"]] = self.tool_json.get(call["index"], "") + fragment
        if event.get("type") == "content_block_start" and event["content_block"]["type"] == "tool_use":
            self.tool_json[event["index"]] = ""
        elif event.get("type") == "content_block_delta" and event["delta"]["type"] == "input_json_delta":
            self.tool_json[event["index"]] += event["delta"]["partial_json"]

    def answer(self) -> Answer:
        record = self.record
        return Answer(record.text, [orjson.loads(text) for text in self.tool_json.values()],
                      record.finish_reason, record.prompt_tokens, record.output_tokens, self.done)


def check_answer(answer: Answer, spec: RequestSpec) -> None:
    if not answer.complete:
        raise Invalid("the stream stopped before its end ([DONE] / message_stop)")
    if spec.kind.tools:
        if not answer.tool_inputs or answer.finish_reason not in TOOL_FINISH:
            raise Invalid(f"no tool call: finish {answer.finish_reason}, text {answer.text[:120]!r}")
        if not all(isinstance(arguments, dict) for arguments in answer.tool_inputs):
            raise Invalid(f"tool arguments are not objects: {answer.tool_inputs}")
    elif not answer.text or answer.finish_reason not in TEXT_FINISH:
        raise Invalid(f"no text: finish {answer.finish_reason}, {answer.output_tokens} output tokens")
    if answer.prompt_tokens <= 0 or not 0 < answer.output_tokens <= spec.max_tokens:
        raise Invalid(f"usage out of range: {answer.prompt_tokens} prompt, {answer.output_tokens} output tokens "
                      f"(max_tokens {spec.max_tokens})")


def check_refusal(protocol: Protocol, status: int, body: bytes) -> None:
    """An over-long prompt's 400 in its protocol's shape."""
    error = orjson.loads(body) if status == 400 else {}
    if protocol is Protocol.MESSAGES:
        shaped = error.get("type") == "error" and error["error"]["type"] == "invalid_request_error" \
            and error["error"]["message"].startswith("prompt is too long")
    else:
        shaped = (error.get("error") or {}).get("code") == "context_length_exceeded"
    if not shaped:
        raise Invalid(f"over-long prompt answered HTTP {status}: {body[:300]!r}")


async def _exchange(session: aiohttp.ClientSession, base_url: str, spec: RequestSpec) -> tuple[str, int]:
    """(status, output tokens) of a request left only by its plan's chunk count, if any."""
    protocol = spec.kind.protocol
    async with session.post(base_url + protocol.value, data=orjson.dumps(spec.body), headers=JSON_HEADERS,
                            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as response:
        if spec.fate is Fate.OVERLONG:
            check_refusal(protocol, response.status, await response.read())
            return EXPECTED_4XX, 0
        if response.status != 200:
            raise Invalid(f"HTTP {response.status}: {(await response.read())[:300]!r}")
        if not spec.kind.stream:
            answer = answer_from_body(protocol, orjson.loads(await response.read()))
        else:
            fold, chunks = StreamFold(protocol), 0
            leave_after = spec.abort.after_chunks if spec.abort else None
            async for line in response.content:
                if line.startswith(b"data:"):
                    chunks += fold.add(line[5:].strip())
                    if leave_after is not None and chunks >= leave_after:
                        return ABORTED, 0  # leaving the block closes the connection mid-body
            answer = fold.answer()
        check_answer(answer, spec)
        return OK, answer.output_tokens


async def run_request(session: aiohttp.ClientSession, base_url: str, spec: RequestSpec) -> Outcome:
    start = time.perf_counter()
    exchange = asyncio.ensure_future(_exchange(session, base_url, spec))
    leave_after_s = spec.abort.after_s if spec.abort else None
    if leave_after_s is not None:
        await asyncio.wait({exchange}, timeout=leave_after_s)
        if not exchange.done():
            exchange.cancel()
            await asyncio.gather(exchange, return_exceptions=True)
            return Outcome(spec.number, spec.kind.name, ABORTED, time.perf_counter() - start)
    try:
        status, output_tokens = await exchange
    except (aiohttp.ClientError, asyncio.TimeoutError, Invalid, ValueError, KeyError, TypeError) as error:
        return Outcome(spec.number, spec.kind.name, FAILED, time.perf_counter() - start,
                       error=f"{type(error).__name__}: {error}")
    return Outcome(spec.number, spec.kind.name, status, time.perf_counter() - start, output_tokens)
