"""The disk tier's block files (engine/kv_block_file.py): round trip, and nothing damaged or foreign served."""

import os
import time
from pathlib import Path

import numpy as np
import pytest

from engine.kv_block_file import block_path, read_block, remove_stale_temporaries, write_block

KEY = "SmolLM2-135M-Instruct:q4:float16:bs16:v1"
HASH = bytes(range(32))
TOKENS = list(range(100, 116))


def stored(tmp_path: Path, dtype=np.float16) -> np.ndarray:
    kv = np.random.default_rng(0).standard_normal((30, 2, 3, 16, 64)).astype(dtype)
    written = write_block(tmp_path, KEY, HASH, TOKENS, kv)
    assert written == block_path(tmp_path, HASH).stat().st_size
    return kv


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_a_block_reads_back_as_written(tmp_path: Path, dtype):
    kv = stored(tmp_path, dtype)
    block = read_block(tmp_path, KEY, HASH)
    assert block.token_ids == tuple(TOKENS)
    np.testing.assert_array_equal(block.kv, kv)
    assert block.kv.dtype == dtype
    assert not list(tmp_path.rglob("*.tmp"))  # written through a temporary file, renamed


def test_a_missing_block_is_none(tmp_path: Path):
    assert read_block(tmp_path, KEY, HASH) is None


@pytest.mark.parametrize("damage", ["flip a payload byte", "truncate", "flip a header byte", "empty"])
def test_a_damaged_file_is_never_served_and_is_deleted(tmp_path: Path, damage: str):
    stored(tmp_path)
    path = block_path(tmp_path, HASH)
    data = bytearray(path.read_bytes())
    if damage == "flip a payload byte":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) - 1000]
    elif damage == "flip a header byte":
        data[20] ^= 0x01
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    assert read_block(tmp_path, KEY, HASH) is None
    assert not path.exists()


def test_another_model_s_or_another_block_s_file_is_never_served(tmp_path: Path):
    stored(tmp_path)
    assert read_block(tmp_path, KEY.replace("q4", "float32"), HASH) is None
    assert not block_path(tmp_path, HASH).exists()
    stored(tmp_path)
    other = bytes(reversed(HASH))
    block_path(tmp_path, other).parent.mkdir(parents=True, exist_ok=True)
    block_path(tmp_path, HASH).rename(block_path(tmp_path, other))  # a file under the wrong name
    assert read_block(tmp_path, KEY, other) is None


def test_a_crashed_writer_s_old_temporary_files_are_removed_and_live_ones_kept(tmp_path: Path):
    stored(tmp_path)
    folder = block_path(tmp_path, HASH).parent
    old, live = folder / "x.kv.1.a.tmp", folder / "y.kv.2.b.tmp"
    old.write_bytes(b"half a block")
    live.write_bytes(b"being written")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    remove_stale_temporaries(tmp_path)
    assert not old.exists() and live.exists() and block_path(tmp_path, HASH).exists()
