"""The state the observability tests read: a server after the known workload, the Prometheus
that scraped it, and helpers over both."""

from dataclasses import dataclass

import known_workload
from dashboard_queries import fill_variables
from live_server import LiveServer
from prometheus_server import Prometheus, Sample

MODEL = "SmolLM2-135M-Instruct"


@dataclass
class Observed:
    """A server after the known workload, the Prometheus that scraped it all along, and the time
    of its last scrape, at which every query is evaluated."""

    server: LiveServer
    prometheus: Prometheus
    expected: known_workload.Expected
    at: float      # Unix seconds of the last scrape
    window: str    # a range reaching back before the first scrape, for $__rate_interval
    window_s: int
    direct: dict   # the server's /metrics read right after that scrape

    def query(self, expr: str) -> list[Sample]:
        return self.prometheus.query(expr, self.at)

    def value(self, expr: str) -> float:
        return self.prometheus.value(expr, self.at)


def direct(observed: Observed, name: str, **labels: str) -> float:
    return observed.direct.get((name, tuple(sorted(labels.items()))), 0.0)


def buckets(observed: Observed, family: str, **labels: str) -> list[tuple[float, float]]:
    rows = [(float(dict(key)["le"]), value) for (name, key), value in observed.direct.items()
            if name == f"{family}_bucket"
            and {k: v for k, v in key if k != "le"} == labels]
    return sorted(rows)


def only(samples: list[Sample]) -> float:
    assert len(samples) == 1, samples
    return samples[0].value


def by(samples: list[Sample], label: str) -> dict[str, float]:
    return {sample.labels[label]: sample.value for sample in samples}


def evaluate(observed: Observed, exprs: list[str]) -> list[list[Sample]]:
    return [observed.query(fill_variables(expr, MODEL, observed.window)) for expr in exprs]


def rate_of(observed: Observed, samples: list[Sample]) -> float:
    """What a rate over the whole window counted."""
    return only(samples) * observed.window_s
