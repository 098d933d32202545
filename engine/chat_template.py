"""Chat templates compiled and rendered in jinja2's immutable sandbox, as Hugging Face does, with
the output bounded.

The environment is the one transformers (5.24) compiles templates in: trim_blocks, lstrip_blocks,
loop controls, the `{% generation %}` tag, HF's `tojson` (no HTML escaping; indent, separators,
ensure_ascii, sort_keys), `raise_exception`, `strftime_now`, and a `dict` and a `namespace` that
cannot reach Python internals. A render sees what `apply_chat_template` passes: the messages
(without their None values, the reasoning also under its other names), `tools`, `documents`,
`add_generation_prompt`, the tokenizer's special tokens (bos_token, eos_token, ...) and the
caller's variables, all rebuilt from JSON values so that no object's methods reach the template.
Unlike transformers, a render stops once its output passes a bound, and `check_chat_template`
tells at load whether a model's template can serve at all.

The sandbox and the bound stop a template reaching Python internals, changing its inputs and
writing without end; a single expression (`'a' * 10**10`) or a loop that writes nothing can still
spend memory or CPU, as under transformers.
"""

import io
import json
import traceback
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateError, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

# Prompts average about 4 characters a token, and no open model reads more than about a million
# tokens; 64 Mi characters is 16 times that, and twice what the default 32 MB request body can
# carry, so only a runaway template gets there, and it stops there rather than exhausting memory.
MAX_CHARS = 64 * 2**20
# The probe conversations are three short turns, for which real templates write a few KB (long
# tool instructions included); past this a template is looping, caught within a second.
_PROBE_MAX_CHARS = 2**20
_PROBES = (
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Hi! How can I help?"},
     {"role": "user", "content": "What is 2 + 2?"}],
)
_PROBE_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
# The keys a message's reasoning may come under; templates read the first, gpt-oss's `thinking`.
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
_TEMPLATE_FILENAME = "<template>"  # what jinja names a from_string template's traceback frames


class ChatTemplateError(Exception):
    """A chat template that does not compile, or that failed on a conversation.

    `template_name` names the one at fault where the model has several (None: its only one)."""

    def __init__(self, message: str, template_name: str | None = None, line: int | None = None):
        where = [f"template {template_name!r}"] if template_name else []
        where += [f"line {line}"] if line else []
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.template_name = template_name


class UnsafeTemplateError(ChatTemplateError):
    """A sandbox violation or output past the bound: the template's fault, whatever it is given."""


class ChatTemplate:
    """A model's chat template (or its named templates, picked as transformers picks them),
    compiled in the sandbox and rendered with the special tokens, up to `max_chars` characters."""

    def __init__(
        self,
        source: str | dict[str, str] | None,
        special_tokens: Mapping[str, str] | None = None,
        max_chars: int = MAX_CHARS,
    ):
        if source is None:
            raise ChatTemplateError("this model has no chat template")
        if not isinstance(source, (str, dict)):
            raise ChatTemplateError(
                f"a chat template is text or named texts, not {type(source).__name__}")
        named = source if isinstance(source, dict) else {None: source}
        self._templates = {name: _compile(text, name) for name, text in named.items()}
        self._special_tokens = dict(special_tokens or {})
        self.max_chars = max_chars

    @classmethod
    def of(cls, tokenizer: Any, max_chars: int = MAX_CHARS) -> "ChatTemplate":
        """The template of a transformers tokenizer."""
        return cls(tokenizer.chat_template, tokenizer.special_tokens_map, max_chars)

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
        **variables: Any,
    ) -> str:
        """The text `tokenizer.apply_chat_template(messages, tools, tokenize=False, ...)` gives;
        ChatTemplateError where the template fails or writes more than max_chars."""
        name = self._choose(tools)
        if not messages:
            raise ChatTemplateError("there are no messages to render")
        try:
            context = {
                **self._special_tokens,
                "documents": None,
                **_plain(variables),
                "messages": [_with_reasoning_aliases(_plain(_without_none(message)))
                             for message in messages],
                "tools": _plain(tools),
                "add_generation_prompt": _plain(add_generation_prompt),
            }
        except RecursionError:
            raise ChatTemplateError("the messages, tools or variables nest too deeply") from None
        return self._write(name, context)

    def _choose(self, tools: list | None) -> str | None:
        if None in self._templates:
            return None
        if tools is not None and "tool_use" in self._templates:
            return "tool_use"
        if "default" in self._templates:
            return "default"
        names = ", ".join(sorted(self._templates))
        raise ChatTemplateError(f"none of this model's chat templates ({names}) is named 'default'")

    def _write(self, name: str | None, context: dict[str, Any]) -> str:
        out, size = io.StringIO(), 0
        try:
            for chunk in self._templates[name].generate(context):
                size += len(chunk)
                if size > self.max_chars:
                    raise UnsafeTemplateError(
                        f"it wrote more than {self.max_chars:,} characters, the bound on this "
                        "render", name)
                out.write(chunk)
        except ChatTemplateError:
            raise
        except Exception as error:  # a template is code: whatever it raises is its failure
            raise _template_error(error, name) from None
        return out.getvalue()


