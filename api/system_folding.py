"""Fold system messages into the one leading system message most chat templates allow."""

from typing import Any


def fold_system_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge the leading system messages into one (joined by a blank line); append each later one
    to the user message just before it, or make it a user message when none is.

    Many templates raise on a system message past the first (Claude Code sends one after the first
    user turn). A later system message only ever changes the message just before it, so folding
    a conversation and folding it with more turns appended agree on every earlier message: the
    prompt's prefix, and so the prefix cache, survives. Empty system messages are dropped.
    The input is not modified.
    """
    folded: list[dict[str, Any]] = []
    for message in messages:
        text = message.get("content") or ""
        if message["role"] != "system":
            folded.append(message)
        elif not text:
            continue
        elif not folded:
            folded.append({**message, "content": text})
        elif len(folded) == 1 and folded[0]["role"] == "system" or folded[-1]["role"] == "user":
            folded[-1] = {**folded[-1], "content": f"{folded[-1]['content']}\n\n{text}"}
        else:
            folded.append({"role": "user", "content": text})
    return folded
