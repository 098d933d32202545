"""How stream gaps are split around a long prompt's prefill."""

import pytest

from benchmarks.prefill_interference import gap_stats, split_gaps


def test_gaps_are_split_by_the_long_prompts_arrival_and_first_token():
    # Every stream decodes from 0.2 s; the long prompt is sent at 1.0 s, its first token at 3.0 s.
    arrivals = [[0.0, 0.2, 0.5, 1.0, 2.5, 3.5, 3.7], [0.2, 0.9, 3.2]]
    before, during = split_gaps(arrivals, long_sent_s=1.0, long_first_token_s=3.0)
    assert sorted(before) == pytest.approx([0.3, 0.5, 0.7])  # not 0.0 -> 0.2: the second stream's prefill
    # 1.0 -> 2.5, 2.5 -> 3.5 and 0.9 -> 3.2 overlap the prefill; 3.5 -> 3.7 comes after it.
    assert sorted(during) == pytest.approx([1.0, 1.5, 2.3])


def test_gap_stats_are_in_milliseconds():
    stats = gap_stats([0.1, 0.2, 0.3])
    assert stats["count"] == 3 and stats["max_ms"] == 300
    assert round(stats["p50_ms"]) == 200
