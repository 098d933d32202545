"""Several models in one server (issue 20), through real `pagedmlx serve` processes: the default
model under two names with different settings and a tiny random-weight model folder; routing by
name, alias and pattern; lazy loads with keep-alives; one memory budget; TTL; pins; claude-env."""

import concurrent.futures
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.model_loader import LoadedModel
from tests.engine.tiny_models import write_tiny_llama_folder
from tests.live_server import PAGEDMLX, LiveServer, start_server, wait_for
from tests.token_compare import assert_tokens_match

PROMPTS = ["Name three colours.", "What is the capital of Italy?", "Count from one to five.",
           "Say hello in French."]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, loaded_model: LoadedModel) -> Path:
    """A random-weight llama with the default model's tokenizer (so prompts render alike)."""
    tokenizer = loaded_model.tokenizer
    return write_tiny_llama_folder(tmp_path_factory.mktemp("tiny") / "tiny", tokenizer,
                                   len(tokenizer))


def config_file(directory: Path, tiny: Path) -> Path:
    path = directory / "models.toml"
    path.write_text(f"""
model_alias = ["claude-*haiku*=tiny"]

[models.main]
model = "default"

[models.long]
model = "default"
max_model_len = 2048
kv_cache_gb = 0.1
aliases = ["gpt-4o"]

[models.tiny]
model = "{tiny}"
kv_cache_gb = 0.05
""")
    return path


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory, tiny_folder: Path) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("three")
    live = start_server(directory, "--config", str(config_file(directory, tiny_folder)),
                        "--keepalive-s", "0.05")
    yield live
    live.stop()


def by_model(server: LiveServer, name: str) -> dict[str, float]:
    """{sample name with its other labels: value} of one model's series."""
    with urllib.request.urlopen(server.base_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model_name") == name:
                rest = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())
                                if k not in ("model_name", "engine"))
                samples[f"{sample.name}{{{rest}}}"] = sample.value
    return samples


def states(server: LiveServer) -> dict[str, str]:
    return {card["id"]: card["state"] for card in server.get_json("/v1/models")["data"]}


def greedy(server: LiveServer, model: str, prompt: str) -> tuple[list[str], list]:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    response = client.chat.completions.create(
        model=model, temperature=0, max_tokens=12, logprobs=True, top_logprobs=2,
        messages=[{"role": "user", "content": prompt}])
    entries = response.choices[0].logprobs.content
    return ([entry.token for entry in entries],
            [[(top.token, top.logprob) for top in entry.top_logprobs] for entry in entries])


def successes(server: LiveServer, model: str) -> float:
    return sum(value for key, value in by_model(server, model).items()
               if key.startswith("vllm:request_success_total"))


def test_models_are_listed_with_their_state_and_the_default_first(three: LiveServer):
    cards = three.get_json("/v1/models")["data"]
    assert [card["id"] for card in cards] == ["main", "long", "tiny"]
    assert cards[0]["state"] == "loaded"  # the default loads at start-up, the others on first use
    assert {card["id"]: card["aliases"] for card in cards} == {
        "main": [], "long": ["gpt-4o"], "tiny": ["claude-*haiku*"]}
    health = three.get_json("/health")
    assert health["model"] == "main" and health["model_loaded"]
    assert [(row["name"], row["state"]) for row in health["models"]][0] == ("main", "loaded")


def test_requests_route_by_name_alias_and_pattern_and_unknown_names_go_to_the_default(
        three: LiveServer):
    routes = {"main": "main", "LONG": "long", "gpt-4o": "long", "claude-haiku-4-5": "tiny",
              "tiny": "tiny", "claude-sonnet-4-5": "main", "no-such-model": "main"}
    for requested, model in routes.items():
        before = successes(three, model)
        client = openai.OpenAI(base_url=three.base_url + "/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model=requested, max_tokens=2,
                                               messages=[{"role": "user", "content": "Hi"}])
        assert reply.model == requested  # the name asked for is echoed, as before
        assert successes(three, model) == before + 1, requested
    assert set(states(three).values()) == {"loaded"}


