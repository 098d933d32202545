"""The streaming tool-call parsers: every format fed whole, a character at a time, in 1-3
character pieces and cut in two at every position must come out the same."""

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.deltas import Part, TextPart, ToolCallArguments, ToolCallEnd, ToolCallStart
from api.tool_calls import PARSERS, choose_parser_name, make_parser

TOOLS = frozenset({"get_weather", "get_time"})
MARKUP = ("<tool_call>", "</tool_call>", "<function=", "<parameter=", "[TOOL_CALLS]", "[ARGS]",
          "<|python_tag|>")

Call = tuple[str, object, bool]  # name, arguments (parsed when valid, else as sent), valid


def run(name: str, pieces: list[str], tools: frozenset[str] = TOOLS) -> list[Part]:
    parser = make_parser(name, tools)
    parts = [part for piece in pieces for part in parser.feed(piece)]
    return parts + parser.finish()


def outcome(parts: list[Part]) -> tuple[str, list[Call]]:
    """The answer's text and calls, checking that the parts come in order: a call's start, its
    fragments, its end, indices from 0, no text inside a call."""
    texts: list[str] = []
    calls: list[list] = []
    inside = False
    for part in parts:
        if isinstance(part, TextPart):
            assert not inside and part.text
            texts.append(part.text)
        elif isinstance(part, ToolCallStart):
            assert not inside and part.call_index == len(calls) and len(part.call_id) == 24
            calls.append([part.name, "", None])
            inside = True
        else:
            assert inside and part.call_index == len(calls) - 1
            if isinstance(part, ToolCallArguments):
                assert part.fragment
                calls[-1][1] += part.fragment
            else:
                calls[-1][2], inside = part.valid, False
    assert not inside
    return "".join(texts), [(name, json.loads(args) if valid else args, valid) for name, args, valid in calls]


def chunkings(text: str) -> list[list[str]]:
    """Whole, a character at a time, 1-3 character pieces, and cut in two at every position."""
    sizes = itertools.cycle((1, 3, 2))
    pieces, start = [], 0
    while start < len(text):
        size = next(sizes)
        pieces.append(text[start:start + size])
        start += size
    return [[text], list(text), pieces, *([text[:cut], text[cut:]] for cut in range(1, len(text)))]


def assert_parses(name: str, answer: str, text: str, calls: list[Call], tools: frozenset[str] = TOOLS) -> None:
    for pieces in chunkings(answer):
        assert outcome(run(name, pieces, tools)) == (text, calls), pieces
    if calls and all(valid for _, _, valid in calls):
        assert not any(marker in text for marker in MARKUP)


WEATHER = ("get_weather", {"city": "Paris", "unit": "celsius"}, True)
TIME = ("get_time", {"tz": "Europe/Paris", "note": 'a "quoted" } brace, and </tool_call>'}, True)
NO_ARGUMENTS = ("get_time", {}, True)
TIME_JSON = '{"tz": "Europe/Paris", "note": "a \\"quoted\\" } brace, and </tool_call>"}'

CALLS = {
    "hermes": [
        ('I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
         '"celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "parameters": ' + TIME_JSON
         + '}\n</tool_call>', "I will check.\n", [WEATHER, TIME]),
        ('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\nDone.', "Done.", [NO_ARGUMENTS]),
        ('<tool_call>\n{"name": "get_time"}\n</tool_call>', "", [NO_ARGUMENTS]),
        ('<tool_call>\n{"arguments": {"city": "Paris", "unit": "celsius"}, "name": "get_weather"}\n</tool_call>',
         "", [WEATHER]),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}\n</tool_call>',
         "", [WEATHER]),
        ('<tool_call>{"name": "get_time", "arguments": {}}<tool_call>{"name": "get_weather", "arguments": '
         '"{\\"city\\": \\"Paris\\", \\"unit\\": \\"celsius\\"}"}</tool_call>', "", [NO_ARGUMENTS, WEATHER]),
    ],
    "qwen3_coder": [
        ("Checking.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
         "<parameter=unit>\ncelsius\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n"
         "<parameter=days>\n3\n</parameter>\n<parameter=code>\nif a < b:\n    print([1, 2])\n</parameter>\n"
         "<parameter=tags>\n[\"x\", 2]\n</parameter>\n</function>\n</tool_call>",
         "Checking.\n",
         [WEATHER, ("get_time", {"days": 3, "code": "if a < b:\n    print([1, 2])", "tags": ["x", 2]}, True)]),
        ("<function=get_weather>\n<parameter=city>\nParis\n<parameter=unit>\ncelsius\n</function>", "", [WEATHER]),
        ("<tool_call>\n<function=get_time>\n</function>\n</tool_call>", "", [NO_ARGUMENTS]),
    ],
    "llama3_json": [
        ('{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}', "", [WEATHER]),
        ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}; '
         '{"name": "get_time", "parameters": {}}', "", [WEATHER, NO_ARGUMENTS]),
        ('\n{"name": "get_time", "arguments": {}};{"name": "get_weather", "parameters": {"city": "Paris", '
         '"unit": "celsius"}}', "", [NO_ARGUMENTS, WEATHER]),
        ('Let me look.<|python_tag|>{"name": "get_time", "parameters": {}};<|python_tag|>{"name": "get_time", '
         '"parameters": {}}', "Let me look.", [NO_ARGUMENTS, NO_ARGUMENTS]),
    ],
    "mistral": [
        ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, '
         '{"name": "get_time", "arguments": {}}]', "", [WEATHER, NO_ARGUMENTS]),
        ('Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}[TOOL_CALLS]get_time[ARGS]{}',
         "Sure.", [WEATHER, NO_ARGUMENTS]),
        ('[TOOL_CALLS] [{"name": "get_time", "arguments": {}, "id": "a1b2c3d4e"}]\nDone', "Done", [NO_ARGUMENTS]),
        ('[TOOL_CALLS][{"name": "get_time", "arguments": {}}][TOOL_CALLS][{"name": "get_weather", "arguments": '
         '{"city": "Paris", "unit": "celsius"}}]', "", [NO_ARGUMENTS, WEATHER]),
    ],
    "pythonic": [
        ('[get_weather(city="Paris", unit="celsius"), get_time()]', "", [WEATHER, NO_ARGUMENTS]),
        ("  [get_time(note='a, b) c', opts={\"a\": [1, (2)]}, flag=True, none=None, j=true, n=-1.5,)]\nDone.",
         "Done.", [("get_time", {"note": "a, b) c", "opts": {"a": [1, 2]}, "flag": True, "none": None,
                                 "j": True, "n": -1.5}, True)]),
    ],
}


