"""The paged K/V pool: one K and one V array per layer, sized from a memory budget."""

import os

import mlx.core as mx

from engine.device import on_gpu

# Share of the free memory the KV pool may take by default. On the CPU the rest stays for the
# weights already loaded, the activations of long prefill chunks (scores are heads x chunk x
# context floats) and the other processes of the machine.
CPU_BUDGET_FRACTION = 0.5
GPU_BUDGET_FRACTION = 0.7


class KVPool:
    """K and V of every layer, each `[kv_heads, num_blocks * block_size, head_dim]`.

    Token-major within a head: the tokens of a run of consecutive blocks are one strided view
    of the pool, which matmuls read without a copy. Slot `s` is row `s` of every head; the slot
    of position `p` of a sequence is `block_table[p // block_size] * block_size + p % block_size`.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: mx.Dtype = mx.float32,
    ):
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.dtype = dtype
        self._allocate()

    def reset(self) -> None:
        """Free the arrays and allocate them anew (after failed steps, an out-of-memory among them)."""
        self.keys, self.values = [], []
        mx.clear_cache()
        self._allocate()

    def grow(self, num_blocks: int) -> None:
        """Extend every layer to num_blocks blocks, keeping the KV already written. One layer at a
        time, freeing its old array before the next, so the peak is the old pool plus one layer."""
        added = (num_blocks - self.num_blocks) * self.block_size
        if added <= 0:
            return
        for arrays in (self.keys, self.values):
            for layer in range(self.num_layers):
                # pad: a third of concatenate's time here (it copies rows, not elements)
                arrays[layer] = mx.pad(arrays[layer], [(0, 0), (0, added), (0, 0)])
                mx.eval(arrays[layer])  # which drops the old array
                mx.clear_cache()
        self.num_blocks = num_blocks

    @property
    def block_bytes(self) -> int:
        return self.bytes_per_block(self.num_layers, self.num_kv_heads, self.head_dim,
                                    self.block_size, self.dtype)

    @property
    def nbytes(self) -> int:
        return self.block_bytes * self.num_blocks

    def _allocate(self) -> None:
        self.keys = [self._zeros(self.num_slots) for _ in range(self.num_layers)]
        self.values = [self._zeros(self.num_slots) for _ in range(self.num_layers)]
        mx.eval(self.keys, self.values)

    def _zeros(self, num_slots: int) -> mx.array:
        # Zeros, not uninitialized memory: attention windows may span slots never written, and
        # their (masked) values must stay finite.
        return mx.zeros((self.num_kv_heads, num_slots, self.head_dim), self.dtype)

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    def write(self, layer: int, slot_ids: mx.array, keys: mx.array, values: mx.array) -> None:
        """Store new K/V of shape `[B, kv_heads, L, head_dim]` at `slot_ids` (`[B * L]`, row-major
        over B then L). The pool array is updated in place once evaluated, as long as nothing else
        holds a reference to its previous value (evaluate the pool between forward calls)."""
        self.keys[layer][:, slot_ids] = self._head_major(keys)
        self.values[layer][:, slot_ids] = self._head_major(values)

    def _head_major(self, x: mx.array) -> mx.array:
        return x.transpose(1, 0, 2, 3).reshape(self.num_kv_heads, -1, self.head_dim).astype(self.dtype)

    @staticmethod
    def bytes_per_block(
        num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: mx.Dtype
    ) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * block_size * dtype.size


def default_kv_budget_bytes() -> int:
    """A safe share of the memory free now for the KV pool (call it after loading the weights)."""
    fraction = GPU_BUDGET_FRACTION if on_gpu() else CPU_BUDGET_FRACTION
    return int(free_memory_bytes() * fraction)


def free_memory_bytes() -> int:
    """Memory this process could still take on its device: free device memory (CUDA), the
    working set left (Metal: unified memory), or the host's available memory (CPU)."""
    if on_gpu():
        info = mx.device_info()
        if "free_memory" in info:  # CUDA
            return int(info["free_memory"])
        return max(0, int(info["max_recommended_working_set_size"]) - mx.get_active_memory())
    return _available_host_memory()


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # macOS has no SC_AVPHYS_PAGES
        return int(mx.device_info().get("memory_size", 0)) // 2
