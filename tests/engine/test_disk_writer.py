"""The disk tier's write-behind thread (engine/disk_writer.py)."""

import threading
from pathlib import Path

import numpy as np

from engine.disk_writer import DiskWriter, PendingBlock
from engine.kv_block_file import read_block

KEY = "test-model:float16:bs4:v1"


def block(i: int) -> PendingBlock:
    return PendingBlock(bytes([i]) * 32, [i] * 4, np.full((2, 2, 1, 4, 8), i, np.float16))


def test_queued_blocks_are_written_and_reported(tmp_path: Path):
    written = []
    writer = DiskWriter(tmp_path, KEY, max_queue=8, on_written=lambda h, size: written.append((h, size)))
    for i in range(5):
        assert writer.put(block(i))
    writer.drain()
    assert [h for h, _ in written] == [bytes([i]) * 32 for i in range(5)]
    assert writer.bytes_written == sum(size for _, size in written) > 0
    stored = read_block(tmp_path, KEY, bytes([3]) * 32)
    assert stored.token_ids == (3, 3, 3, 3) and (stored.kv == 3).all()
    writer.close()


def test_a_full_queue_drops_the_block_instead_of_waiting(tmp_path: Path):
    gate = threading.Event()
    writer = DiskWriter(tmp_path, KEY, max_queue=1, on_written=lambda h, size: gate.wait())
    assert writer.put(block(0))  # taken by the thread, which then waits in on_written
    results = [writer.put(block(i)) for i in range(1, 6)]
    assert results.count(False) >= 4 and writer.dropped == results.count(False)
    gate.set()
    writer.drain()
    writer.close()


def test_a_write_that_fails_is_counted_and_the_thread_goes_on(tmp_path: Path):
    (tmp_path / "blocked").write_text("a file where the directory should be")
    writer = DiskWriter(tmp_path / "blocked", KEY, max_queue=4, on_written=lambda h, size: None)
    writer.put(block(1))
    writer.drain()
    assert writer.failed == 1
    writer.directory = tmp_path / "fine"
    writer.put(block(2))
    writer.drain()
    assert read_block(tmp_path / "fine", KEY, bytes([2]) * 32) is not None
    writer.close()
