import copy
import json
import subprocess
import time
from pathlib import Path

import pytest

from engine.chat_template import ChatTemplate, ChatTemplateError, UnsafeTemplateError
from engine.model_loader import LoadedModel, ModelLoadError, load_model
from tests.engine.tiny_models import write_tiny_llama_folder
from tests.live_server import PAGEDMLX

HI = [{"role": "user", "content": "Hi"}]
TOOLS = [{"type": "function", "function": {
    "name": "weather", "description": "The weather in a city — la météo.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CONVERSATIONS = {
    "one turn": HI,
    "system and turns": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "What's 2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "Thanks — merci ✓"}],
    "tool call": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "user", "content": "And Rome?"}],
    "reasoning": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye!", "reasoning": "A farewell."}],
}
VARIABLES = [{}, {"enable_thinking": False, "date_string": "26 Jul 2024"},
             {"bos_token": "<BOS>", "documents": [{"title": "A", "text": "b"}]}]
# Typical templates, in the shapes of Llama 3.1's, Qwen3's and gpt-oss's.
LLAMA3 = """{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}
{%- if messages[0].role == 'system' %}
{%- set system_message = messages[0].content | trim %}{%- set messages = messages[1:] %}
{%- else %}{%- set system_message = "" %}{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\nToday Date: " + date_string + "\\n\\n" }}
{%- if tools is not none %}
{{- "You have these functions:\\n\\n" }}
{%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\\n\\n" }}{%- endfor %}
{%- endif %}
{{- system_message + "<|eot_id|>" }}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls is defined %}
{%- for call in message.tool_calls %}
{%- if loop.index > 2 %}{% break %}{% endif %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n{"name": "' + call.function.name
    + '", "parameters": ' + call.function.arguments | tojson + '}<|eot_id|>' }}
{%- endfor %}
{%- elif message.role in ('tool', 'ipython') %}
{{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" + message.content + "<|eot_id|>" }}
{%- else %}
{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim
    + '<|eot_id|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}
"""
QWEN3 = """{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- "# Tools\\n<tools>" }}
{%- for tool in tools %}
{{- "\\n" }}{{- tool | tojson(ensure_ascii=True, sort_keys=True, separators=(',', ':')) }}
{%- endfor %}
{{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- if documents %}{%- for d in documents %}{{- d.title + ': ' + d.text + '\\n' }}{%- endfor %}{%- endif %}
{%- set ns = namespace(last_query=messages|length - 1) %}
{%- for message in messages[::-1] %}
{%- if message.role == 'user' %}
{%- set ns.last_query = messages|length - 1 - loop.index0 %}{% break %}
{%- endif %}
{%- endfor %}
{%- for message in messages %}
{%- if message.role == 'system' %}{% continue %}{% endif %}
{%- if message.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}
{%- if message.reasoning_content and loop.index0 > ns.last_query %}
{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}
{%- endif %}
{% generation %}{{- message.content }}{% endgeneration %}
{%- for call in message.tool_calls | default([]) %}
{{- '\\n<tool_call>\\n' + (dict(name=call.function.name, arguments=call.function.arguments) | tojson)
    + '\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}
{{- '<think>\\n\\n</think>\\n\\n' }}
{%- endif %}
{%- endif %}
"""
GPT_OSS = """{%- for message in messages %}<|start|>{{ message.role }}
{%- if message.thinking is defined %}<|channel|>analysis<|message|>{{ message.thinking }}<|end|>{% endif %}
<|message|>{{ message.content }}<|end|>{% endfor %}
{%- if add_generation_prompt %}<|start|>assistant{% endif %}"""
HOSTILE = {
    "class walk": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals": "{{ cycler.__init__.__globals__ }}",
    "append": "{% set x = messages.append(1) %}{{ messages }}",
    "item write": "{% set x = messages[0].update({'role': 'system'}) %}",
    "namespace internals": "{% set ns = namespace(_Namespace__attrs=1) %}",
    "namespace write": "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
}
RUNAWAY = "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}"
LEAKS = ("<class", "<function", "<module", "object at 0x", "__builtins__")


