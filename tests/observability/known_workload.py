"""A workload whose figures are known: what /metrics and the dashboards must show after it.

Run against a server whose KV pool is tiny (POOL_BLOCKS), so that the concurrent burst preempts.
"""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from http_client import hang_up, open_stream, read_contents, request, sse_lines
from live_server import LiveServer, wait_for

CHAT = "/v1/chat/completions"
POOL_BLOCKS = 40
SERVER_FLAGS = ("--kv-cache-gb", f"{POOL_BLOCKS * 737_280 / 2**30:.6f}")  # SmolLM2's block: 720 KiB
DISK_CACHE_GB = 1  # the disk tier's bound, in a directory of the test's own (conftest.py)
ANTHROPIC_SESSION = "observability-anthropic"
BURST = 6
BURST_TOKENS = 100
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"]}}}


@dataclass
class Expected:
    """What the server was sent and answered, per engine request."""

    prompt_tokens: list[int] = field(default_factory=list)
    max_tokens: list[int] = field(default_factory=list)
    finished: Counter = field(default_factory=Counter)  # the engine's finish reasons
    length_output_tokens: int = 0  # output of the requests that ran to max_tokens
    queries_by_protocol: Counter = field(default_factory=Counter)
    cached_by_protocol: Counter = field(default_factory=Counter)  # as usage reported them
    aborts: Counter = field(default_factory=Counter)
    sessions: int = 2  # the anonymous OpenAI client and the Anthropic one
    tool_calls: int = 1

    @property
    def num_requests(self) -> int:
        return len(self.prompt_tokens)

    def add(self, protocol: str, prompt_tokens: int, cached: int, max_tokens: int,
            reason: str) -> None:
        self.prompt_tokens.append(prompt_tokens)
        self.max_tokens.append(max_tokens)
        self.finished[reason] += 1
        self.queries_by_protocol[protocol] += prompt_tokens
        self.cached_by_protocol[protocol] += cached
        if reason == "length":
            self.length_output_tokens += max_tokens


def chat(messages: list[dict], max_tokens: int, **extra: object) -> dict:
    return {"messages": messages, "max_tokens": max_tokens, "ignore_eos": True, **extra}


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def post_chat(server: LiveServer, body: dict) -> dict:
    reply = request(server.port, "POST", CHAT, body)
    assert reply.status == 200, reply.body
    return reply.json()


def run(server: LiveServer) -> Expected:
    expected = Expected()
    first = ask("Name three colors of the rainbow, please.")

    def openai(body: dict, reason: str) -> dict:
        answer = post_chat(server, body)
        usage = answer["usage"]
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        expected.add("openai", usage["prompt_tokens"], cached, body["max_tokens"], reason)
        return answer

    cold = openai(chat(first, 8), "length")
    warm = openai(chat(first, 8), "length")
    assert warm["usage"]["prompt_tokens_details"]["cached_tokens"] > 0, warm["usage"]
    stopped = openai(chat(ask("Write a sentence about the weather."), 40, stop=["e"]), "stop")
    assert stopped["choices"][0]["finish_reason"] == "stop"
    expected.aborts["stop_string"] += 1
    called = openai({"messages": ask("What is the weather in Oslo?"), "tools": [WEATHER_TOOL],
                     "tool_choice": "required", "parallel_tool_calls": False, "temperature": 0,
                     "max_tokens": 80}, "stop")
    assert called["choices"][0]["finish_reason"] == "tool_calls", called

    _hang_up_after_three_tokens(server, chat(first, 200, stream=True))
    expected.add("openai", cold["usage"]["prompt_tokens"], 0, 200, "abort")  # its hit: unreported
    expected.aborts["client_disconnect"] += 1

    reply = request(server.port, "POST", "/v1/messages", {
        "model": "m", "max_tokens": 8, "messages": ask("Say hello to the metrics.")},
        headers={"x-session-id": ANTHROPIC_SESSION})
    assert reply.status == 200, reply.body
    message = reply.json()
    usage = message["usage"]
    prompt = (usage["input_tokens"] + usage["cache_read_input_tokens"]
              + usage["cache_creation_input_tokens"])
    # Sampled, so it may end its turn before max_tokens.
    reason = {"max_tokens": "length", "end_turn": "stop"}[message["stop_reason"]]
    expected.add("anthropic", prompt, usage["cache_read_input_tokens"], 8, reason)

    prompts = [ask(f"Count slowly from {10 * i} to {10 * i + 50}, one number per line.")
               for i in range(BURST)]
    with ThreadPoolExecutor(BURST) as pool:
        for answer in pool.map(lambda m: post_chat(server, chat(m, BURST_TOKENS)), prompts):
            usage = answer["usage"]
            expected.add("openai", usage["prompt_tokens"], 0, BURST_TOKENS, "length")

    assert request(server.port, "GET", "/v1/nope").status == 404
    assert request(server.port, "POST", CHAT, b"{not json",
                   {"Content-Type": "application/json"}).status == 400
    return expected


def _hang_up_after_three_tokens(server: LiveServer, body: dict) -> None:
    before = server.metric("pagedmlx:request_aborts_total", cause="client_disconnect")
    connection, response = open_stream(server.port, CHAT, body)
    read_contents(sse_lines(response), 3)
    hang_up(connection)
    wait_for(lambda: server.metric("pagedmlx:request_aborts_total", cause="client_disconnect")
             != before, what="the hang-up's abort")
