"""Families labelled as vLLM labels its own: model_name and engine (one engine per server: "0")."""

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LABELS = ("model_name", "engine")
ENGINE_INDEX = "0"


class Families:
    """Makes the families of one registry and binds them to this server's label values."""

    def __init__(self, registry: CollectorRegistry, model_name: str) -> None:
        self.registry = registry
        self.values = (model_name, ENGINE_INDEX)

    def histogram(self, name: str, doc: str, buckets: Sequence[float]) -> Any:
        return Histogram(name, doc, LABELS, buckets=buckets, registry=self.registry).labels(*self.values)

    def counter(self, name: str, doc: str) -> Any:
        return Counter(name, doc, LABELS, registry=self.registry).labels(*self.values)

    def gauge_function(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read(), called at scrape time."""
        Gauge(name, doc, LABELS, registry=self.registry).labels(*self.values).set_function(read)

    def histograms_by(self, name: str, doc: str, buckets: Sequence[float], label: str,
                      values: Sequence[str]) -> dict[str, Any]:
        """One child per value of `label`, made now so that every series exists from the start."""
        family = Histogram(name, doc, (*LABELS, label), buckets=buckets, registry=self.registry)
        return {value: family.labels(*self.values, value) for value in values}

    def counters_by(self, name: str, doc: str, label: str, values: Sequence[str]) -> dict[str, Any]:
        family = Counter(name, doc, (*LABELS, label), registry=self.registry)
        return {value: family.labels(*self.values, value) for value in values}