def test_each_model_keeps_its_own_settings(three: LiveServer):
    greedy(three, "long", "Hi")  # loaded
    cards = {card["id"]: card for card in three.get_json("/v1/models")["data"]}
    assert (cards["main"]["max_model_len"], cards["long"]["max_model_len"]) == (1024, 2048)
    prompt = "word " * 1100  # beyond main's 1024 tokens, within long's 2048
    client = openai.OpenAI(base_url=three.base_url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="main", prompt=prompt, max_tokens=1)
    assert refused.value.body["code"] == "context_length_exceeded"
    assert client.completions.create(model="long", prompt=prompt, max_tokens=1).choices[0].text


def test_concurrent_streams_on_two_models_equal_each_model_alone(three: LiveServer):
    alone = {(model, prompt): greedy(three, model, prompt)
             for model in ("main", "tiny") for prompt in PROMPTS}
    with concurrent.futures.ThreadPoolExecutor(len(alone)) as pool:
        together = dict(zip(alone, pool.map(lambda key: greedy(three, *key), alone)))
    for key, (tokens, top2) in alone.items():
        assert_tokens_match(tokens, together[key][0], top2, together[key][1])
    assert alone[("main", PROMPTS[1])][0] != alone[("tiny", PROMPTS[1])][0]  # two models indeed


def test_claude_code_traffic_keeps_the_main_prefix_cached_while_the_small_model_answers(
        three: LiveServer):
    client = anthropic.Anthropic(base_url=three.base_url, api_key="unused", max_retries=0)
    system = [{"type": "text", "text": "You are a coding agent. " + "Follow the rules. " * 60}]
    history = [{"role": "user", "content": "List the files in this folder."}]
    first = client.messages.create(model="claude-sonnet-4-5", max_tokens=4, system=system,
                                   messages=history)
    for title in ("Write a 3-word title for: list files", "Is this a new topic? yes or no"):
        client.messages.create(model="claude-haiku-4-5", max_tokens=4,
                               messages=[{"role": "user", "content": title}])
    history += [{"role": "assistant", "content": "ok"},
                {"role": "user", "content": "Now count them."}]
    second = client.messages.create(model="claude-sonnet-4-5", max_tokens=4, system=system,
                                    messages=history)
    prompt = first.usage.input_tokens + first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens >= prompt // 16 * 16 - 16
    assert successes(three, "tiny") >= 2


