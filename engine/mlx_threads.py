"""Threads that run MLX work end by dropping their MLX state, so the process can exit cleanly.

mlx 0.32.4's Python binding keeps per-thread state (the default key of mx.random, the
mx.compile cache) whose thread_local destructors take the GIL when the thread ends. A thread
still runs those destructors after join() has returned, so one joined just before the
interpreter exits may run them while it finalizes; CPython then ends the thread inside the
noexcept destructor and the process aborts ("terminate called without an active exception",
exit -6). mlx fixed it after 0.32.4 (ml-explore/mlx 9a0c18c). Until a release has it, a thread
that ran MLX work drops that state itself, as its last act, while it holds the GIL.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import mlx.core as mx

T = TypeVar("T")


def release_thread_state() -> None:
    """The calling thread's last MLX call: it must do no MLX work after this."""
    mx.clear_streams()  # also resets the thread's random key and clears its compile cache


async def run_in_own_thread(name: str, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on a new thread that then releases its MLX state and ends. An exit waits for
    the work (as for any executor's thread) rather than cutting it off inside MLX."""
    executor = ThreadPoolExecutor(1, thread_name_prefix=name)
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, _then_release, fn, *args)
    finally:
        executor.shutdown(wait=False)  # its one thread ends: it does no MLX work after the release


def _then_release(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    finally:
        release_thread_state()
