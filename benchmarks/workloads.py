"""The two serving workloads of `make bench` (DESIGN.md, "Peers measured").

1. Throughput: N short, distinct chat prompts at a fixed concurrency, each generating `max_tokens` tokens
   (servers that honour `ignore_eos` are asked to; the others may stop early and are counted as they went).
2. Agent sessions: sessions that start together and share a ~1k-token system prompt describing 8 tools,
   each turn resending the whole history (user turn, assistant answer, next user turn), as coding agents
   do. Reports the sessions' wall time and the TTFT of first turns (cold or shared prefix) and later turns
   (the session's own history is cached).
"""

import asyncio
import json
import statistics
import time
from dataclasses import dataclass

from benchmarks.load_generator import (
    RequestRecord,
    client_session,
    run_at_concurrency,
    stream_chat,
    summarize,
)

MAX_ERRORS_KEPT = 3


@dataclass(frozen=True)
class ThroughputWorkload:
    concurrency: int
    num_requests: int
    max_tokens: int = 64


@dataclass(frozen=True)
class AgentSessionsWorkload:
    num_sessions: int = 4
    num_turns: int = 3
    max_tokens: int = 48


def throughput_workloads(quick: bool) -> list[ThroughputWorkload]:
    """Concurrency 1, 4 and 16 (the plot's x axis); 16 is the headline: 48 requests."""
    if quick:
        return [ThroughputWorkload(1, 2), ThroughputWorkload(4, 4), ThroughputWorkload(16, 16)]
    return [ThroughputWorkload(1, 4), ThroughputWorkload(4, 16), ThroughputWorkload(16, 48)]


def agent_sessions_workload(quick: bool) -> AgentSessionsWorkload:
    return AgentSessionsWorkload(num_turns=2, max_tokens=32) if quick else AgentSessionsWorkload()


_TOPICS = (
    "the ocean", "volcanoes", "honey bees", "the moon", "trains", "chess", "rain forests", "glaciers",
    "bread baking", "comets", "owls", "the printing press", "deserts", "lighthouses", "coral reefs", "kites",
)
_TASKS = ("Write a short poem about {}.", "Explain {} to a ten-year-old.", "List three facts about {}.")


def short_prompt(index: int) -> str:
    """A distinct one-line prompt for each index (48 before they repeat)."""
    task = _TASKS[index // len(_TOPICS) % len(_TASKS)]
    return task.format(_TOPICS[index % len(_TOPICS)])


def chat_payload(model: str, messages: list[dict], max_tokens: int, extra_fields: dict) -> dict:
    """A greedy chat request; `extra_fields` carries server-specific keys such as ignore_eos."""
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
            **extra_fields}


def _errors(records: list[RequestRecord]) -> list[str]:
    return [record.error for record in records if not record.ok][:MAX_ERRORS_KEPT]


async def run_throughput(base_url: str, model: str, workload: ThroughputWorkload, extra_fields: dict) -> dict:
    payloads = [
        chat_payload(model, [{"role": "user", "content": short_prompt(i)}], workload.max_tokens, extra_fields)
        for i in range(workload.num_requests)
    ]
    records, duration_s = await run_at_concurrency(base_url, payloads, workload.concurrency)
    return {"concurrency": workload.concurrency, "num_requests": workload.num_requests,
            "max_tokens": workload.max_tokens, **summarize(records, duration_s), "errors": _errors(records)}


_TOOLS = (
    ("read_file", "Read a text file from the workspace and return its contents with line numbers.",
     {"path": ("string", "Path relative to the workspace root."),
      "offset": ("integer", "First line to return, 1-based."),
      "limit": ("integer", "Most lines to return.")}),
    ("write_file", "Create or overwrite a file in the workspace with the given contents.",
     {"path": ("string", "Path relative to the workspace root."),
      "content": ("string", "The complete new contents of the file.")}),
    ("edit_file", "Replace one exact occurrence of a string in a file with another string.",
     {"path": ("string", "Path relative to the workspace root."),
      "old_string": ("string", "Text to find; it must occur exactly once."),
      "new_string": ("string", "Text to put in its place.")}),
    ("list_directory", "List the files and folders under a directory, one level deep.",
     {"path": ("string", "Directory relative to the workspace root."),
      "include_hidden": ("boolean", "Also list names that start with a dot.")}),
    ("search_code", "Search the workspace for a regular expression and return matching lines.",
     {"pattern": ("string", "A regular expression in Python syntax."),
      "glob": ("string", "Only search files whose path matches this glob."),
      "max_results": ("integer", "Stop after this many matching lines.")}),
    ("run_shell", "Run a shell command in the workspace and return its exit status and output.",
     {"command": ("string", "The command line, run with bash -c."),
      "timeout_s": ("integer", "Kill the command after this many seconds.")}),
    ("fetch_url", "Download a web page and return its text with the markup removed.",
     {"url": ("string", "An http or https address."),
      "max_chars": ("integer", "Truncate the text after this many characters.")}),
    ("update_todo_list", "Replace the task list shown to the user with a new one.",
     {"items": ("array", "The tasks, each a short imperative sentence."),
      "done": ("array", "Indices of the tasks that are finished.")}),
)

