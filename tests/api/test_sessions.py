"""Which client a request is counted to, for the scheduler's fair share."""

from aiohttp.test_utils import make_mocked_request

from api.sessions import client_session


def session_of(headers: dict[str, str]) -> str:
    return client_session(make_mocked_request("POST", "/v1/messages", headers=headers))


def test_claude_codes_session_header_comes_first():
    headers = {"X-Claude-Code-Session-Id": "abc", "x-session-id": "other", "x-api-key": "k"}
    assert session_of(headers) == "x-claude-code-session-id:abc"
    assert session_of({"x-session-id": "script-7", "Authorization": "Bearer k"}) == "x-session-id:script-7"


def test_the_api_key_stands_for_the_client_hashed_and_keyless_requests_share_one():
    by_bearer = session_of({"Authorization": "Bearer secret-key"})
    assert by_bearer == session_of({"x-api-key": "secret-key"})
    assert by_bearer.startswith("key:") and "secret" not in by_bearer
    assert by_bearer != session_of({"x-api-key": "another-key"})
    assert session_of({}) == "" == session_of({"x-session-id": "   "})


def test_a_huge_session_header_is_cut():
    assert len(session_of({"x-session-id": "x" * 10_000})) < 300
