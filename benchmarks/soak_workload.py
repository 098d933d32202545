"""The soak's requests: what each one asks (kind, fate, body) and its plan, drawn reproducibly from its
sequence number.

Kinds take turns, so each one comes up as often as the others; every 25th request (from the 4th, so that
even a short run has one) carries a prompt over the server's context (a 400 in the protocol's shape); of
the others, most complete and some, drawn, are left by the client at a random point (before the first
byte, after a few chunks, or, without a stream, after a short wait).
Prompts lead with one of a few long system prompts, so the prefix cache hits; a prompt and its prefix are
sized from the server's max-model-len.
"""

import enum
import random
from dataclasses import dataclass

from benchmarks.workloads import short_prompt


class Protocol(enum.Enum):
    CHAT = "/v1/chat/completions"
    COMPLETION = "/v1/completions"
    MESSAGES = "/v1/messages"


@dataclass(frozen=True)
class Kind:
    name: str
    protocol: Protocol
    stream: bool
    tools: bool = False


KINDS = (
    Kind("chat", Protocol.CHAT, stream=False),
    Kind("chat_stream", Protocol.CHAT, stream=True),
    Kind("completion", Protocol.COMPLETION, stream=False),
    Kind("completion_stream", Protocol.COMPLETION, stream=True),
    Kind("messages", Protocol.MESSAGES, stream=False),
    Kind("messages_stream", Protocol.MESSAGES, stream=True),
    Kind("chat_tools", Protocol.CHAT, stream=False, tools=True),
    Kind("messages_tools_stream", Protocol.MESSAGES, stream=True, tools=True),
)


class Fate(enum.Enum):
    COMPLETE = "complete"
    ABORT = "abort"
    OVERLONG = "overlong"


@dataclass(frozen=True)
class AbortPlan:
    """Leave after `after_s` seconds, or once `after_chunks` chunks of content came (streams)."""

    after_s: float | None = None
    after_chunks: int | None = None


@dataclass(frozen=True)
class RequestSpec:
    number: int
    kind: Kind
    fate: Fate
    body: dict
    max_tokens: int
    abort: AbortPlan | None = None


ABORT_SHARE = 0.15
OVERLONG_EVERY, OVERLONG_FIRST = 25, 3  # 25 is coprime with len(KINDS): every kind gets some
SHARED_PREFIXES = 3
PREFIX_WORDS_PER_CONTEXT = 6  # a prefix of 1/6 as many words as the context has tokens: ~1/4 of it
TOOL_MAX_TOKENS = 64  # room for one call of the bounded schema below, wrapper included
ABORTED_MAX_TOKENS = 64  # long enough to still run when the client leaves
MAX_TOKENS_RANGE = (8, 32)

_CITY = {"type": "string", "maxLength": 24}  # bounds the call, so max_tokens never cuts it
_TOOL_DESCRIPTION = "The weather forecast for a city."
OPENAI_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": _TOOL_DESCRIPTION,
    "parameters": {"type": "object", "properties": {"city": _CITY}, "required": ["city"]}}}]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": _TOOL_DESCRIPTION,
                    "input_schema": {"type": "object", "properties": {"city": _CITY}, "required": ["city"]}}]
_TOOL_QUESTIONS = ("What is the weather in Oslo?", "Will it rain in Lima tomorrow?", "How warm is it in Kyoto?")
_FILLER_WORDS = "the of and to in is it that for on with as at by from this be or are an".split()


def shared_prefix(index: int, words: int) -> str:
    """The `index`-th long system prompt, `words` words; distinct from its first sentence on."""
    rules = " ".join(f"Rule {n}: when asked about {short_prompt(index * 7 + n).lower()} keep to the facts."
                     for n in range(words // 8 + 1))  # a rule is over 8 words
    return " ".join(f"You are assistant {index} of the soak. Answer briefly. {rules}".split()[:words])


def overlong_text(max_model_len: int) -> str:
    """More words than the context has tokens: at least a token each, so always over the limit."""
    return " ".join(_FILLER_WORDS[i % len(_FILLER_WORDS)] for i in range(max_model_len + 64))


def _abort_plan(kind: Kind, rng: random.Random) -> AbortPlan:
    if rng.random() < 0.4:
        return AbortPlan(after_s=rng.uniform(0.005, 0.05))  # usually before the first byte
    if kind.stream:
        return AbortPlan(after_chunks=rng.randint(1, 4))
    return AbortPlan(after_s=rng.uniform(0.2, 1.5))


def _body(kind: Kind, system: str, question: str, max_tokens: int, temperature: float) -> dict:
    body: dict = {"model": "soak", "max_tokens": max_tokens, "temperature": temperature}
    if kind.stream:
        body["stream"] = True
        if kind.protocol is not Protocol.MESSAGES:
            body["stream_options"] = {"include_usage": True}
    if kind.protocol is Protocol.COMPLETION:
        # Led into a sentence, a base-style continuation seldom ends before its first word.
        return {**body, "prompt": f"{system}\n\nQuestion: {question}\nAnswer: The"}
    if kind.protocol is Protocol.MESSAGES:
        body.update(system=system, messages=[{"role": "user", "content": question}])
        if kind.tools:
            body.update(tools=ANTHROPIC_TOOLS, tool_choice={"type": "any", "disable_parallel_tool_use": True})
        return body
    body["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    if kind.tools:
        body.update(tools=OPENAI_TOOLS, tool_choice="required", parallel_tool_calls=False)
    return body


class Plan:
    """Request i of a run, the same for the same seed and max-model-len."""

    def __init__(self, max_model_len: int, seed: int = 0):
        self.seed = seed
        words = max_model_len // PREFIX_WORDS_PER_CONTEXT
        self._prefixes = [shared_prefix(i, words) for i in range(SHARED_PREFIXES)]
        self._overlong = overlong_text(max_model_len)

    def request(self, number: int) -> RequestSpec:
        rng = random.Random(self.seed * 1_000_003 + number)
        kind = KINDS[number % len(KINDS)]
        fate = Fate.OVERLONG if number % OVERLONG_EVERY == OVERLONG_FIRST \
            else Fate.ABORT if rng.random() < ABORT_SHARE else Fate.COMPLETE
        question = rng.choice(_TOOL_QUESTIONS) if kind.tools else short_prompt(rng.randrange(64))
        if fate is Fate.OVERLONG:
            question += " " + self._overlong
        max_tokens = (ABORTED_MAX_TOKENS if fate is Fate.ABORT else TOOL_MAX_TOKENS if kind.tools
                      else rng.randint(*MAX_TOKENS_RANGE))
        body = _body(kind, rng.choice(self._prefixes), question, max_tokens, rng.choice((0.0, 0.7)))
        return RequestSpec(number, kind, fate, body, max_tokens,
                           _abort_plan(kind, rng) if fate is Fate.ABORT else None)
