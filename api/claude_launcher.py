"""`pagedmlx claude-env` and `pagedmlx claude`: point Claude Code at a pagedmlx server.

claude-env prints the exports; claude runs an installed `claude` with them, first starting a
server with the Claude Code profile (a 32k context on the default model) when none answers.
"""

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

# Claude Code's first request is ~12.8k tokens (2.1.332) or ~21k (2.1.197), beyond the default
# model's 8k context.
CLAUDE_SERVE_ARGS = ("--max-model-len", "32768", "--allow-long-context")
STARTUP_TIMEOUT_S = 300
HAIKU = "claude-haiku-4-5"  # a name Claude Code gives its small model


def claude_env(base_url: str, api_key: str | None) -> dict[str, str]:
    """The variables that send Claude Code's traffic, both of its models, to the server."""
    cards = _served_models(base_url, api_key)
    main = cards[0]["id"] if cards else "pagedmlx"
    small = _small_model(cards) or main
    return {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_AUTH_TOKEN": api_key or "pagedmlx",
        "ANTHROPIC_MODEL": main,
        "ANTHROPIC_SMALL_FAST_MODEL": small,
        # A second guard against the per-conversation billing line (the server drops it too).
        "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # A cold 20k-token prompt can take minutes to prefill on a CPU.
        "API_TIMEOUT_MS": "1800000",
    }


def print_claude_env(base_url: str, api_key: str | None) -> int:
    if not _healthy(base_url):
        print(f"# pagedmlx: no server answers at {base_url} yet; start one with "
              f"`pagedmlx serve {' '.join(CLAUDE_SERVE_ARGS)}`", file=sys.stderr)
    for name, value in claude_env(base_url, api_key).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def run_claude(base_url: str, api_key: str | None, serve_args: list[str],
               claude_args: list[str]) -> int:
    claude = shutil.which("claude")
    if claude is None:
        print("pagedmlx: error: `claude` is not on PATH; install Claude Code with "
              "`npm install -g @anthropic-ai/claude-code`", file=sys.stderr)
        return 127
    server = None if _healthy(base_url) else _start_server(base_url, serve_args)
    try:
        env = {**os.environ, **claude_env(base_url, api_key)}
        return subprocess.call([claude, *claude_args], env=env)
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)


def _start_server(base_url: str, serve_args: list[str]) -> subprocess.Popen:
    print(f"pagedmlx: starting a server at {base_url} ({' '.join(serve_args)})", file=sys.stderr)
    server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", *serve_args])
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _healthy(base_url):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"pagedmlx: error: the server did not start (exit {server.poll()})")
        time.sleep(0.5)
    return server


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _small_model(cards: list[dict]) -> str | None:
    """The model Claude Code's small-model requests go to: the one whose alias takes Haiku names
    (claude-*haiku*), else the second listed (the first is the default, the main one)."""
    for card in cards[1:]:
        if any(fnmatch.fnmatchcase(HAIKU, alias.lower()) for alias in card.get("aliases", ())):
            return card["id"]
    return cards[1]["id"] if len(cards) > 1 else None


def _served_models(base_url: str, api_key: str | None) -> list[dict]:
    """/v1/models' cards, the default model first."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        request = urllib.request.Request(base_url + "/v1/models", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return list(json.loads(response.read())["data"])
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return []
