"""The disk tier through real `pagedmlx serve` processes: blocks written by one server are read back by
the next one started on the same directory, and the greedy answer equals the cold one (compared as
vLLM's tests do); two servers on one directory both work."""

import concurrent.futures
import re
from pathlib import Path

import openai
import pytest

from tests.live_server import LiveServer, start_server, wait_for
from tests.token_compare import assert_tokens_match

BLOCK = 16
SYSTEM = " ".join(f"Rule {i}: answer item {i} of the inventory in plain words, briefly." for i in range(40))


def disk_flags(directory: Path) -> list[str]:
    return ["--disk-cache-dir", str(directory), "--disk-cache-gb", "1"]


def greedy_answer(server: LiveServer, question: str) -> tuple[list[str], list[list[tuple[str, float]]], int, int]:
    """(tokens, top-2 of each, prompt tokens, cached tokens) of a greedy chat answer."""
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused")
    response = client.chat.completions.create(
        model="default", temperature=0, max_tokens=16, logprobs=True, top_logprobs=2,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
    entries = response.choices[0].logprobs.content
    top2 = [[(top.token, top.logprob) for top in entry.top_logprobs] for entry in entries]
    usage = response.usage
    return [entry.token for entry in entries], top2, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens


def wait_for_writes(server: LiveServer, num_blocks: int) -> None:
    wait_for(lambda: server.metric("pagedmlx:disk_cache_blocks") >= num_blocks
             and server.metric("pagedmlx:disk_cache_write_queue_depth") == 0, what="the disk writes")


def test_a_restarted_server_reads_the_prefix_from_disk_and_answers_as_cold(tmp_path: Path):
    directory = tmp_path / "kv"
    first = start_server(tmp_path, *disk_flags(directory))
    try:
        tokens, top2, prompt_tokens, cached = greedy_answer(first, "What is item 3?")
        assert cached == 0
        hittable = (prompt_tokens - 1) // BLOCK
        wait_for_writes(first, hittable)
        assert first.metric("pagedmlx:disk_cache_written_bytes_total") > 0
    finally:
        assert first.stop() == 0

    restarted = start_server(tmp_path, *disk_flags(directory))
    try:
        line = re.search(r"disk: +(\S+): (\d+) blocks", restarted.log())
        assert line and Path(line[1]).parent == directory and int(line[2]) >= hittable
        hit_tokens, hit_top2, _, hit_cached = greedy_answer(restarted, "What is item 3?")
        assert hit_cached == hittable * BLOCK
        assert restarted.metric("pagedmlx:disk_cache_hits_total") == hittable
        assert restarted.metric("pagedmlx:disk_cache_read_bytes_total") > 0
        assert_tokens_match(tokens, hit_tokens, top2, hit_top2)

        # A second server on the same directory, at the same time: both answer, and it hits too.
        other = start_server(tmp_path, *disk_flags(directory))
        try:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                jobs = [pool.submit(greedy_answer, server, "What is item 7?") for server in (restarted, other)]
                answers = [job.result() for job in jobs]
            assert answers[0][2] == answers[1][2]
            assert_tokens_match(answers[0][0], answers[1][0], answers[0][1], answers[1][1])
            assert all(cached >= hittable // 2 * BLOCK for *_, cached in answers)  # the shared system text
            assert other.metric("pagedmlx:disk_cache_hits_total") > 0
        finally:
            assert other.stop() == 0
    finally:
        assert restarted.stop() == 0


def test_a_disk_cache_dir_that_cannot_be_made_is_a_one_line_startup_error(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(RuntimeError) as failure:
        start_server(tmp_path, "--disk-cache-dir", str(blocker / "kv"), "--disk-cache-gb", "1")
    assert "exited with 1" in str(failure.value)
    assert f"pagedmlx: error: --disk-cache-dir {blocker / 'kv'}:" in str(failure.value)
