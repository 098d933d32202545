"""Per-step families, observed on the engine thread after each step (prometheus-client locks)."""

from api.metrics import buckets
from api.metrics.family import Families
from scheduler.step_report import StepReport

STEP_KINDS = ("decode", "prefill", "mixed")
PHASES = ("decode", "prefill")


class StepMetrics:
    def __init__(self, families: Families) -> None:
        self._iteration_tokens = families.histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
            buckets.ITERATION_TOKENS)
        self._duration = families.histograms_by(
            "pagedmlx:step_duration_seconds",
            "Engine step time (schedule excluded), by what the step ran.",
            buckets.STEP_S, "kind", STEP_KINDS)
        self._rows = families.histograms_by(
            "pagedmlx:step_rows", "Batch rows per step: one-token rows, and prompt chunks.",
            buckets.STEP_ROWS, "phase", PHASES)
        self._tokens = families.histograms_by(
            "pagedmlx:step_tokens", "Tokens per step, in one-token rows and in prompt chunks.",
            buckets.ITERATION_TOKENS, "phase", PHASES)
        self._runs = families.histogram(
            "pagedmlx:kv_cache_runs_per_seq",
            "Contiguous KV block runs of each sequence in each step (1 = one unbroken run).",
            buckets.RUNS_PER_SEQ)

    def observe(self, report: StepReport) -> None:
        shape = report.shape
        self._iteration_tokens.observe(shape.num_tokens)
        self._duration[report.kind].observe(report.duration_s)
        self._rows["decode"].observe(shape.decode_rows)
        self._rows["prefill"].observe(shape.chunks)
        self._tokens["decode"].observe(shape.decode_rows)
        self._tokens["prefill"].observe(shape.chunk_tokens)
        for runs in report.runs_per_seq:
            self._runs.observe(runs)