@pytest.mark.parametrize("name, answer, text, calls",
                         [(name, *case) for name, cases in CALLS.items() for case in cases])
def test_calls_come_out_the_same_however_the_answer_is_cut(name, answer, text, calls):
    assert_parses(name, answer, text, calls)


BROKEN = {
    "hermes": [
        '<tool_call>\n{name: get_weather}\n</tool_call> ok',
        '<tool_call>\n{"name": "get_stock", "arguments": {}}\n</tool_call>',
        '<tool_call>oops</tool_call> and <tool_call>',
        '<tool_call>\n{"city": "Paris", "name": "get_time"}\n</tool_call>',
        '<tool_call>\n{"na',
    ],
    "qwen3_coder": [
        "<tool_call>\n<function=get_stock>\n<parameter=a>\n1\n</parameter>\n</function>\n</tool_call>",
        "<tool_call>\nhello</tool_call>",
        "<function=get weather>",
        "<tool_call>\n<function=get_wea",
    ],
    "llama3_json": ['<|python_tag|>brave_search.call(query="x")', '{"name": 12}', "x <|python_tag|>"],
    "mistral": ["[TOOL_CALLS]get_stock[ARGS]{}", '[TOOL_CALLS][{"name": "nope", "arguments": {}}]',
                "[TOOL_CALLS] hello there", "[TOOL_CALLS]"],
    "pythonic": ["[get_stock(a=1)]", "[1, 2, 3]", "[get_time", " [ ]"],
}


@pytest.mark.parametrize("name, answer", [(name, a) for name, answers in BROKEN.items() for a in answers])
def test_what_only_looks_like_a_call_comes_back_as_its_text(name, answer):
    assert_parses(name, answer, answer, [])


