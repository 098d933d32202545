"""Token logprobs in the two OpenAI layouts: chat ("content" entries) and legacy completions."""

from typing import Any

from api.deltas import TokenLogprob
from api.openai.token_bytes import token_bytes


def token_text(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id], clean_up_tokenization_spaces=False)


def chat_logprobs(tokenizer: Any, entries: list[TokenLogprob]) -> dict[str, Any] | None:
    if not entries:
        return None
    raw_bytes = token_bytes(tokenizer)

    def item(token_id: int, logprob: float) -> dict[str, Any]:
        return {"token": token_text(tokenizer, token_id), "logprob": logprob,
                "bytes": list(raw_bytes(token_id))}

    return {"content": [
        {**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
        for e in entries
    ]}


def completion_logprobs(tokenizer: Any, entries: list[TokenLogprob],
                        text_offset: int) -> dict[str, Any] | None:
    """text_offset: where the first entry's token starts in the choice's text."""
    if not entries:
        return None
    tokens, offsets = [], []
    for entry in entries:
        text = token_text(tokenizer, entry.token_id)
        tokens.append(text)
        offsets.append(text_offset)
        text_offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{token_text(tokenizer, t): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }
