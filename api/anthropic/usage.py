"""Usage with Anthropic's meaning: input + cache read + cache creation = the prompt.

cache_read_input_tokens are prefix-cache hits; cache_creation_input_tokens the prompt tokens this
request wrote into full (shareable) KV blocks; input_tokens the rest (the partial last block).
"""

from api.generation import Usage


def anthropic_usage(usage: Usage, block_size: int, token_scale: float = 1.0,
                    output: bool = True) -> dict:
    """token_scale: --claude-context-scale's factor for the prompt figures."""
    prompt, cached = usage.prompt_tokens, usage.cached_tokens
    created = max(prompt // block_size * block_size - cached, 0)
    figures = {
        "input_tokens": prompt - cached - created,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": cached,
    }
    scaled = {name: round(value * token_scale) for name, value in figures.items()}
    return {**scaled, "output_tokens": usage.completion_tokens if output else 0}
