"""Fuzz every route with over a thousand requests: bodies from /openapi.json through schemathesis,
valid ones and ones that break the schema; realistic bodies (tools, tool calls, streams, logprobs,
JSON schemas) with a node anywhere in them replaced, deleted or renamed; and raw HTTP no client
library sends (non-JSON, empty, truncated or oversized bodies, wrong content types, unknown paths
and methods). Valid bodies get max_tokens <= 2 and n <= 2, so the fuzz stays quick.

No reply is a 5xx, every error is in its protocol's shape, every stream ends as its protocol ends
one, and afterwards the server is idle, holds no KV-cache block and answers normal requests."""

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from http_client import request
from live_server import LiveServer, start_server

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
MESSAGES, COUNT_TOKENS = "/v1/messages", "/v1/messages/count_tokens"
ROUTES = [CHAT, COMPLETIONS, MESSAGES, COUNT_TOKENS, "/v1/models", "/v1/models/m", "/",
          "/health", "/version", "/metrics", "/openapi.json"]
MAX_TOKENS, MAX_CHOICES, MAX_N = 2, 2, 128  # what valid fuzz bodies may ask for; quick
CONCURRENCY = 8  # the test profile's --max-num-seqs
MIN_REQUESTS = 1000
VALID_EXAMPLES, INVALID_EXAMPLES, MUTATED_EXAMPLES, RAW_EXAMPLES = 150, 150, 250, 600
FUZZ_SETTINGS = settings(deadline=None, database=None, print_blob=True,
                         suppress_health_check=list(HealthCheck))  # slow by nature
SENT: Counter[str] = Counter()  # requests by documented route, "other" for the rest

_TEXT = {"type": "string", "minLength": 1}
OPENAI_ERROR = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "additionalProperties": False,
        "properties": {
            "message": _TEXT, "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]},
            "type": {"enum": ["invalid_request_error", "authentication_error", "permission_error",
                              "not_found_error", "rate_limit_exceeded",
                              "service_unavailable_error"]},
        }}},
}
ANTHROPIC_ERROR = {
    "type": "object", "required": ["type", "error"], "additionalProperties": False,
    "properties": {"type": {"const": "error"}, "error": {
        "type": "object", "required": ["type", "message"], "additionalProperties": False,
        "properties": {
            "message": _TEXT,
            "type": {"enum": ["invalid_request_error", "authentication_error", "permission_error",
                              "not_found_error", "request_too_large", "rate_limit_error",
                              "overloaded_error"]},
        }}},
}

HI = {"role": "user", "content": "hi"}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
# Valid bodies that use most of each route's fields, for the mutations to break.
BASES: dict[str, list[dict[str, Any]]] = {
    CHAT: [
        {"model": "m", "max_tokens": MAX_TOKENS, "n": 1, "temperature": 0.7, "top_p": 0.9,
         "top_k": 5, "min_p": 0.05, "seed": 7, "stop": ["\n\n"], "user": "u", "cache_salt": "salt",
         "messages": [
             {"role": "system", "content": "Be brief."},
             {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "call_1", "type": "function",
                  "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
             {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
         "tools": [{"type": "function", "function": {
             "name": "weather", "description": "The weather of a city", "parameters": WEATHER}}],
         "tool_choice": {"type": "function", "function": {"name": "weather"}},
         "parallel_tool_calls": False, "stream": True, "stream_options": {"include_usage": True}},
        {"messages": [{"role": "developer", "content": "Answer in JSON."}, HI],
         "max_completion_tokens": MAX_TOKENS, "logprobs": True, "top_logprobs": 2,
         "logit_bias": {"42": -100, "7": 5}, "presence_penalty": 0.5, "frequency_penalty": -0.5,
         "repetition_penalty": 1.1, "stop_token_ids": [2], "ignore_eos": True,
         "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
             "type": "object", "properties": {"a": {"type": "integer"}}}}},
         "chat_template_kwargs": {"enable_thinking": False}},
    ],
    COMPLETIONS: [
        {"prompt": ["Once upon a time"], "max_tokens": MAX_TOKENS, "n": 2, "best_of": 2,
         "logprobs": 2, "stop": "\n", "stream": True, "stream_options": {"include_usage": True},
         "seed": 1, "logit_bias": {"5": 1}, "stop_token_ids": [0]},
        {"prompt": [[1, 2, 3], [4, 5]], "max_tokens": MAX_TOKENS, "echo": True, "temperature": 0},
    ],
    MESSAGES: [
        {"model": "m", "max_tokens": MAX_TOKENS,
         "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
         "messages": [
             {"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "content": [
                 {"type": "thinking", "thinking": "Ask the tool.", "signature": "s"},
                 {"type": "tool_use", "id": "tu_1", "name": "weather",
                  "input": {"city": "Paris"}}]},
             {"role": "user", "content": [
                 {"type": "tool_result", "tool_use_id": "tu_1", "content": "sunny"},
                 {"type": "text", "text": "And tomorrow?"}]}],
         "tools": [{"name": "weather", "description": "The weather of a city",
                    "input_schema": WEATHER}],
         "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
         "stop_sequences": ["\n\n"], "temperature": 0.5, "top_p": 0.9, "top_k": 5, "stream": True,
         "metadata": {"user_id": "u"}, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        {"model": "m", "max_tokens": MAX_TOKENS, "messages": [HI],
         "tools": [{"name": "weather", "input_schema": WEATHER}],
         "tool_choice": {"type": "tool", "name": "weather"}},
    ],
    COUNT_TOKENS: [
        {"model": "m", "system": "Be brief.", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
         "tools": [{"name": "weather", "input_schema": WEATHER}]},
    ],
}
BOUNDARY_VALUES = [0, -1, 1, 2, MAX_N, MAX_N + 1, 20, 21, 100, -100, 101, 2**31, 2**63 - 1, 2**63,
                   -2**63, 2**64, 10**30, 0.0, -0.0, 0.5, 1.0, 1.5, 2.0, -2.0, 2.5, 1e308, -1e308,
                   5e-324, "", "x", "-1", "0", True, False, None, [], [None], {}]
BOUNDARY_KEYS = ["", "x", "0", "-1", "--1", "²", "99999999", "type", "name", "function", "text",
                 "content", "role", "messages", "schema", "input"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(BOUNDARY_VALUES),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(BOUNDARY_KEYS), inner, max_size=4),
    max_leaves=12)
field_values = st.sampled_from(BOUNDARY_VALUES) | json_values


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("fuzz"), "--default-max-tokens", str(MAX_TOKENS))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(fuzz_server.base_url + "/openapi.json")
    schema.config.max_stream_events = 10_000  # read every stream to its end
    return schema


@pytest.fixture(scope="module")
def senders() -> Iterator[ThreadPoolExecutor]:
    """Requests are sent from these threads as the fuzz draws them, so that the engine batches
    the valid ones (and sees requests come and go while others run)."""
    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="fuzz") as pool:
        yield pool


def is_anthropic(path: str) -> bool:
    return path.startswith(MESSAGES)


def bounded(body: Any) -> Any:
    """The body with valid token budgets and choice counts cut to the fuzz's; invalid values are
    left as they are, so a body that breaks the schema still does."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    for name in ("max_tokens", "max_completion_tokens"):
        if _is_int(body.get(name)) and body[name] > MAX_TOKENS:
            body[name] = MAX_TOKENS
    for name, limit in (("n", MAX_N), ("best_of", None)):
        value = body.get(name)
        if _is_int(value) and MAX_CHOICES < value and (limit is None or value <= limit):
            body[name] = MAX_CHOICES
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_reply(sent: str, method: str, path: str, status: int, content_type: str,
                body: bytes) -> None:
    """sent: the request, for the failure's message."""
    what = f"{sent}\n-> {status}: {body[:500]!r}"
    # 529 overloaded_error is the Anthropic routes' back-pressure (--max-queue), by design.
    assert status < 500 or (status == 529 and b"overloaded_error" in body), what
    if status >= 400 and method != "HEAD":
        assert content_type.startswith("application/json"), what
        check_error_shape(path, json.loads(body), what)
    elif status == 200 and content_type.startswith("text/event-stream"):
        check_stream(path, body, what)


def check_error_shape(path: str, payload: Any, what: str) -> None:
    shape = ANTHROPIC_ERROR if is_anthropic(path) else OPENAI_ERROR
    problem = next(jsonschema.Draft202012Validator(shape).iter_errors(payload), None)
    assert problem is None, f"{what}\n{problem and problem.message}"


def check_stream(path: str, body: bytes, what: str) -> None:
    """OpenAI's streams end with [DONE], Anthropic's with message_stop or an error event; an
    error in a stream is a client's, in the protocol's shape."""
    data = [line[len(b"data: "):] for line in body.splitlines() if line.startswith(b"data: ")]
    assert data, what
    if not is_anthropic(path):
        assert data[-1] == b"[DONE]", what
        data = data[:-1]
    events = [json.loads(payload) for payload in data]
    for event in events:
        if "error" in event:
            check_error_shape(path, event, what)
    if is_anthropic(path):
        assert events[-1]["type"] in ("message_stop", "error"), what