@pytest.fixture(scope="module")
def tokenizer(loaded_model: LoadedModel):
    return loaded_model.tokenizer


def hf_render(tokenizer, template: str | None, messages, tools=None, **variables) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, chat_template=template,
                                         tokenize=False, **variables)


# Hostile templates


@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE.keys())
def test_sandbox_violations_raise_at_once_and_leak_nothing(source: str):
    messages = copy.deepcopy(HI)
    start = time.monotonic()
    with pytest.raises(UnsafeTemplateError) as caught:
        ChatTemplate(source).render(messages)
    assert time.monotonic() - start < 1
    assert "line 1: " in str(caught.value) and not any(leak in str(caught.value) for leak in LEAKS)
    assert messages == HI


def test_unsafe_attributes_read_as_empty_and_the_dict_global_has_no_unbound_methods():
    messages = copy.deepcopy(HI)
    assert ChatTemplate("[{{ ''.__class__ }}{{ lipsum.__globals__ }}]").render(messages) == "[]"
    with pytest.raises(ChatTemplateError, match="no attribute 'update'"):
        ChatTemplate("{{ dict.update(messages[0], {'role': 'system'}) }}").render(messages)
    assert messages == HI


def test_a_runaway_template_stops_at_the_bound():
    start = time.monotonic()
    with pytest.raises(UnsafeTemplateError, match="wrote more than 100,000 characters"):
        ChatTemplate(RUNAWAY, max_chars=100_000).render(HI)
    assert time.monotonic() - start < 2
    assert ChatTemplate("{{ 'x' * 10 }}", max_chars=10).render(HI) == "x" * 10
    with pytest.raises(UnsafeTemplateError):
        ChatTemplate("{{ 'x' * 10 }}", max_chars=9).render(HI)


