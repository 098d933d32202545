"""Checks shared by vLLM's panels and ours: each takes the observed run and the samples of a
panel's queries, in the panel's order."""

from collections.abc import Callable

import pytest
from histogram_math import histogram_quantile
from observed import Observed, buckets, by, direct, only, rate_of
from prometheus_server import Sample

Check = Callable[[Observed, list[list[Sample]]], None]


def latency(family: str, quantiles: tuple[float, ...], count: Callable[[Observed], None]) -> Check:
    """Quantile panels then a mean: each as Prometheus must compute it from the exported buckets."""
    def check(observed: Observed, results: list[list[Sample]]) -> None:
        count(observed)
        exported = buckets(observed, family)
        values = [only(samples) for samples in results[:len(quantiles)]]
        for q, value in zip(quantiles, values):
            assert value == pytest.approx(histogram_quantile(q, exported), rel=1e-9), (family, q)
        assert sorted(values) == [values[quantiles.index(q)] for q in sorted(quantiles)]
        mean = direct(observed, f"{family}_sum") / direct(observed, f"{family}_count")
        assert only(results[-1]) == pytest.approx(mean, rel=1e-9)
    return check


def one_per_request(family: str) -> Callable[[Observed], None]:
    def count(observed: Observed) -> None:
        assert direct(observed, f"{family}_count") == observed.expected.num_requests
    return count


def streamed_gaps(family: str) -> Callable[[Observed], None]:
    """A gap per token after each request's first: all of those that ran to max_tokens, at least."""
    def count(observed: Observed) -> None:
        expected = observed.expected
        gaps = direct(observed, f"{family}_count")
        assert gaps >= expected.length_output_tokens - expected.finished["length"]
        assert gaps <= direct(observed, "vllm:generation_tokens_total") - expected.num_requests
    return count


def check_token_throughput(observed: Observed, results: list[list[Sample]]) -> None:
    prompt, generation = (rate_of(observed, samples) for samples in results)
    expected = observed.expected
    assert prompt == pytest.approx(sum(expected.prompt_tokens), rel=1e-9)
    assert generation == pytest.approx(direct(observed, "vllm:generation_tokens_total"), rel=1e-9)
    assert generation == pytest.approx(direct(observed, "vllm:request_generation_tokens_sum"))
    # The stop string's, the tool call's and the hung-up request's (3 streamed) come on top.
    assert generation >= expected.length_output_tokens + 5


def check_finish_reasons(observed: Observed, results: list[list[Sample]]) -> None:
    assert by(results[0], "finished_reason") == {
        reason: float(observed.expected.finished[reason])
        for reason in ("stop", "length", "abort", "error")}
