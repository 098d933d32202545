"""A soak's result: the requests by kind, the server's memory and its figures from /health and /metrics;
the checks a passing soak meets, and the table it prints."""

from dataclasses import asdict, dataclass

from benchmarks.load_generator import percentile
from benchmarks.soak_client import ABORTED, EXPECTED_4XX, FAILED, OK, Outcome
from benchmarks.soak_metrics import ServerFigures
from benchmarks.soak_rss import Growth, MemorySample, growth
from benchmarks.soak_workload import KINDS
from benchmarks.summary import fmt, table

MAX_RSS_GROWTH = 0.10
ERRORS_SHOWN = 10
STATUSES = (OK, ABORTED, EXPECTED_4XX, FAILED)


@dataclass
class SoakResult:
    duration_s: float
    concurrency: int
    wall_s: float  # load and drain
    outcomes: list[Outcome]
    memory: list[MemorySample]
    used_blocks_at_end: int | None  # None: the server never went idle
    server: ServerFigures

    @property
    def rss(self) -> Growth:
        return growth(self.memory, self.duration_s, lambda sample: sample.rss)

    @property
    def kv_pool(self) -> Growth:
        return growth(self.memory, self.duration_s, lambda sample: sample.kv_pool)

    @property
    def rss_outside_pool(self) -> Growth:
        """What the leak check is on (benchmarks/soak_rss.py)."""
        return growth(self.memory, self.duration_s, lambda sample: sample.outside_pool)

    def count(self, status: str, kind: str | None = None) -> int:
        return sum(1 for o in self.outcomes if o.status == status and (kind is None or o.kind == kind))

    def errors(self) -> list[str]:
        return [f"#{o.number} {o.kind}: {o.error}" for o in self.outcomes if o.status == FAILED]

    def failures(self) -> list[str]:
        """Every check the run failed; empty when it passed."""
        failed = []
        if errors := self.errors():
            failed.append(f"{len(errors)} requests failed; first: {errors[0]}")
        if self.server.http_5xx:
            failed.append(f"{self.server.http_5xx} responses with a 5xx status")
        rss_growth = self.rss_outside_pool.ratio
        if rss_growth is None:
            failed.append("RSS not measured")
        elif rss_growth >= MAX_RSS_GROWTH:
            failed.append(f"RSS outside the KV pool grew {rss_growth:.1%} after warm-up "
                          f"(limit {MAX_RSS_GROWTH:.0%})")
        if self.used_blocks_at_end != 0:
            failed.append(f"KV blocks still used when idle: {self.used_blocks_at_end} (None: never idle)")
        # So that a soak that sent nothing of some sort cannot pass.
        failed += [f"no {kind.name} request completed" for kind in KINDS if not self.count(OK, kind.name)]
        failed += [f"no request was {status}" for status in (ABORTED, EXPECTED_4XX) if not self.count(status)]
        return failed

    def kind_rows(self) -> list[list[str]]:
        rows = [self._row(kind.name, [o for o in self.outcomes if o.kind == kind.name]) for kind in KINDS]
        return rows + [self._row("all", self.outcomes)]

    def _row(self, name: str, outcomes: list[Outcome]) -> list[str]:
        done = [o for o in outcomes if o.status == OK]
        latencies_ms = [o.latency_s * 1000 for o in done]
        counts = [str(sum(1 for o in outcomes if o.status == status)) for status in STATUSES]
        return [name, str(len(outcomes)), *counts, fmt(percentile(latencies_ms, 50), 0),
                fmt(percentile(latencies_ms, 99), 0), fmt(sum(o.output_tokens for o in done) / self.duration_s)]

    def summary(self) -> dict:
        """The figures, for --json."""
        memory = {name: {"start": figures.start, "after_warm_up": figures.after_warm_up, "end": figures.end,
                         "growth": figures.ratio}
                  for name, figures in (("rss", self.rss), ("kv_pool", self.kv_pool),
                                        ("rss_outside_pool", self.rss_outside_pool))}
        return {"duration_s": self.duration_s, "concurrency": self.concurrency, "wall_s": self.wall_s,
                "requests": {row[0]: dict(zip(("sent", *STATUSES, "p50_ms", "p99_ms", "output_tok_s"), row[1:]))
                             for row in self.kind_rows()},
                "memory_bytes": memory, "memory_samples": [asdict(sample) for sample in self.memory],
                "used_blocks_at_end": self.used_blocks_at_end, "server": asdict(self.server),
                "errors": self.errors(), "failures": self.failures()}


def _memory_row(name: str, figures: Growth) -> list[str]:
    mib = [("-" if value is None else f"{value / 2**20:.0f} MiB")
           for value in (figures.start, figures.after_warm_up, figures.end)]
    return [name, " / ".join(mib), "-" if figures.ratio is None else f"{figures.ratio:+.1%}"]


def _ms(seconds: float | None) -> str:
    return fmt(None if seconds is None else seconds * 1000)


def _counts(values: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.0f}" for key, value in sorted(values.items()) if value) or "-"


def format_report(result: SoakResult) -> str:
    server = result.server
    lag = "-" if server.event_loop_lag_s is None else \
        f"mean {_ms(server.event_loop_lag_s)} ms, p99 <= {_ms(server.event_loop_lag_p99_s)} ms"
    hit_rate = "-" if server.prefix_cache_hit_rate is None else f"{server.prefix_cache_hit_rate:.0%}"
    lines = [f"Soak: {result.duration_s:.0f} s at concurrency {result.concurrency} ({result.wall_s:.0f} s with "
             "the drain)", ""]
    lines += table(["kind", "sent", "ok", "aborted", "expected 4xx", "failed", "p50 (ms)", "p99 (ms)",
                    "output tok/s"], result.kind_rows())
    lines += ["", *table(["memory", "start / after warm-up / end", "growth after warm-up"], [
        _memory_row("RSS", result.rss), _memory_row("KV pool (grows on demand to its budget)", result.kv_pool),
        _memory_row(f"RSS outside the KV pool (limit {MAX_RSS_GROWTH:.0%})", result.rss_outside_pool)])]
    lines += ["", *table(["server", "value"], [
        ["KV blocks used when idle", str(result.used_blocks_at_end)],
        ["HTTP 5xx", str(server.http_5xx)],
        ["HTTP responses by status", _counts(server.http_by_status)],
        ["requests finished by reason", _counts(server.success_by_reason)],
        ["aborts by cause", _counts(server.aborts_by_cause)],
        ["prefix-cache hit rate", hit_rate],
        ["event-loop lag", lag],
    ])]
    lines += ["", *(f"error: {error}" for error in result.errors()[:ERRORS_SHOWN])]
    failures = result.failures()
    lines += [f"FAILED: {failure}" for failure in failures] or ["PASSED: every check"]
    return "\n".join(lines)
