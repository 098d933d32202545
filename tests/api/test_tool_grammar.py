"""Tool-call and JSON grammars driving greedy generation of the real default model through the
ModelRunner: even the 135M model writes calls whose arguments validate under the tool's schema."""

import json
import re
from dataclasses import replace

import jsonschema
import numpy as np
import pytest

from api.tool_calls.base import CallSyntax
from api.tool_grammar import json_object_grammar, json_schema_grammar, tool_call_grammar
from engine.guided import GrammarCompiler, GrammarError
from engine.model_loader import LoadedModel
from engine.runner import ModelRunner
from engine.sampling_params import SamplingParams
from engine.step_types import SeqStep
from tests.prompts import chat_ids

BLOCK_SIZE = 16
GREEDY = SamplingParams(max_tokens=64, temperature=0.0)
HERMES = CallSyntax(open="<tool_call>\n", close="\n</tool_call>", arguments_key="arguments",
                    separator="\n", trigger="<tool_call>")


def function_tool(name: str, description: str, parameters: dict) -> dict:
    function = {"name": name, "description": description, "parameters": parameters}
    return {"type": "function", "function": function}


# Shaped like the schemas real clients send: $schema, nested objects, enums, formats llguidance
# does not know, anyOf, array bounds, $defs and $ref.
WEATHER = function_tool("get_weather", "Weather in a city", {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "location": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 1},
                           "country": {"type": "string", "format": "iso-3166"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 7},
                 "minItems": 1, "maxItems": 3},
    },
    "required": ["location", "units"],
    "additionalProperties": False,
})
SEARCH = function_tool("search_files", "Find files", {
    "type": "object",
    "properties": {
        "pattern": {"type": "string"},
        "path": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "options": {"$ref": "#/$defs/options"},
    },
    "required": ["pattern", "options"],
    "$defs": {"options": {
        "type": "object",
        "properties": {"case": {"type": "boolean"}, "limit": {"type": "integer", "exclusiveMinimum": 0}},
        "required": ["case"],
    }},
})
TOOLS = [WEATHER, SEARCH]
SYSTEM = "You may call these tools: " + json.dumps([tool["function"] for tool in TOOLS])
CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)


@pytest.fixture(scope="module")
def runner(loaded_model: LoadedModel) -> ModelRunner:
    return ModelRunner(loaded_model, num_blocks=64, block_size=BLOCK_SIZE)


@pytest.fixture(scope="module")
def compiler(loaded_model: LoadedModel) -> GrammarCompiler:
    return GrammarCompiler(loaded_model.tokenizer, loaded_model.eos_token_ids)