_AGENT_RULES = """You are Forge, a coding agent working inside a user's software project. You help with
reading, writing, testing and explaining code. Follow these rules in every answer.

1. Understand before acting. Read the files that matter before changing them, and search the code base
   for callers before renaming or deleting anything. Never guess the contents of a file you have not read.
2. Keep changes small and focused. Change only what the task needs, match the surrounding style, and do not
   reformat unrelated code. Prefer editing an existing file to creating a new one.
3. Verify your work. After a change, run the project's tests or the narrowest command that exercises it,
   and read the output. If something fails, find the cause instead of retrying blindly.
4. Be careful with the user's machine. Never delete files outside the workspace, never run commands that
   need network access unless asked, and explain any command that changes system state before running it.
5. Communicate briefly. Answer in plain sentences, show code only when it helps, and say clearly what you
   changed, what you checked, and what is left to do. If a request is ambiguous, ask one short question.
6. Use the tools below by answering with a single JSON object of the form
   {"tool": "<name>", "arguments": {...}} and nothing else; the result comes back in the next message.
   Call one tool at a time, and stop calling tools once you can answer the user.

Available tools:
"""


def _render_tool(name: str, description: str, parameters: dict) -> str:
    schema = {
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": {key: {"type": kind, "description": text} for key, (kind, text) in parameters.items()},
            "required": [next(iter(parameters))],
        },
    }
    return json.dumps(schema)


AGENT_SYSTEM_PROMPT = _AGENT_RULES + "\n".join(_render_tool(*tool) for tool in _TOOLS)

_SESSION_TURNS = (
    ("The test test_parse_dates in tests/test_dates.py fails since yesterday. Where should I look first?",
     "Good. Now show me how you would check which commit changed the date parser.",
     "Thanks. Summarise the plan in three steps."),
    ("Add structured logging to the HTTP handlers in server/app.py. What is your plan?",
     "Which log fields would you add for each request?",
     "Fine. How would you test that the logs are written?"),
    ("Our CI takes 20 minutes. How would you find the slowest tests in this project?",
     "Suppose the slowest test starts a database. What are the options to speed it up?",
     "Write the todo list for this work."),
    ("Explain what the function merge_intervals in utils/ranges.py should do, then how to test it.",
     "Which edge cases would you cover?",
     "Now list the files you would read before writing the tests."),
)


def session_user_turns(session: int, num_turns: int) -> tuple[str, ...]:
    return _SESSION_TURNS[session % len(_SESSION_TURNS)][:num_turns]


async def _run_session(base_url: str, model: str, session: int, workload: AgentSessionsWorkload,
                       extra_fields: dict) -> list[RequestRecord]:
    messages = [{"role": "system", "content": AGENT_SYSTEM_PROMPT}]
    records = []
    async with client_session(1) as http:
        for user_turn in session_user_turns(session, workload.num_turns):
            messages.append({"role": "user", "content": user_turn})
            record = await stream_chat(http, base_url, chat_payload(model, messages, workload.max_tokens,
                                                                    extra_fields))
            records.append(record)
            if not record.ok:
                break
            messages.append({"role": "assistant", "content": record.text})
    return records


def _ttft_stats(records: list[RequestRecord]) -> dict[str, float | None]:
    ttfts = [record.ttft_s for record in records if record.ok]
    if not ttfts:
        return {"mean_s": None, "max_s": None, "count": 0}
    return {"mean_s": statistics.fmean(ttfts), "max_s": max(ttfts), "count": len(ttfts)}


async def run_agent_sessions(base_url: str, model: str, workload: AgentSessionsWorkload,
                             extra_fields: dict) -> dict:
    start = time.perf_counter()
    sessions = await asyncio.gather(*(
        _run_session(base_url, model, session, workload, extra_fields)
        for session in range(workload.num_sessions)
    ))
    wall_s = time.perf_counter() - start
    records = [record for session in sessions for record in session]
    first_turns = [session[0] for session in sessions if session]
    later_turns = [record for session in sessions for record in session[1:]]
    return {
        "num_sessions": workload.num_sessions,
        "num_turns": workload.num_turns,
        "max_tokens": workload.max_tokens,
        "sessions_wall_s": wall_s,
        "first_turn_ttft": _ttft_stats(first_turns),
        "later_turn_ttft": _ttft_stats(later_turns),
        "prompt_tokens_per_turn": [[record.prompt_tokens for record in session] for session in sessions],
        "cached_tokens_per_turn": [[record.cached_tokens for record in session] for session in sessions],
        **summarize(records, wall_s),
        "errors": _errors(records),
    }
