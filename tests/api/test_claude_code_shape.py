"""A Claude-Code-shaped conversation over raw HTTP: every SSE byte the CLI would read is checked,
and the prefix cache must carry each turn into the next (and the tools into a second session).

One module-scoped run sends, in order: session A's turn 1, the CLI's background title request,
turn 2 (the assistant's streamed turn 1 plus a tool result), turn 3 (after a ToolSearch that
loads the deferred CronList), and session B's turn 1 from another working directory. The tests
then check what each step got back. temperature 0 (which the CLI does not send) keeps the run
deterministic, and max_tokens 24 keeps it short.
"""

import http.client
import itertools
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from benchmarks import claude_code_traffic as cc
from http_client import sse_lines
from live_server import LiveServer, start_server

SERVER_ARGS = ("--max-model-len", "8192", "--kv-cache-gb", "1", "--default-max-tokens", "24")
SAMPLING = {"max_tokens": 24, "temperature": 0}
TIMEOUT_S = 300
WORKDIR_A = "/tmp/a"
WORKDIR_B = "/tmp/b"
PROMPT_A = "Why does the retry loop in src/client.py never stop? Look before you answer."
PROMPT_B = "List the tests that cover the config loader."
TOOL_OUTPUT = ("     1\timport time\n     2\t\n     3\tdef fetch(session, url, retries=3):\n"
               "     4\t    while retries:\n     5\t        try:\n"
               "     6\t            return session.get(url)\n     7\t        except OSError:\n"
               "     8\t            time.sleep(1)\n")
NEXT_USER_TEXT = "Keep going: read src/client.py and find the bug."
TOOL_SEARCH_CALL = {"role": "assistant", "content": [
    {"type": "text", "text": "I'll load the scheduler tool first."},
    {"type": "tool_use", "id": "toolu_01TestToolSearch", "name": "ToolSearch",
     "input": {"query": "select:CronList"}}]}
TOOL_SEARCH_RESULT = {"role": "user", "content": [
    {"type": "tool_result", "tool_use_id": "toolu_01TestToolSearch",
     "content": [{"type": "tool_reference", "tool_name": "CronList"}]}]}


@dataclass
class Streamed:
    """One streamed /v1/messages answer: its (event, data) pairs, checked for Anthropic's order."""

    headers: dict[str, str]
    events: list[tuple[str, dict[str, Any]]]

    @property
    def message(self) -> dict[str, Any]:
        return self.events[0][1]["message"]

    @property
    def usage(self) -> dict[str, int]:
        return self.message["usage"]

    @property
    def prompt_tokens(self) -> int:
        return sum(self.usage[name] for name in
                   ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))

    def content(self) -> list[dict[str, Any]]:
        """The assistant's content blocks rebuilt from the deltas, as the CLI keeps them."""
        blocks: list[dict[str, Any]] = []
        partial_json: dict[int, str] = {}
        for name, data in self.events:
            if name == "content_block_start":
                blocks.append(dict(data["content_block"]))
            elif name == "content_block_delta":
                block, delta = blocks[data["index"]], data["delta"]
                if delta["type"] == "text_delta":
                    block["text"] += delta["text"]
                elif delta["type"] == "thinking_delta":
                    block["thinking"] += delta["thinking"]
                elif delta["type"] == "signature_delta":
                    block["signature"] = delta["signature"]
                elif delta["type"] == "input_json_delta":
                    partial_json[data["index"]] = (partial_json.get(data["index"], "")
                                                   + delta["partial_json"])
        for index, text in partial_json.items():
            blocks[index]["input"] = json.loads(text)
        return blocks


@dataclass
class Run:
    server: LiveServer
    requests: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    turns: dict[str, Streamed] = field(default_factory=dict)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    title: dict[str, Any] = field(default_factory=dict)

    def post(self, path: str, body: dict[str, Any], session_id: str
             ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=TIMEOUT_S)
        connection.request("POST", path, body=json.dumps(body).encode(),
                           headers=cc.headers(session_id))
        response = connection.getresponse()
        if response.status != 200:
            raise AssertionError(f"POST {path} -> {response.status}: {response.read()!r}\n"
                                 f"server log:\n{self.server.log()}")
        return connection, response

    def post_json(self, path: str, body: dict[str, Any], session_id: str) -> dict[str, Any]:
        connection, response = self.post(path, body, session_id)
        try:
            return json.loads(response.read())
        finally:
            connection.close()

    def turn(self, name: str, session_id: str, messages: list[dict[str, Any]], workdir: str,
             loaded_tools: tuple[str, ...] = ()) -> Streamed:
        body = {**cc.request_body(messages, next(self.requests), workdir, loaded_tools),
                **SAMPLING}
        connection, response = self.post(cc.MESSAGES_PATH, body, session_id)
        try:
            streamed = Streamed({k.lower(): v for k, v in response.getheaders()},
                                checked_events(sse_lines(response)))
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}\nserver log:\n{self.server.log()[-6000:]}")
        finally:
            connection.close()
        self.turns[name] = streamed
        self.bodies[name] = body
        return streamed

    def count_tokens(self, body: dict[str, Any]) -> int:
        counted = {k: v for k, v in body.items() if k not in ("stream", "max_tokens")}
        return self.post_json(cc.COUNT_TOKENS_PATH, counted, "count")["input_tokens"]