TRUNCATED = [
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa', '{"city": "Pa'),
    ("hermes", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {'city': 'Paris'}}\n</tool_call>",
     "{'city': 'Paris'}"),
    ("qwen3_coder",
     "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=unit>\ncel",
     '{"city": "Paris"'),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Pa', '{"city": "Pa'),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": ', '{"city": '),
    ("pythonic", '[get_weather(city="Paris", unit="cel', '{"city": "Paris"'),
]


@pytest.mark.parametrize("name, answer, arguments", TRUNCATED)
def test_a_call_cut_short_or_broken_after_its_name_ends_not_valid(name, answer, arguments):
    assert_parses(name, answer, "", [("get_weather", arguments, False)])


def test_a_pythonic_call_that_breaks_ends_there_and_the_rest_is_text():
    assert_parses("pythonic", "[get_weather(1)]", "1)]", [("get_weather", "", False)])


BARE = [
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    '\n```json\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n```\n',
    '```\n{"arguments": {"city": "Paris", "unit": "celsius"}, "name": "get_weather"}```',
    '  {"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}\n',
]


@pytest.mark.parametrize("name", PARSERS)
@pytest.mark.parametrize("answer", BARE)
def test_an_answer_that_is_one_bare_call_object_is_a_call_in_every_format(name, answer):
    assert_parses(name, answer, "", [WEATHER])


NOT_CALLS = [
    '{"a": 1} is JSON',
    '{"name": "get_stock", "arguments": {}}',
    '{"name": "get_weather", "arguments": {}} and then some text',
    '```json\n{"name": "get_weather", "arguments": {}}\n``` and text',
    '```python\nprint(1)\n```',
    '{"name": "get_weather", "argu',
    "Plain answer with <tags>, [brackets], <function> and f(x=1).",
    "It ends in a partial marker <tool_ca",
    "And this one [TOOL_CA",
    "",
]


@pytest.mark.parametrize("name, answer", [
    (name, answer) for name in PARSERS for answer in NOT_CALLS
    # in Llama 3's format an answer that starts with a call object is calls, whatever follows
    if not (name == "llama3_json" and answer.startswith('{"name": "get_weather"'))
])
def test_text_that_is_no_call_comes_back_unchanged(name, answer):
    assert_parses(name, answer, answer, [])


def test_llama3_takes_an_answer_starting_with_a_call_object_as_calls_then_text():
    assert_parses("llama3_json", '{"name": "get_time", "parameters": {}} and then text', "and then text",
                  [NO_ARGUMENTS])


def test_without_tools_any_name_is_taken_but_bare_json_stays_text():
    assert_parses("hermes", '<tool_call>{"name": "anything", "arguments": {}}</tool_call>', "",
                  [("anything", {}, True)], tools=frozenset())
    bare = '{"name": "anything", "arguments": {}}'
    assert_parses("hermes", bare, bare, [], tools=frozenset())


def test_each_call_has_its_own_id():
    parts = run("hermes", ['<tool_call>{"name": "get_time"}</tool_call>' * 3])
    ids = {part.call_id for part in parts if isinstance(part, ToolCallStart)}
    assert len(ids) == 3


def test_arguments_stream_as_they_are_generated():
    parser = make_parser("hermes", TOOLS)
    assert parser.feed("Hi <tool") == [TextPart("Hi ")]
    assert parser.feed('_call>\n{"name": "get_time", "arguments": {"tz": "UT') [1:] == [
        ToolCallArguments(0, '{"tz": "UT')]
    assert parser.feed('C"}}\n</tool_') == [ToolCallArguments(0, 'C"}'), ToolCallEnd(0, valid=True)]
    assert parser.feed("call>") == []


def test_an_unknown_parser_name_is_a_clear_error():
    with pytest.raises(ValueError, match="hermes"):
        make_parser("nope", TOOLS)


FRAGMENTS = [*MARKUP, "</parameter>", "</function>", "<think>", '{"name": ', '"get_weather"', '"get_time"',
             '"arguments": ', '"parameters": ', "{", "}", "[", "]", "(", ")", '"', "'", "\\", ",", ";", ":",
             "=", "get_time", "a", "1", "true", " ", "\n", "```", "json\n", ">", "<", "`"]
answers = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)


def chunked(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(c for c in cuts if c <= len(text)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(PARSERS)), answer=answers, cuts=st.lists(st.integers(0, 300), max_size=8))
def test_any_output_in_any_pieces_parses_as_it_does_whole(name, answer, cuts):
    assert outcome(run(name, chunked(answer, cuts))) == outcome(run(name, [answer]))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(PARSERS)), answer=answers, cuts=st.lists(st.integers(0, 300), max_size=8))
def test_without_an_offered_name_the_text_is_kept_to_the_letter(name, answer, cuts):
    assert outcome(run(name, chunked(answer, cuts), frozenset({"zzz"}))) == (answer, [])


TEMPLATES = [
    ("{% for tool in tools %}...<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>",
     ["<tool_call>"], "qwen3_coder"),
    ("# Tools\n<tools>\n{{ tool | tojson }}\n</tools>\nreturn a json object within <tool_call></tool_call> XML tags",
     [], "hermes"),
    ("{%- if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}", ["[TOOL_CALLS]", "[INST]"],
     "mistral"),
    ('{{- "<|python_tag|>" + tool_call.function.name + ".call(" }} Respond in the format {"name": function name, '
     '"parameters": dictionary of argument name and its value}', ["<|python_tag|>"], "llama3_json"),
    ("{% if tools %}you MUST put it in the format of [func_name1(params_name1=params_value1, "
     "params_name2=params_value2...), func_name2(params)]{% endif %}", ["<|python_tag|>"], "pythonic"),
    ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
     "{% endfor %}", ["<|im_start|>", "<|im_end|>"], "hermes"),
    (None, iter(["a", "<tool_call>"]), "hermes"),
    (None, iter(["a", "[TOOL_CALLS]"]), "mistral"),
]


@pytest.mark.parametrize("template, vocab, expected", TEMPLATES)
def test_the_parser_is_chosen_from_the_template_then_the_vocabulary(template, vocab, expected):
    assert choose_parser_name(template, vocab) == expected
