"""Streamed requests over SSE, timed chunk by chunk: OpenAI chat completions, OpenAI text completions and
Anthropic messages.

Every protocol sends `data:` lines of JSON (Anthropic's `event:` lines repeat the data's type); a fold
function per protocol turns each into the record: a chunk that carries generated text (or tool-call or
thinking text) is timed, usage sets the token counts. Empty deltas (keep-alives) are not tokens. Output
tokens are the server's count; a server that sends none is counted one token per timed chunk.
"""

import asyncio
import time
from collections.abc import Callable

import aiohttp
import orjson

from benchmarks.load_generator import RequestRecord, SendOne

Fold = Callable[[RequestRecord, dict, float], None]
JSON_HEADERS = {"Content-Type": "application/json"}
INCLUDE_USAGE = {"stream": True, "stream_options": {"include_usage": True}}


def fold_chat_chunk(record: RequestRecord, chunk: dict, elapsed_s: float) -> None:
    """One chat.completion.chunk."""
    _fold_openai_usage(record, chunk)
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content") or ""
        if content or delta.get("reasoning") or delta.get("tool_calls"):  # mlx-lm's name for thinking text
            record.chunk_times_s.append(elapsed_s)
            record.text += content
        record.finish_reason = choice.get("finish_reason") or record.finish_reason


def fold_completion_chunk(record: RequestRecord, chunk: dict, elapsed_s: float) -> None:
    """One text_completion chunk."""
    _fold_openai_usage(record, chunk)
    for choice in chunk.get("choices") or ():
        text = choice.get("text") or ""
        if text:
            record.chunk_times_s.append(elapsed_s)
            record.text += text
        record.finish_reason = choice.get("finish_reason") or record.finish_reason


def _fold_openai_usage(record: RequestRecord, chunk: dict) -> None:
    usage = chunk.get("usage")
    if usage:
        record.prompt_tokens = usage.get("prompt_tokens", 0)
        record.output_tokens = usage.get("completion_tokens", 0)
        details = usage.get("prompt_tokens_details") or {}
        record.cached_tokens = details.get("cached_tokens") or 0


_DELTA_TEXT = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


def fold_messages_event(record: RequestRecord, event: dict, elapsed_s: float) -> None:
    """One Anthropic stream event. The prompt is input + cache read + cache creation tokens."""
    kind = event.get("type")
    if kind == "content_block_delta":
        delta = event["delta"]
        text = delta.get(_DELTA_TEXT.get(delta.get("type"), ""), "")
        if text:
            record.chunk_times_s.append(elapsed_s)
            if delta["type"] == "text_delta":
                record.text += text
    elif kind in ("message_start", "message_delta"):
        usage = (event.get("message") or event).get("usage") or {}
        if "input_tokens" in usage:
            record.cached_tokens = usage.get("cache_read_input_tokens") or 0
            record.prompt_tokens = (usage["input_tokens"] + record.cached_tokens
                                    + (usage.get("cache_creation_input_tokens") or 0))
        record.output_tokens = usage.get("output_tokens") or record.output_tokens
        record.finish_reason = (event.get("delta") or {}).get("stop_reason") or record.finish_reason
    elif kind == "error":
        record.error = f"error event: {event.get('error')}"


async def stream_request(session: aiohttp.ClientSession, url: str, body: dict, fold: Fold,
                         headers: dict[str, str] | None = None) -> RequestRecord:
    """POST one streaming request and fold its events into a record; failures give ok=False."""
    record = RequestRecord(ok=False)
    start = time.perf_counter()
    try:
        async with session.post(url, data=orjson.dumps(body), headers=headers or JSON_HEADERS) as response:
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:300]}"
                return record
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                fold(record, orjson.loads(data), time.perf_counter() - start)
    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as error:
        record.error = f"{type(error).__name__}: {error}"
        return record
    record.e2e_s = time.perf_counter() - start
    if record.error:
        return record
    if not record.chunk_times_s:
        record.error = "the stream carried no content"
        return record
    if not record.output_tokens:
        record.output_tokens = len(record.chunk_times_s)
    record.ok = True
    return record


def chat_sender(base_url: str) -> SendOne:
    """A load-generator send function for /v1/chat/completions payloads."""
    return lambda session, payload: stream_request(
        session, f"{base_url}/v1/chat/completions", {**payload, **INCLUDE_USAGE}, fold_chat_chunk)


def completion_sender(base_url: str) -> SendOne:
    """A load-generator send function for /v1/completions payloads."""
    return lambda session, payload: stream_request(
        session, f"{base_url}/v1/completions", {**payload, **INCLUDE_USAGE}, fold_completion_chunk)
