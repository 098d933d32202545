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
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import mlx.core as mx

T = TypeVar("T")


def release_thread_state() -> None:
    """The calling thread's last MLX call: it must do no MLX work after this."""
    mx.clear_streams()  # also resets the thread's random key and clears its compile cache


async def run_in_own_thread(name: str, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on a new thread that then releases its MLX state. Not a daemon thread: an
    exit waits for the work rather than cutting it off inside MLX."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if outcome.cancelled():
            return
        if error is None:
            outcome.set_result(result)
        else:
            outcome.set_exception(error)

    def body() -> None:
        result, error = None, None
        try:
            result = fn(*args)
        except BaseException as raised:  # handed to the awaiting coroutine
            error = raised
        finally:
            release_thread_state()
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed while fn ran: nobody waits for the outcome
            pass

    threading.Thread(target=body, name=name).start()
    return await outcome