def generate(runner: ModelRunner, loaded: LoadedModel, prompt: list[int], sampling: SamplingParams,
             output: tuple[int, ...] = (), preempt_at: int | None = None) -> list[int]:
    """Greedy tokens after prompt + output, driven as the scheduler drives one sequence: a prefill,
    then decodes, until EOS or sampling.max_tokens. With `preempt_at` tokens out, the KV is dropped and
    everything recomputed in one step, as after a preemption."""
    out, computed = list(output), 0
    while len(out) - len(output) < sampling.max_tokens and not (out and out[-1] in loaded.eos_token_ids):
        if len(out) == preempt_at:
            computed = 0
        history = prompt + out
        blocks = list(range(-(-len(history) // BLOCK_SIZE)))
        seq = SeqStep(0, history[computed:], computed, blocks, sampling, True, len(prompt), history)
        out.append(runner.step([seq])[0].token_id)
        computed = len(history)
    return out[len(output):]


def answer(loaded: LoadedModel, tokens: list[int]) -> str:
    return loaded.tokenizer.decode([t for t in tokens if t not in loaded.eos_token_ids])


def parse_calls(text: str) -> list[dict]:
    return [json.loads(body) for body in CALL.findall(text)]


def assert_valid_call(call: dict, name: str | None = None) -> None:
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
    assert set(call) == {"name", "arguments"}
    assert call["name"] in schemas and (name is None or call["name"] == name)
    jsonschema.validate(call["arguments"], schemas[call["name"]])


def test_required_gives_one_valid_call_then_eos(runner, loaded_model, compiler):
    grammar = tool_call_grammar(TOOLS, HERMES, mode="required", parallel=False)
    constraint = compiler.compile(grammar)
    prompt = chat_ids(loaded_model, "What is the weather in Paris?", SYSTEM)
    tokens = generate(runner, loaded_model, prompt, replace(GREEDY, constraint=constraint))
    text = answer(loaded_model, tokens)
    assert tokens[-1] in loaded_model.eos_token_ids and constraint.finished
    assert CALL.fullmatch(text), text
    assert_valid_call(parse_calls(text)[0])


def test_named_calls_that_tool_and_survives_a_preemption(runner, loaded_model, compiler):
    grammar = tool_call_grammar(TOOLS, HERMES, mode="named", tool_name="search_files")
    prompt = chat_ids(loaded_model, "What is the weather in Paris?", SYSTEM)
    straight = generate(runner, loaded_model, prompt,
                        replace(GREEDY, constraint=compiler.compile(grammar)))
    preempted = generate(runner, loaded_model, prompt,
                         replace(GREEDY, constraint=compiler.compile(grammar)), preempt_at=12)
    assert preempted == straight
    (call,) = parse_calls(answer(loaded_model, straight))
    assert_valid_call(call, "search_files")


def test_json_schema_answer_validates(runner, loaded_model, compiler):
    schema = WEATHER["function"]["parameters"]
    prompt = chat_ids(loaded_model, "Describe the weather in Rome as JSON.")
    constraint = compiler.compile(json_schema_grammar(schema))
    tokens = generate(runner, loaded_model, prompt, replace(GREEDY, constraint=constraint))
    jsonschema.validate(json.loads(answer(loaded_model, tokens)), schema)


def test_auto_leaves_free_text_alone_until_the_trigger(runner, loaded_model, compiler):
    grammar = tool_call_grammar(TOOLS, HERMES, mode="auto")
    prompt = chat_ids(loaded_model, "What is the weather in Paris?", SYSTEM)
    free = generate(runner, loaded_model, prompt, replace(GREEDY, max_tokens=32))
    assert "<tool_call>" not in answer(loaded_model, free)
    lazy = generate(runner, loaded_model, prompt,
                    replace(GREEDY, max_tokens=32, constraint=compiler.compile(grammar)))
    assert lazy == free


def test_auto_constrains_the_call_once_the_trigger_is_written(runner, loaded_model, compiler):
    constraint = compiler.compile(tool_call_grammar(TOOLS, HERMES, mode="auto", parallel=False))
    prompt = chat_ids(loaded_model, "What is the weather in Paris?", SYSTEM)
    written = tuple(loaded_model.tokenizer.encode("Let me check. <tool_call>\n"))
    for token in written:
        constraint.accept(token)
    tokens = generate(runner, loaded_model, prompt, replace(GREEDY, constraint=constraint),
                      output=written)
    text = answer(loaded_model, list(written) + tokens)
    assert text.startswith("Let me check. <tool_call>\n{") and constraint.finished
    (call,) = parse_calls(text)
    assert_valid_call(call)


def test_required_accepts_parallel_calls_to_either_tool(compiler, loaded_model):
    constraint = compiler.compile(tool_call_grammar(TOOLS, HERMES, mode="required"))
    calls = [{"name": "search_files", "arguments": {"pattern": "*.py", "path": None, "options": {"case": True}}},
             {"name": "get_weather", "arguments": {"location": {"city": "Oslo"}, "units": "celsius"}}]
    text = "\n".join(f"<tool_call>\n{json.dumps(call)}\n</tool_call>" for call in calls)
    for token in loaded_model.tokenizer.encode(text):
        mask = constraint.next_token_bitmask()
        assert mask[token // 32] >> (token % 32) & 1, loaded_model.tokenizer.decode([token])
        constraint.accept(token)
    assert not constraint.finished  # a third call may follow, or EOS
    eos = loaded_model.eos_token_ids[0]
    assert constraint.next_token_bitmask()[eos // 32] >> (eos % 32) & 1


def accepts(constraint, loaded: LoadedModel, text: str) -> bool:
    for token in loaded.tokenizer.encode(text):
        if not constraint.next_token_bitmask()[token // 32] >> (token % 32) & 1:
            return False
        constraint.accept(token)
    return True


def test_arguments_the_tool_does_not_declare_are_refused_unless_its_schema_allows_them(
        compiler, loaded_model):
    undeclared = ('<tool_call>\n{"name": "search_files", "arguments": '
                  '{"pattern": "*.py", "options": {"case": true}, "extra": 1')
    strict = compiler.compile(tool_call_grammar([SEARCH], HERMES, mode="required"))
    assert not accepts(strict, loaded_model, undeclared)  # SEARCH says nothing: none allowed
    open_search = function_tool("search_files", "", {**SEARCH["function"]["parameters"],
                                                     "additionalProperties": True})
    lenient = compiler.compile(tool_call_grammar([open_search], HERMES, mode="required"))
    assert accepts(lenient, loaded_model, undeclared)


def test_json_object_grammar_and_bad_schemas(compiler, loaded_model):
    mask = compiler.compile(json_object_grammar()).next_token_bitmask()
    allowed = np.unpackbits(mask.view(np.uint8), bitorder="little").nonzero()[0].tolist()
    assert allowed and all(loaded_model.tokenizer.decode([t]).startswith("{") for t in allowed)
    with pytest.raises(GrammarError, match="objekt"):
        compiler.compile(json_schema_grammar({"type": "objekt"}))
    bad_tool = function_tool("f", "", {"type": "object", "minProperties": "x"})
    with pytest.raises(GrammarError):
        compiler.compile(tool_call_grammar([bad_tool], HERMES, mode="required"))


def test_grammar_builder_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="not among the tools"):
        tool_call_grammar(TOOLS, HERMES, mode="named", tool_name="nope")
    with pytest.raises(ValueError, match="mode"):
        tool_call_grammar(TOOLS, HERMES, mode="sometimes")
    with pytest.raises(ValueError, match="trigger"):
        tool_call_grammar(TOOLS, CallSyntax(open="", close=""), mode="auto")
