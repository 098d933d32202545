"""Which disk-tier directory a server reads and writes: one per model key.

The key covers everything that makes two servers' K/V differ: the weights (the model file's, or each
file of a model folder's, name, size and mtime: a digest of gigabytes would cost a start-up its
seconds), the dtype they run in, the pool's and the disk's dtype, the block size and the KV layout.
A server never reads a directory of another key, and every file names its key too
(engine/kv_block_file.py), so a different model or layout never reads another's blocks.
"""

import hashlib
from pathlib import Path

import orjson

from engine.model_loader import LoadedModel

# A block's K/V on disk: [layers, 2 (K, V), kv_heads, block_size, head_dim]; bump on any change.
KV_LAYOUT_VERSION = 1
# K/V on disk by the pool's dtype: float32 halves to float16 (greedy outputs equal: see README)
DISK_DTYPES = {"float32": "float16"}
_WEIGHT_SUFFIXES = (".gguf", ".safetensors", ".npz", ".bin", ".json")


def disk_cache_key(loaded: LoadedModel, pool_dtype: str, disk_dtype: str, block_size: int) -> dict:
    return {
        "model": loaded.source,
        "weights": _weight_files(loaded.path),
        "dtype": loaded.dtype,
        "pool_dtype": pool_dtype,
        "disk_dtype": disk_dtype,
        "block_size": block_size,
        "kv_shape": [loaded.num_layers, 2, loaded.num_kv_heads, block_size, loaded.head_dim],
        "layout_version": KV_LAYOUT_VERSION,
    }


def key_directory(root: str | Path, key: dict) -> tuple[Path, str]:
    """(the key's directory under root, its digest: the model key files carry); records the key in
    key.json there, for whoever wonders what a directory holds."""
    encoded = orjson.dumps(key, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    directory = Path(root).expanduser() / digest
    directory.mkdir(parents=True, exist_ok=True)
    record = directory / "key.json"
    if not record.exists():
        record.write_bytes(orjson.dumps(key, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return directory, digest


def _weight_files(path: Path) -> list[tuple[str, int, int]]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    return [(file.name, (stat := file.stat()).st_size, stat.st_mtime_ns) for file in files]