def check_chat_template(tokenizer: Any) -> None:
    """Render the probe conversations as requests would (also with a tool where there is a
    "tool_use" template); raise the ChatTemplateError that makes the template unservable: it does
    not compile, breaks the sandbox or the bound on any probe, fails on all, or writes nothing."""
    template = ChatTemplate.of(tokenizer, max_chars=_PROBE_MAX_CHARS)
    tool_choices = (None, _PROBE_TOOLS) if "tool_use" in template._templates else (None,)
    failures = []
    for tools in tool_choices:
        for messages in _PROBES:
            try:
                text = template.render(messages, tools, add_generation_prompt=True)
            except UnsafeTemplateError:
                raise
            except ChatTemplateError as error:  # e.g. no system role: other probes may pass
                failures.append(error)
                continue
            if not text.strip():
                raise ChatTemplateError("it writes nothing for a conversation",
                                        template._choose(tools))
    if len(failures) == len(tool_choices) * len(_PROBES):
        raise failures[0]


def _compile(source: Any, name: str | None) -> Template:
    if not isinstance(source, str):
        raise ChatTemplateError(f"a chat template is text, not {type(source).__name__}", name)
    try:
        return _compile_text(source)
    except Exception as error:  # compiling is parsing untrusted code: any failure is the template's
        raise _template_error(error, name) from None


@lru_cache(maxsize=64)
def _compile_text(source: str) -> Template:
    return _ENVIRONMENT.from_string(source)


def _template_error(error: Exception, name: str | None) -> ChatTemplateError:
    """Our error for what jinja (or Python, inside the template) raised, with the template line."""
    lines = [line for frame, line in traceback.walk_tb(error.__traceback__)
             if frame.f_code.co_filename == _TEMPLATE_FILENAME]
    line = error.lineno if isinstance(error, TemplateSyntaxError) else (lines or [None])[-1]
    if isinstance(error, RecursionError):
        message = "it nests or recurses too deeply"
    elif isinstance(error, TemplateError):
        message = error.message or type(error).__name__
    else:
        message = f"{type(error).__name__}: {error}"
    kind = UnsafeTemplateError if isinstance(error, SecurityError) else ChatTemplateError
    return kind(message, name, line)


def _without_none(message: dict[str, Any]) -> dict[str, Any]:
    # Templates handle a missing key, but some write "None" for content=None (an OpenAI call).
    return {key: value for key, value in message.items() if value is not None}


def _with_reasoning_aliases(message: dict[str, Any]) -> dict[str, Any]:
    reasoning = next((message[key] for key in _REASONING_KEYS if key in message), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _plain(value: Any) -> Any:
    """`value` rebuilt from JSON types (and tuples); anything else becomes "<TypeName>"."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return f"<{type(value).__name__}>"


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks the assistant's text for HF's training
    masks; rendering writes the body as it is (in its own scope, as HF's call block does)."""

    tags = {"generation"}

    def parse(self, parser) -> nodes.CallBlock:
        line = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(line)

    def _body(self, caller) -> str:
        return caller()


class _Dict:
    """`dict` for templates: callable, with fromkeys. The type itself would let a template call
    its unbound methods on the inputs (`dict.update(message, ...)`), which the sandbox allows."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any) -> dict:
        return dict.fromkeys(*args)


class _Namespace(Namespace):
    """jinja2's namespace, refusing the underscore names through which it could reach internals."""

    def __init__(*args: Any, **kwargs: Any):  # Namespace's signature, so namespace(self=1) works
        self, *rest = args
        attributes = dict(*rest, **kwargs)
        for name in attributes:
            _check_namespace_name(name)
        Namespace.__init__(self, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_namespace_name(name)
        Namespace.__setitem__(self, name, value)


def _check_namespace_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"a chat template cannot set {name!r} on a namespace")


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                               dict=_Dict(), namespace=_Namespace)
    return environment


_ENVIRONMENT = _environment()