def test_a_first_streamed_request_waits_for_the_load_with_keepalives(
        tmp_path: Path, tiny_folder: Path):
    live = start_server(tmp_path, "--model", "main=default", "--model", f"tiny={tiny_folder}",
                        "--keepalive-s", "0.05")
    try:
        assert states(live) == {"main": "loaded", "tiny": "unloaded"}
        body = json.dumps({"model": "tiny", "max_tokens": 3, "stream": True,
                           "messages": [{"role": "user", "content": "Hi"}]}).encode()
        request = urllib.request.Request(live.base_url + "/v1/messages", body,
                                         {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            lines = [line.decode().rstrip("\n") for line in response]
        first_event = next(i for i, line in enumerate(lines) if line.startswith("event:"))
        assert ": keep-alive" in lines[:first_event]
        assert "event: message_stop" in lines
        assert states(live)["tiny"] == "loaded"
        assert by_model(live, "tiny")["pagedmlx:model_loads_total{}"] == 1
    finally:
        live.stop()


def test_a_budget_for_one_model_swaps_them_and_no_racing_request_is_lost(
        tmp_path: Path, tiny_folder: Path):
    # main: ~0.11 GB of weights + 0.2 GB of KV; tiny: 0.02 + 0.2: a 0.45 GB budget holds one.
    live = start_server(tmp_path, "--model", "main=default", "--model", f"tiny={tiny_folder}",
                        "--memory-gb", "0.45")
    try:
        greedy(live, "tiny", "Hi")
        assert states(live) == {"main": "unloaded", "tiny": "loaded"}
        assert by_model(live, "main")["pagedmlx:model_unloads_total{reason=memory}"] == 1
        models = ["main", "tiny"] * 4
        with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
            answers = list(pool.map(lambda model: greedy(live, model, "Say one word.")[0], models))
        assert all(answers)
        assert [greedy(live, model, "Say one word.")[0] for model in ("main", "tiny")] == answers[:2]
        assert sum(state == "loaded" for state in states(live).values()) == 1
        health = live.get_json("/health")
        assert health["models"][0]["state"] in ("loaded", "unloaded")
    finally:
        assert live.stop() == 0


def test_an_idle_model_unloads_after_the_ttl_and_a_pinned_one_stays(
        tmp_path: Path, tiny_folder: Path):
    live = start_server(tmp_path, "--model", "main=default", "--model", f"tiny={tiny_folder}",
                        "--model-ttl-s", "1", "--pin-model", "main")
    try:
        greedy(live, "tiny", "Hi")
        wait_for(lambda: states(live)["tiny"] == "unloaded", 30, "the TTL unload")
        assert states(live)["main"] == "loaded"
        assert by_model(live, "tiny")["pagedmlx:model_unloads_total{reason=ttl}"] == 1
        assert by_model(live, "main")["pagedmlx:model_unloads_total{reason=ttl}"] == 0
        assert greedy(live, "tiny", "Hi")[0]  # and it loads again on the next request
    finally:
        live.stop()


def test_strict_model_names_refuse_unknown_names_in_each_protocol(
        tmp_path: Path, tiny_folder: Path):
    live = start_server(tmp_path, "--model", "main=default", "--model", f"tiny={tiny_folder}",
                        "--model-alias", "claude-*haiku*=tiny", "--strict-model-name")
    try:
        client = openai.OpenAI(base_url=live.base_url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError) as refused:
            client.chat.completions.create(model="gpt-9", max_tokens=2,
                                           messages=[{"role": "user", "content": "Hi"}])
        assert refused.value.body["code"] == "model_not_found"
        claude = anthropic.Anthropic(base_url=live.base_url, api_key="unused", max_retries=0)
        with pytest.raises(anthropic.NotFoundError) as missing:
            claude.messages.create(model="claude-sonnet-4-5", max_tokens=2,
                                   messages=[{"role": "user", "content": "Hi"}])
        assert missing.value.body["error"]["type"] == "not_found_error"
        assert claude.messages.create(model="claude-haiku-4-5", max_tokens=2,
                                      messages=[{"role": "user", "content": "Hi"}]).content
        assert states(live)["tiny"] == "loaded"
    finally:
        live.stop()


def test_a_model_that_fails_to_load_gets_503_and_the_others_keep_serving(tmp_path: Path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    live = start_server(tmp_path, "--model", "main=default", "--model", f"broken={broken}")
    try:
        claude = anthropic.Anthropic(base_url=live.base_url, api_key="unused", max_retries=0)
        with pytest.raises(anthropic.InternalServerError) as failed:
            claude.messages.create(model="broken", max_tokens=2,
                                   messages=[{"role": "user", "content": "Hi"}])
        assert failed.value.status_code == 503 and "broken" in str(failed.value)
        assert claude.messages.create(model="main", max_tokens=2,
                                      messages=[{"role": "user", "content": "Hi"}]).content
        assert states(live) == {"main": "loaded", "broken": "unloaded"}
    finally:
        live.stop()


def test_claude_env_exports_the_main_and_the_small_model(three: LiveServer):
    result = subprocess.run([str(PAGEDMLX), "claude-env", "--port", str(three.port)],
                            capture_output=True, text=True, timeout=60, check=True)
    exports = dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines())
    assert (exports["ANTHROPIC_MODEL"], exports["ANTHROPIC_SMALL_FAST_MODEL"]) == ("main", "tiny")
