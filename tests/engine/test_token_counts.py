"""TokenCounts folded in chunk by chunk against a recount of the whole history."""

from collections import Counter

import numpy as np

from engine.token_counts import TokenCounts


def test_counts_match_a_recount_as_the_history_grows_in_chunks():
    rng = np.random.default_rng(0)
    prompt_len = 300
    history = rng.integers(0, 400, prompt_len).tolist()
    counts = TokenCounts(prompt_len)
    while len(history) < 2000:
        counts.update(history)
        tokens, occurrences = counts.tokens.tolist(), counts.output_counts.tolist()
        assert len(set(tokens)) == len(tokens)
        assert set(tokens) == set(history)
        output = Counter(history[prompt_len:])
        assert dict(zip(tokens, occurrences)) == {t: output[t] for t in tokens}
        history += rng.integers(0, 1000, int(rng.integers(1, 60))).tolist()  # new tokens past every capacity