def send(server: LiveServer, method: str, path: str, body: bytes | None,
         headers: dict[str, str]) -> None:
    reply = request(server.port, method, path, body, headers)
    sent = f"{method} {path} {headers} {body[:1000] if body else body!r}"
    check_reply(sent, method, path, reply.status, reply.headers.get("content-type", ""), reply.body)


def post_json(server: LiveServer, path: str, body: Any) -> None:
    send(server, "POST", path, json.dumps(bounded(body)).encode(),
         {"Content-Type": "application/json"})


def send_case(case: schemathesis.Case, server: LiveServer) -> int:
    if isinstance(case.body, dict):
        case.body = bounded(case.body)
    response = case.call(base_url=server.base_url, timeout=60)
    check_reply(case.as_curl_command(), case.method, case.formatted_path, response.status_code,
                (response.headers.get("content-type") or [""])[0], response.content)
    return response.status_code


def results(pending: list[Future]) -> list[Any]:
    """Raises the first failure among the sent requests."""
    return [future.result() for future in pending]


def test_the_bases_of_the_mutations_are_valid(fuzz_server: LiveServer, senders: ThreadPoolExecutor):
    bodies = [(path, body) for path, bodies in BASES.items() for body in bodies]
    statuses = senders.map(lambda sent: request(fuzz_server.port, "POST", *sent).status, bodies)
    assert list(statuses) == [200] * len(bodies)


def send_generated(server: LiveServer, schema: schemathesis.BaseSchema,
                   senders: ThreadPoolExecutor, mode: schemathesis.GenerationMode,
                   max_examples: int) -> list[int]:
    """Statuses of the requests schemathesis generates from the document in `mode`."""
    pending = []

    @settings(FUZZ_SETTINGS, max_examples=max_examples)
    @given(case=schema.as_strategy(mode))
    def fuzz(case: schemathesis.Case) -> None:
        SENT[case.path] += 1
        pending.append(senders.submit(send_case, case, server))

    fuzz()
    return results(pending)


def test_schema_valid_requests(fuzz_server: LiveServer, api_schema: schemathesis.BaseSchema,
                               senders: ThreadPoolExecutor):
    statuses = send_generated(fuzz_server, api_schema, senders,
                              schemathesis.GenerationMode.POSITIVE, VALID_EXAMPLES)
    # Most 400s here are rules no schema states (token ids within the vocabulary, best_of == n,
    # blocks a role may not hold); were the document to drift from what the server reads, all
    # would be.
    assert statuses.count(200) >= len(statuses) / 5, Counter(statuses)


def test_requests_that_break_the_schema(fuzz_server: LiveServer,
                                        api_schema: schemathesis.BaseSchema,
                                        senders: ThreadPoolExecutor):
    send_generated(fuzz_server, api_schema, senders, schemathesis.GenerationMode.NEGATIVE,
                   INVALID_EXAMPLES)


def _nodes(value: Any, at: tuple = ()) -> Iterator[tuple]:
    """The path of every node in value, value's own (()) first."""
    yield at
    if isinstance(value, (dict, list)):
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            yield from _nodes(item, (*at, key))


def _at(body: Any, path: tuple) -> Any:
    for key in path:
        body = body[key]
    return body