@pytest.mark.parametrize(("source", "message"), [
    ("{% for m in messages %}\n{{ m.content }", "line 2: unexpected '}'"),
    ("a\n{{ 1 + messages[0].content }}", "line 2: TypeError: unsupported operand"),
    ("{{ raise_exception('roles must alternate') }}", "line 1: roles must alternate"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recurses too deeply"),
    ("{{ range(200000) | length }}", "Range too big"),
])
def test_failures_name_the_line(source: str, message: str):
    with pytest.raises(ChatTemplateError) as caught:
        ChatTemplate(source).render(HI)
    assert message in str(caught.value) and not isinstance(caught.value, UnsafeTemplateError)


# The same text as transformers


@pytest.mark.parametrize("conversation", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
@pytest.mark.parametrize("template", ["default", LLAMA3, QWEN3, GPT_OSS],
                         ids=["default", "llama3", "qwen3", "gpt-oss"])
def test_renders_as_transformers(tokenizer, template: str, conversation: list[dict]):
    source = tokenizer.chat_template if template == "default" else template
    ours = ChatTemplate(source, tokenizer.special_tokens_map)
    for tools in (None, TOOLS):
        for add_generation_prompt in (True, False):
            for variables in VARIABLES:
                try:
                    expected = hf_render(tokenizer, source, conversation, tools,
                                         add_generation_prompt=add_generation_prompt, **variables)
                except Exception:  # e.g. the default template on a call without content
                    expected = ChatTemplateError
                try:
                    text = ours.render(conversation, tools, add_generation_prompt, **variables)
                except ChatTemplateError:
                    text = ChatTemplateError
                assert text == expected


def test_named_templates_are_picked_as_transformers_picks_them(tokenizer):
    named = copy.deepcopy(tokenizer)
    named.chat_template = {"default": QWEN3, "tool_use": LLAMA3}
    conversation = CONVERSATIONS["tool call"]
    for tools in (None, TOOLS):
        text = ChatTemplate.of(named).render(conversation, tools, add_generation_prompt=True)
        assert text == hf_render(named, None, conversation, tools, add_generation_prompt=True)
        assert ("<|start_header_id|>" in text) == (tools is not None)
    named.chat_template = {"tool_use": LLAMA3}
    with pytest.raises(ChatTemplateError, match="is named 'default'"):
        ChatTemplate.of(named).render(conversation)
    with pytest.raises(ValueError):
        hf_render(named, None, conversation)


def test_the_generation_tag_renders_its_body_in_its_own_scope(tokenizer):
    source = "{% generation %}{% set x = 1 %}[{{ messages[0].content }}]{% endgeneration %}{{ x }}"
    assert ChatTemplate(source).render(HI) == hf_render(tokenizer, source, HI) == "[Hi]"


# At load


def folder_with(tmp_path: Path, tokenizer, template: str | None = None) -> Path:
    folder = write_tiny_llama_folder(tmp_path / "model", tokenizer)
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    return folder


def edit_tokenizer_config(folder: Path, **values) -> None:
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


@pytest.mark.parametrize(("template", "message"), [
    ("{% for m in messages %}\n{{ m.content }", "line 2: unexpected '}'"),
    (HOSTILE["globals"], "line 1: access to attribute '__init__' of 'type' object is unsafe"),
    (RUNAWAY, "it wrote more than 1,048,576 characters"),
    ("{% for m in messages %}{% endfor %}\n", "it writes nothing"),
    ("{{ raise_exception('this template is for another server') }}",
     "line 1: this template is for another server"),
], ids=["syntax", "sandbox", "runaway", "empty", "fails on every probe"])
def test_a_broken_template_is_refused_at_load(tmp_path: Path, tokenizer, template: str, message: str):
    folder = folder_with(tmp_path, tokenizer, template)
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(folder))
    origin = folder / "chat_template.jinja"
    assert str(caught.value).startswith(f"the chat template in {origin} is unusable: ")
    assert message in str(caught.value)


def test_a_template_refusing_some_conversations_loads(tmp_path: Path, tokenizer):
    # Gemma's: no system role; the probe without one renders.
    no_system = ("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}"
                 "{% endif %}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    assert load_model(str(folder_with(tmp_path, tokenizer, no_system))).chat_template == no_system


def test_a_broken_named_template_is_named(tmp_path: Path, tokenizer):
    named = copy.deepcopy(tokenizer)
    named.chat_template = {"default": QWEN3, "tool_use": "{{ tools[0].__class__.__mro__ }}"}
    folder = folder_with(tmp_path, named)
    with pytest.raises(ModelLoadError, match=r"additional_chat_templates/tool_use.jinja is unusable: "
                                             r"template 'tool_use', line 1: access to attribute"):
        load_model(str(folder))


def test_a_model_without_a_template_loads_as_before(tmp_path: Path, tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    assert load_model(str(folder_with(tmp_path, bare))).chat_template is None


@pytest.mark.parametrize(("write", "message"), [
    (lambda path: path.write_text('{"chat_template": "x",'), "tokenizer_config.json is not valid JSON: "),
    (lambda path: path.write_text("[1, 2]"), "tokenizer_config.json holds a JSON list, not an object"),
    (lambda path: edit_tokenizer_config(path.parent, chat_template=5),
     "tokenizer_config.json is unusable: a chat template is text or named texts, not int"),
    (lambda path: edit_tokenizer_config(path.parent, chat_template=[1]),
     "cannot load the tokenizer in .*: TypeError: "),
    (lambda path: edit_tokenizer_config(path.parent, eos_token=5),
     "cannot load the tokenizer in .*: TypeError: Special token eos_token has to be"),
], ids=["invalid JSON", "not an object", "template a number", "template list of numbers", "eos a number"])
def test_a_malformed_tokenizer_config_is_refused_clearly(tmp_path: Path, tokenizer, write, message: str):
    folder = folder_with(tmp_path, tokenizer)
    (folder / "chat_template.jinja").unlink()
    write(folder / "tokenizer_config.json")
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(folder))


def test_serve_with_a_broken_template_prints_one_line_and_exits_nonzero(tmp_path: Path, tokenizer):
    folder = folder_with(tmp_path, tokenizer, "{% for m in messages %}\n{{ m.content }")
    result = subprocess.run([str(PAGEDMLX), "serve", "--model", str(folder)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0] == (f"pagedmlx: error: cannot load model {folder}: the chat template in "
                        f"{folder / 'chat_template.jinja'} is unusable: line 2: unexpected '}}'")
