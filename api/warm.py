"""`--warm FILE` and `pagedmlx warm FILE`: prefill recorded prompts into the prefix cache.

A warm file holds request bodies: one JSON object, a JSON list of them, or one per line (JSONL),
each either a bare body (e.g. a recorded Claude Code first request) or
{"endpoint": "/v1/messages", "body": {...}}. Once the server listens, it sends each
to itself, one at a time in file order so that later ones hit earlier ones' blocks, asking for a
single token: the prompt's full KV blocks stay in the prefix cache (and, with --disk-cache-gb,
in the disk tier, which outlives the process), so the first real turn is a cache hit.
"""

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger("pagedmlx.warm")

MESSAGES, CHAT, COMPLETIONS = "/v1/messages", "/v1/chat/completions", "/v1/completions"
ENDPOINTS = (MESSAGES, CHAT, COMPLETIONS)
# A cold 20k-token prompt can take minutes to prefill on a CPU: no limit but on connecting.
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30)


class WarmFileError(ValueError):
    """A bad warm file; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class WarmRequest:
    endpoint: str   # one of ENDPOINTS, maybe with a query string
    body: dict[str, Any]


@dataclass
class WarmReport:
    num_requests: int
    num_failed: int
    prompt_tokens: int
    cached_tokens: int
    seconds: float

    def summary(self) -> str:
        return (f"warm: {self.num_requests} requests ({self.num_failed} failed), "
                f"{self.prompt_tokens} prompt tokens ({self.cached_tokens} already cached) "
                f"in {self.seconds:.1f} s")


def load_warm_requests(path: str | Path) -> list[WarmRequest]:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise WarmFileError(f"warm file {path}: cannot read it: {error.strerror}") from None
    except UnicodeDecodeError:
        raise WarmFileError(f"warm file {path}: not UTF-8 text") from None
    entries = _parse(path, text)
    if not entries:
        raise WarmFileError(f"warm file {path}: no requests in it")
    return [_request(path, number, entry) for number, entry in enumerate(entries, 1)]


def _parse(path: str | Path, text: str) -> list[Any]:
    if not text.strip():
        raise WarmFileError(f"warm file {path}: empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as whole_error:
        lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        try:
            json.loads(lines[0][1])
        except json.JSONDecodeError:  # not JSONL either: report the document's error
            raise WarmFileError(f"warm file {path}: not JSON: {whole_error}") from None
        return [_parse_line(path, number, line) for number, line in lines]
    if isinstance(data, list):
        return data
    return [data]


def _parse_line(path: str | Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise WarmFileError(f"warm file {path}: line {number} is not JSON: {error}") from None


def _request(path: str | Path, number: int, entry: Any) -> WarmRequest:
    if not isinstance(entry, dict):
        raise WarmFileError(f"warm file {path}: entry {number} is not an object")
    if "endpoint" not in entry:
        return WarmRequest(_detect_endpoint(entry), entry)
    endpoint, body = entry["endpoint"], entry.get("body")
    if not isinstance(endpoint, str) or endpoint.partition("?")[0] not in ENDPOINTS:
        raise WarmFileError(f"warm file {path}: entry {number} has an unknown endpoint "
                            f"{endpoint!r} (one of {', '.join(ENDPOINTS)})")
    if not isinstance(body, dict):
        raise WarmFileError(f"warm file {path}: entry {number}'s body is not an object")
    return WarmRequest(endpoint, body)


def _detect_endpoint(body: dict[str, Any]) -> str:
    if "prompt" in body:
        return COMPLETIONS
    return MESSAGES if _is_anthropic(body) else CHAT


def _is_anthropic(body: dict[str, Any]) -> bool:
    """Whether a body has what only the Messages API has: a top-level system, a tool with an
    input_schema, a tool_use or tool_result content block."""
    if "system" in body:
        return True
    tools = body.get("tools")
    if isinstance(tools, list) and any(isinstance(t, dict) and "input_schema" in t for t in tools):
        return True
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
                isinstance(block, dict) and block.get("type") in ("tool_use", "tool_result")
                for block in content):
            return True
    return False


async def send_warm_requests(base_url: str, requests: list[WarmRequest],
                             api_key: str | None) -> WarmReport:
    """POSTs each request in turn for a one-token answer; a failure is logged, never raised."""
    started = time.monotonic()
    failed = prompt_tokens = cached_tokens = 0
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for request in requests:
            figures = await _send(session, base_url, request, api_key)
            if figures is None:
                failed += 1
                continue
            prompt_tokens += figures[0]
            cached_tokens += figures[1]
    return WarmReport(len(requests), failed, prompt_tokens, cached_tokens,
                      time.monotonic() - started)


async def warm_server(base_url: str, path: str | Path, api_key: str | None) -> WarmReport | None:
    """Sends the warm file's requests to the server at base_url and prints the summary; a bad
    file is logged (the server keeps serving) and gives None."""
    try:
        requests = load_warm_requests(path)
    except WarmFileError as error:
        log.error("%s", error)
        return None
    report = await send_warm_requests(base_url, requests, api_key)
    print(report.summary(), flush=True)
    return report


def warm_succeeded(task: "asyncio.Task[WarmReport | None] | None") -> bool:
    """Whether a warm_server task ran to its end with every request answered."""
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return False
    report = task.result()
    return report is not None and report.num_failed == 0


def local_url(host: str, port: int) -> str:
    """The URL at which this machine reaches a server bound to host."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _send(session: aiohttp.ClientSession, base_url: str, request: WarmRequest,
                api_key: str | None) -> tuple[int, int] | None:
    """(prompt tokens, cached tokens) of one request's answer; None when it failed."""
    anthropic = request.endpoint.startswith(MESSAGES)
    body = {**request.body, "stream": False, "max_tokens": 1}
    # OpenAI's: the first would override max_tokens, the second is refused without a stream.
    body.pop("max_completion_tokens", None)
    body.pop("stream_options", None)
    headers = {"anthropic-version": "2023-06-01"} if anthropic else {}
    if api_key:
        headers |= {"x-api-key": api_key, "Authorization": f"Bearer {api_key}"}
    try:
        async with session.post(base_url + request.endpoint, json=body,
                                headers=headers) as response:
            answer = await response.json(content_type=None)
            status = response.status
    except (aiohttp.ClientError, ValueError) as error:
        log.warning("%s failed: %r", request.endpoint, error)
        return None
    if status != 200:
        error = answer.get("error") if isinstance(answer, dict) else None
        log.warning("%s answered %d: %s", request.endpoint, status,
                    error.get("message") if isinstance(error, dict) else answer)
        return None
    return _prompt_figures(answer.get("usage") or {}, anthropic)


def _prompt_figures(usage: dict[str, Any], anthropic: bool) -> tuple[int, int]:
    """(prompt tokens, cached tokens); Anthropic's prompt is input + cache read + cache creation
    (api/anthropic/usage.py)."""
    if anthropic:
        cached = usage.get("cache_read_input_tokens", 0)
        return (usage.get("input_tokens", 0) + cached
                + usage.get("cache_creation_input_tokens", 0), cached)
    details = usage.get("prompt_tokens_details") or {}
    return usage.get("prompt_tokens", 0), details.get("cached_tokens", 0)
