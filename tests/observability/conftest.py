import time
from collections.abc import Iterator

import known_workload
import pytest
from live_server import start_server, wait_for
from observed import Observed
from prometheus_server import PROMETHEUS, Prometheus

WINDOW_MARGIN_S = 30
SCRAPE_INTERVAL_S = 1.0  # prometheus_server.CONFIG's


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus; .ci/run does)")
    work_dir = tmp_path_factory.mktemp("observability")
    server = start_server(work_dir, *known_workload.SERVER_FLAGS, "--disk-cache-dir",
                          str(work_dir / "kv"), "--disk-cache-gb", str(known_workload.DISK_CACHE_GB))
    prometheus = Prometheus(work_dir, server.port)
    try:
        first_scrape = _wait_for_scrape(prometheus, lambda: True)
        expected = known_workload.run(server)
        server.wait_until_idle()
        finished = float(expected.num_requests)
        wait_for(lambda: server.metric("vllm:e2e_request_latency_seconds_count") == finished,
                 what="every finish in /metrics")
        wait_for(lambda: server.metric("pagedmlx:disk_cache_write_queue_depth") == 0,
                 what="the disk tier's writes")
        direct = server.metrics()
        # Series born late in the run (an error's status) need two samples before rate() sees them.
        settled = time.time() + 2 * SCRAPE_INTERVAL_S
        at = _wait_for_scrape(prometheus, lambda: prometheus.value(
            "sum(vllm:e2e_request_latency_seconds_count)") == finished)
        while at < settled:
            time.sleep(SCRAPE_INTERVAL_S / 2)
            at = _wait_for_scrape(prometheus, lambda: True)
        window_s = round(at - first_scrape + WINDOW_MARGIN_S)
        yield Observed(server, prometheus, expected, at, f"{window_s}s", window_s, direct)
    finally:
        prometheus.stop()
        server.stop()


def _wait_for_scrape(prometheus: Prometheus, condition, timeout_s: float = 60) -> float:
    """The time of a successful scrape after which condition() holds."""
    def scraped() -> float | None:
        # A sample of the target's own, not `up`: Prometheus stamps that one a little later.
        samples = prometheus.query("timestamp(vllm:num_requests_running)")
        return samples[0].value if samples else None

    wait_for(lambda: scraped() is not None and condition(), timeout_s, "a scrape")
    return scraped()
