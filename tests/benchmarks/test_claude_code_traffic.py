"""The Claude-Code-shaped bodies at a prompt scale: sizes follow the scale, the shape stays. No server."""

import json

import pytest

from benchmarks import claude_code_traffic as cc


def test_stretched_cuts_at_a_word_or_repeats_the_text():
    assert cc.stretched("one two three four", 9) == "one two"
    assert cc.stretched("one two", 15) == "one two one two"
    assert cc.stretched("one two", 15, "\n") == "one two\none two"
    assert cc.stretched("alphabet soup", 0) == "alphabet"


def test_no_scale_keeps_the_texts_as_written():
    assert cc.tools() == cc.tools(scale=None)
    assert [tool["description"] for tool in cc.tools()[:len(cc.CORE_TOOLS)]] == \
        [tool["description"] for tool in cc.CORE_TOOLS]


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_the_tools_json_follows_the_scale(scale):
    size = len(json.dumps(cc.tools(scale=scale)[:len(cc.CORE_TOOLS)]))
    assert size == pytest.approx(scale * cc.CLI_TOOLS_JSON_CHARS, rel=0.05)


def test_a_small_scale_keeps_every_schema():
    small, full = cc.tools(scale=0.01), cc.tools()
    assert [tool["input_schema"] for tool in small] == [tool["input_schema"] for tool in full]
    assert all(tool["description"] for tool in small)


@pytest.mark.parametrize("scale", [0.25, 1.0])
def test_system_and_reminder_follow_the_scale_and_keep_the_memory_path(scale):
    blocks = cc.system(3, "/work/x", scale)
    assert blocks[0]["text"].startswith("x-anthropic-billing-header:")
    assert blocks[1]["text"] == cc.IDENTITY
    instructions = blocks[2]["text"]
    assert cc.memory_path("/work/x") in instructions
    assert len(instructions) == pytest.approx(scale * cc.CLI_INSTRUCTIONS_CHARS, rel=0.1)
    reminder = cc.first_user_turn("Fix it.", scale)["content"][0]["text"]
    assert reminder.startswith("<system-reminder>") and reminder.endswith("</system-reminder>")
    assert len(reminder) == pytest.approx(scale * cc.CLI_REMINDER_CHARS, rel=0.05)


def test_the_billing_line_changes_with_the_request():
    assert cc.billing_line(1) != cc.billing_line(2)