def checked_events(lines: Iterator[str]) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs from SSE lines, asserting Anthropic's framing and order: message_start,
    pings and well-nested content blocks, message_delta, message_stop, then the end."""
    events: list[tuple[str, dict[str, Any]]] = []
    event: str | None = None
    for line in lines:
        if line.startswith(":"):
            continue
        key, _, value = line.partition(": ")
        if key == "event":
            assert event is None, f"two event lines in a row: {line!r}"
            event = value
            continue
        assert key == "data" and event is not None, f"unexpected line {line!r}"
        data = json.loads(value)
        assert data["type"] == event, (event, data)
        events.append((event, data))
        event = None
    errors = [data for name, data in events if name == "error"]
    assert not errors, errors
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"], names
    assert names.count("message_start") == names.count("message_delta") == 1, names
    open_index, next_index = None, 0
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index, names
            open_index, next_index = next_index, next_index + 1
        elif name in ("content_block_delta", "content_block_stop"):
            assert data["index"] == open_index, names
            open_index = None if name == "content_block_stop" else open_index
        else:
            assert name == "ping", names
    assert open_index is None and next_index >= 1, names
    return events


def next_user_message(content: list[dict[str, Any]]) -> dict[str, Any]:
    """A tool_result for each tool_use the assistant made, else a new user request."""
    results = [{"type": "tool_result", "tool_use_id": block["id"], "content": TOOL_OUTPUT}
               for block in content if block["type"] == "tool_use"]
    return {"role": "user", "content": results or [{"type": "text", "text": NEXT_USER_TEXT}]}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    server = start_server(tmp_path_factory.mktemp("claude-code"), *SERVER_ARGS)
    run = Run(server)
    session_a, session_b = str(uuid.uuid4()), str(uuid.uuid4())
    history = [cc.first_user_turn(PROMPT_A)]
    turn_1 = run.turn("turn 1", session_a, history + [cc.environment_message(WORKDIR_A, True)],
                      WORKDIR_A)
    run.title = run.post_json(cc.MESSAGES_PATH, {**cc.title_request(PROMPT_A, next(run.requests)),
                                                 **SAMPLING}, session_a)
    history += [cc.environment_message(WORKDIR_A, False),
                {"role": "assistant", "content": turn_1.content()},
                next_user_message(turn_1.content())]
    run.turn("turn 2", session_a, history, WORKDIR_A)
    run.turn("turn 3", session_a, history + [TOOL_SEARCH_CALL, TOOL_SEARCH_RESULT], WORKDIR_A,
             loaded_tools=("CronList",))
    run.turn("session B turn 1", session_b, [cc.first_user_turn(PROMPT_B),
                                             cc.environment_message(WORKDIR_B, True)], WORKDIR_B)
    for name, streamed in run.turns.items():
        print(f"{name}: prompt {streamed.prompt_tokens} tokens, usage {streamed.usage}, "
              f"content {streamed.content()}")
    yield run
    server.stop()


def test_turns_stream_anthropic_events_with_usage_that_counts_the_prompt(run: Run):
    for name, streamed in run.turns.items():
        assert streamed.headers["content-type"].startswith("text/event-stream"), name
        message = streamed.message
        assert message["id"].startswith("msg_") and message["model"] == cc.MODEL, message
        assert message["role"] == "assistant" and message["content"] == [], message
        assert run.count_tokens(run.bodies[name]) == streamed.prompt_tokens, name
        final = next(data for event, data in streamed.events if event == "message_delta")
        assert 1 <= final["usage"]["output_tokens"] <= SAMPLING["max_tokens"], final
        assert final["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use"), final


def test_turn_1_prompt_is_claude_code_sized(run: Run):
    assert 3000 <= run.turns["turn 1"].prompt_tokens <= 6000


def test_title_request_answers_with_text(run: Run):
    assert run.title["type"] == "message" and run.title["model"] == cc.SMALL_FAST_MODEL
    assert run.title["id"].startswith("msg_")
    assert run.title["content"][0]["type"] == "text" and run.title["content"][0]["text"].strip()


@pytest.mark.parametrize("earlier, later, share", [
    ("turn 1", "turn 2", 0.95),
    ("turn 2", "turn 3", 0.90),   # turn 3 loads a deferred tool through a tool_reference
])
def test_a_turn_reads_the_previous_one_from_the_cache(run: Run, earlier: str, later: str,
                                                      share: float):
    previous, turn = run.turns[earlier], run.turns[later]
    read = turn.usage["cache_read_input_tokens"]
    print(f"{later} cache_read {read} / {earlier} prompt {previous.prompt_tokens}"
          f" = {read / previous.prompt_tokens:.3f}")
    assert read >= share * previous.prompt_tokens


def test_second_session_shares_the_tools_prefix(run: Run):
    tools_only = {"model": cc.MODEL, "tools": cc.tools(),
                  "messages": [{"role": "user", "content": "hi"}]}
    tool_share = run.count_tokens(tools_only)
    read = run.turns["session B turn 1"].usage["cache_read_input_tokens"]
    print(f"session B cache_read {read} / tool share {tool_share} = {read / tool_share:.3f}")
    assert tool_share > 0 and read >= 0.8 * tool_share


def test_no_request_got_an_error_status(run: Run):
    statuses = re.findall(r'HTTP/1\.1" (\d{3}) ', run.server.log())
    assert statuses and all(status == "200" for status in statuses), statuses


def test_every_answer_has_its_own_id(run: Run):
    ids = [streamed.message["id"] for streamed in run.turns.values()] + [run.title["id"]]
    assert len(set(ids)) == len(ids), ids
    tool_use_ids = [block["id"] for streamed in run.turns.values()
                    for block in streamed.content() if block["type"] == "tool_use"]
    assert len(set(tool_use_ids)) == len(tool_use_ids), tool_use_ids