@st.composite
def mutated(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    """body (copied) with a node replaced, deleted or renamed, or a key added to an object."""
    body = json.loads(json.dumps(body))
    path = draw(st.sampled_from(list(_nodes(body))))
    node = _at(body, path)
    operations = ["replace", "delete"] if path else []   # the body itself stays an object
    if isinstance(node, dict):
        operations += ["add", "rename"] if node else ["add"]
    operation = draw(st.sampled_from(operations))
    if operation == "replace":
        _at(body, path[:-1])[path[-1]] = draw(field_values)
    elif operation == "delete":
        del _at(body, path[:-1])[path[-1]]
    elif operation == "rename":
        node[draw(st.sampled_from(BOUNDARY_KEYS))] = node.pop(draw(st.sampled_from(sorted(node))))
    else:
        node[draw(st.sampled_from(BOUNDARY_KEYS) | st.text(max_size=8))] = draw(field_values)
    return body


@st.composite
def mutated_bodies(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    path = draw(st.sampled_from(sorted(BASES)))
    body = draw(st.sampled_from(BASES[path]))
    for _ in range(draw(st.integers(1, 2))):
        body = draw(mutated(body))
    return path, body


def test_realistic_bodies_with_a_node_broken(fuzz_server: LiveServer,
                                             senders: ThreadPoolExecutor):
    pending = []

    @settings(FUZZ_SETTINGS, max_examples=MUTATED_EXAMPLES)
    @given(mutation=mutated_bodies())
    # Once 500s: a function that is not an object, a key with a non-ASCII digit or two minus
    # signs, a tool_choice naming no tool.
    @example(mutation=(CHAT, {"messages": [HI], "tool_choice": {"function": 5}}))
    @example(mutation=(CHAT, {"messages": [HI], "logit_bias": {"²": 1}}))
    @example(mutation=(CHAT, {"messages": [HI], "logit_bias": {"--1": 1}}))
    @example(mutation=(MESSAGES, {**BASES[MESSAGES][1],
                                  "tool_choice": {"type": "tool", "name": ""}}))
    def fuzz(mutation: tuple[str, dict[str, Any]]) -> None:
        SENT[mutation[0]] += 1
        pending.append(senders.submit(post_json, fuzz_server, *mutation))

    fuzz()
    results(pending)


PATH_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_.~%/"
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8",
                 "application/vnd.api+json", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "", None, "garbage"]


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[str, str, bytes | None, dict[str, str]]:
    """Half to a POST route with a body that is no JSON object; the rest anywhere, any method."""
    if draw(st.booleans()):
        method, path = "POST", draw(st.sampled_from(sorted(BASES)))
    else:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
        path = draw(st.sampled_from(ROUTES)) + draw(st.just("") | st.text(PATH_CHARS, max_size=12))
    valid = json.dumps(BASES.get(path, [{"messages": [HI]}])[0])
    body = draw(st.one_of(
        st.none(), st.just(b""), st.binary(max_size=64), st.text(max_size=64).map(str.encode),
        json_values.filter(lambda value: not isinstance(value, dict))
        .map(lambda value: json.dumps(value).encode()),
        st.integers(1, len(valid) - 1).map(lambda cut: valid[:cut].encode()),
        st.just(b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        st.just(b'{"x": "' + b"y" * 1_100_000 + b'"}'),   # over --max-body-mb 1
    ))
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    headers = {} if content_type is None else {"Content-Type": content_type}
    if draw(st.booleans()):
        headers["x-session-id"] = draw(st.text(PATH_CHARS, max_size=300))
    return method, path, body, headers


def test_raw_http(fuzz_server: LiveServer, senders: ThreadPoolExecutor):
    pending = []

    @settings(FUZZ_SETTINGS, max_examples=RAW_EXAMPLES)
    @given(raw=raw_requests())
    def fuzz(raw: tuple[str, str, bytes | None, dict[str, str]]) -> None:
        SENT[raw[1] if raw[1] in ROUTES else "other"] += 1
        pending.append(senders.submit(send, fuzz_server, *raw))

    fuzz()
    results(pending)


def test_the_fuzz_sent_a_thousand_requests_reaching_every_route(
        api_schema: schemathesis.BaseSchema):
    assert sum(SENT.values()) >= MIN_REQUESTS, SENT
    missing = set(api_schema.raw_schema["paths"]) - set(SENT)
    assert not missing, SENT


def test_the_server_is_whole_after_the_fuzz(fuzz_server: LiveServer):
    health = fuzz_server.wait_until_idle()
    assert health["status"] == "ok"
    assert health["kv_cache_free_blocks"] == health["kv_cache_blocks"]
    chat = request(fuzz_server.port, "POST", CHAT, {"messages": [HI], "max_tokens": 8})
    assert chat.status == 200 and chat.json()["choices"][0]["message"]["content"], chat.body
    message = request(fuzz_server.port, "POST", MESSAGES,
                      {"model": "m", "max_tokens": 8, "messages": [HI]})
    assert message.status == 200 and message.json()["content"][0]["text"], message.body
    assert fuzz_server.process.poll() is None


def test_openapi_json_is_served_and_listed(fuzz_server: LiveServer):
    document = fuzz_server.get_json("/openapi.json")
    assert document["openapi"].startswith("3.1") and set(document["paths"]) >= set(BASES)
    assert "/openapi.json" in fuzz_server.get_json("/")["endpoints"]
