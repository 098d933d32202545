"""The disk tier's index (scheduler/disk_index.py): chain lookups, LRU by use, the size bound."""

import os
from pathlib import Path

from scheduler.disk_index import DiskIndex


def h(i: int) -> bytes:
    return bytes([i]) * 32


def test_the_chain_on_disk_is_counted_up_to_its_first_gap():
    index = DiskIndex(capacity_bytes=10_000)
    for i in (1, 2, 3, 5):
        index.add(h(i), 100)
    chain = [h(i) for i in range(7)]
    assert index.num_stored_after(chain, 1) == 3
    assert index.num_stored_after(chain, 0) == 0
    assert index.num_stored_after(chain, 5) == 1
    assert index.num_stored_after(chain, 7) == 0


def test_the_least_recently_used_blocks_go_first_and_the_bound_holds():
    index = DiskIndex(capacity_bytes=300)
    assert index.add(h(1), 100) == [] and index.add(h(2), 100) == [] and index.add(h(3), 100) == []
    index.touch([h(1)])  # read back: now the most recent
    assert index.add(h(4), 100) == [h(2)]
    assert index.add(h(5), 150) == [h(3), h(1)]
    assert index.size_bytes == 250 <= index.capacity_bytes
    assert h(4) in index and h(5) in index and len(index) == 2


def test_rewriting_a_block_does_not_count_it_twice():
    index = DiskIndex(capacity_bytes=1_000)
    index.add(h(1), 100)
    index.add(h(1), 120)
    assert index.size_bytes == 120 and len(index) == 1
    index.forget(h(1))
    index.forget(h(1))
    assert index.size_bytes == 0 and h(1) not in index


def test_a_scan_finds_the_files_oldest_first_and_trims_to_the_capacity(tmp_path: Path):
    for age, i in enumerate((3, 1, 2)):
        path = tmp_path / h(i).hex()[:2] / f"{h(i).hex()}.kv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
        os.utime(path, (1_000 + age, 1_000 + age))
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "not-hex.kv").write_bytes(b"x")  # not a block file's name: ignored
    index, evicted = DiskIndex.scan(tmp_path, capacity_bytes=250)
    assert evicted == [h(3)]
    assert len(index) == 2 and index.size_bytes == 200
