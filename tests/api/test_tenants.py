"""Several tenants, one key each (--api-key-file): every key gets in, nothing else does, and a
tenant's prefix cache is its own, so one cannot learn another's prompts from its timings."""

import pytest
from http_client import request
from live_server import LiveServer, start_server

CHAT = "/v1/chat/completions"
PROMPT = {"messages": [{"role": "user", "content": "A private prompt, long enough to fill "
                        "a few blocks of the prefix cache with its tokens."}], "max_tokens": 2}


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tenants")
    keys = directory / "keys"
    keys.write_text("# one key per tenant\nalpha-key\n\n  beta-key  \n")
    live = start_server(directory, "--api-key-file", str(keys))
    yield live
    live.stop()


def cached_tokens(server: LiveServer, key: str) -> int:
    reply = request(server.port, "POST", CHAT, PROMPT, {"Authorization": f"Bearer {key}"})
    assert reply.status == 200, reply.body
    return reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_every_key_in_the_file_gets_in_and_nothing_else(tenants: LiveServer):
    for headers in ({}, {"Authorization": "Bearer gamma-key"}, {"x-api-key": "# one key"}):
        reply = request(tenants.port, "POST", CHAT, PROMPT, headers)
        assert reply.status == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    assert request(tenants.port, "GET", "/v1/models", headers={"x-api-key": "beta-key"}).status == 200


def test_tenants_never_hit_each_others_prefix_cache(tenants: LiveServer):
    assert cached_tokens(tenants, "alpha-key") == 0
    assert cached_tokens(tenants, "alpha-key") > 0  # its own prefix, cached
    assert cached_tokens(tenants, "beta-key") == 0  # the same prompt under another key: cold
    assert cached_tokens(tenants, "beta-key") > 0


def test_an_unreadable_or_empty_key_file_stops_the_server_at_start(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    for path in (empty, tmp_path / "missing"):
        with pytest.raises(RuntimeError, match="--api-key-file"):
            start_server(tmp_path, "--api-key-file", str(path))


def test_a_cache_salt_keeps_requests_under_one_key_apart(tenants: LiveServer):
    salted = {**PROMPT, "messages": [{"role": "user", "content": "Salted and private: a prompt "
                                      "that fills a few blocks of the prefix cache."}]}

    def cached(salt: str) -> int:
        reply = request(tenants.port, "POST", CHAT, {**salted, "cache_salt": salt},
                        {"Authorization": "Bearer alpha-key"})
        assert reply.status == 200, reply.body
        return reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    assert cached("first") == 0
    assert cached("first") > 0
    assert cached("second") == 0
    reply = request(tenants.port, "POST", CHAT, {**salted, "cache_salt": ""},
                    {"Authorization": "Bearer alpha-key"})
    assert reply.status == 400 and reply.json()["error"]["param"] == "cache_salt"
