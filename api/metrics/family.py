"""Families labelled as vLLM labels its own: model_name and engine (one engine per model: "0").

A server of several models has one family per metric name and one child per model: `Families`
binds one model's label values, and its `for_model` copies share the families made so far."""

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LABELS = ("model_name", "engine")
ENGINE_INDEX = "0"


class Families:
    """Makes (or finds) the families of one registry and binds them to one model's label values."""

    def __init__(self, registry: CollectorRegistry, model_name: str,
                 made: dict[str, Any] | None = None) -> None:
        self.registry = registry
        self.values = (model_name, ENGINE_INDEX)
        self._made = {} if made is None else made

    def for_model(self, model_name: str) -> "Families":
        return Families(self.registry, model_name, self._made)

    def family(self, kind: type, name: str, doc: str, extra_labels: Sequence[str] = (),
               **options: Any) -> Any:
        """The family `name` with LABELS + extra_labels, made on first use."""
        if name not in self._made:
            self._made[name] = kind(name, doc, (*LABELS, *extra_labels), registry=self.registry,
                                    **options)
        return self._made[name]

    def histogram(self, name: str, doc: str, buckets: Sequence[float]) -> Any:
        return self.family(Histogram, name, doc, buckets=buckets).labels(*self.values)

    def counter(self, name: str, doc: str) -> Any:
        return self.family(Counter, name, doc).labels(*self.values)

    def gauge_function(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read(), called at scrape time."""
        self.family(Gauge, name, doc).labels(*self.values).set_function(read)

    def histograms_by(self, name: str, doc: str, buckets: Sequence[float], label: str,
                      values: Sequence[str]) -> dict[str, Any]:
        """One child per value of `label`, made now so that every series exists from the start."""
        family = self.family(Histogram, name, doc, (label,), buckets=buckets)
        return {value: family.labels(*self.values, value) for value in values}

    def counters_by(self, name: str, doc: str, label: str, values: Sequence[str]) -> dict[str, Any]:
        family = self.family(Counter, name, doc, (label,))
        return {value: family.labels(*self.values, value) for value in values}
