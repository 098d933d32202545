"""The served models and their lifecycle: loaded on first use, kept while used, unloaded when a load
needs the room (least recently used idle first) or after --model-ttl idle; pinned ones stay.

Every state change happens on the event loop; a load's heavy part (weights, pool, engine) runs on a
worker thread, so the other models' streams go on. A load or an unload is a task (`transition`)
that every request for that model awaits, so a request racing an unload waits for it, then loads the
model again. All loaded models' weights and KV budgets stay within one budget (--memory-gb)."""

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from api.errors import APIError
from api.metrics import ModelMetrics, ServerMetrics
from api.metrics.engine_collector import EngineSource
from api.metrics.family import ENGINE_INDEX
from api.model_builder import BuiltModel, ModelBuildError, build_model
from api.model_config import ModelConfig, ServedModels
from api.model_context import ModelContext
from engine.kv_pool import default_kv_budget_bytes
from engine.memory_limit import set_memory_limit
from engine.mlx_threads import run_in_own_thread
from engine.model_loader import stored_weight_bytes
from scheduler.faults import FaultPlan

log = logging.getLogger("pagedmlx")
Waiting = Callable[[], Awaitable[None]]
TTL_CHECKS_PER_TTL = 4
TTL_CHECK_MAX_S = 5.0


@dataclass
class ModelEntry:
    config: ModelConfig
    state: str = "unloaded"                 # unloaded, loading, loaded, unloading
    built: BuiltModel | None = None
    metrics: ModelMetrics | None = None     # made at the first load, kept across reloads
    users: int = 0                          # requests holding the model
    waiters: int = 0                        # requests waiting for it to load
    last_used: float = field(default_factory=time.monotonic)
    transition: asyncio.Task | None = None  # the load or unload under way

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def idle(self) -> bool:
        """Loaded, held by no request, awaited by none: a model just loaded is never taken from
        the requests that waited for it (two models taking turns would undo each other's load)."""
        return (self.state == "loaded" and self.users == 0 and self.waiters == 0
                and self.transition is None)


class ModelSet:
    def __init__(self, served: ServedModels, metrics: ServerMetrics, budget_bytes: int | None,
                 fault: FaultPlan, keepalive_s: float) -> None:
        """budget_bytes: --memory-gb (None: the default, half the free memory now on the CPU)."""
        self.router = served.router
        self.default = served.default.name
        self._entries = {config.name: ModelEntry(config) for config in served.configs}
        self._metrics = metrics
        self._lifecycle = {name: metrics.lifecycle(name, self._cost_reader(name))
                           for name in self._entries}
        self.budget_bytes = default_kv_budget_bytes() if budget_bytes is None else budget_bytes
        # A server of one model without --memory-gb sizes its KV cache as before (half the free
        # memory after the weights); several share the budget equally unless they set kv_cache_gb.
        several = len(self._entries) > 1 or budget_bytes is not None
        self._share = self.budget_bytes // len(self._entries) if several else None
        self._fault = fault
        self._keepalive_s = keepalive_s
        self._load_lock = asyncio.Lock()  # one load at a time: each decides on the room left
        self._idle = asyncio.Event()      # set when a request lets a model go
        self.memory_limit_bytes = 0

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def route(self, requested: str | None) -> ModelEntry:
        """The model serving a request's `model`; 404 when strict names refuse it."""
        name = self.router.route(requested)
        if name is None:
            raise self._not_found(requested)
        return self._entries[name]

    def named(self, name: str) -> ModelEntry:
        """The model of this name (any case; aliases do not count), else 404."""
        for entry in self._entries.values():
            if entry.name.lower() == name.lower():
                return entry
        raise self._not_found(name)

    def _not_found(self, name: str | None) -> APIError:
        return APIError(404, f"The model '{name}' does not exist; this server serves "
                        f"{', '.join(repr(n) for n in self._entries)}", param="model",
                        code="model_not_found")

    @contextlib.asynccontextmanager
    async def use(self, requested: str | None,
                  waiting: Waiting | None = None) -> AsyncIterator[ModelContext]:
        """The context of the model serving `requested`, loaded first if need be; held (never
        unloaded) until the block ends. waiting: awaited when the request starts waiting for a
        load, then after each keep-alive interval of it."""
        entry = await self._acquire(self.route(requested), waiting)
        try:
            assert entry.built is not None
            yield entry.built.ctx
        finally:
            entry.users -= 1
            entry.last_used = time.monotonic()
            self._idle.set()

    async def _acquire(self, entry: ModelEntry, waiting: Waiting | None) -> ModelEntry:
        entry.waiters += 1
        try:
            while entry.state != "loaded" or entry.transition is not None:
                if entry.transition is None:
                    entry.transition = asyncio.create_task(self._load(entry))
                transition = entry.transition
                if waiting is not None:
                    await waiting()
                try:
                    await asyncio.wait_for(asyncio.shield(transition), self._keepalive_s)
                except asyncio.TimeoutError:
                    continue
                except ModelBuildError as error:
                    raise APIError(503, f"The model '{entry.name}' could not be loaded: {error}",
                                   code="model_load_failed", error_type="server_error") from None
        finally:
            entry.waiters -= 1
        entry.users += 1
        entry.last_used = time.monotonic()
        return entry

    async def load_at_start(self) -> None:
        """The default model and the pinned ones, before the port opens; raises ModelBuildError."""
        for entry in self._entries.values():
            if entry.name == self.default or entry.config.pinned:
                entry.transition = asyncio.create_task(self._load(entry))
                await entry.transition

    async def _load(self, entry: ModelEntry) -> None:
        try:
            async with self._load_lock:
                await self._make_room(entry)
                entry.state = "loading"
                started = time.monotonic()
                try:
                    built = await run_in_own_thread(f"load-{entry.name}", build_model,
                                                    entry.config, self._share,
                                                    self._metrics_for(entry), self._fault)
                except ModelBuildError:
                    entry.state = "unloaded"
                    raise
                except Exception as error:  # an unforeseen failure is this model's, not the server's
                    entry.state = "unloaded"
                    log.exception("loading model %s failed", entry.name)
                    raise ModelBuildError(f"{type(error).__name__}: {error}") from error
                elapsed = time.monotonic() - started
                entry.built, entry.state, entry.last_used = built, "loaded", time.monotonic()
                lifecycle = self._lifecycle[entry.name]
                lifecycle.loads.inc()
                lifecycle.load_seconds.observe(elapsed)
                self._set_memory_limit()
                print("\n".join([f"loaded {entry.name} in {elapsed:.1f} s", *built.description]),
                      flush=True)
        finally:
            entry.transition = None

    def _metrics_for(self, entry: ModelEntry) -> Callable[[int], ModelMetrics]:
        def metrics(max_model_len: int) -> ModelMetrics:
            if entry.metrics is None:
                entry.metrics = self._metrics.for_model(entry.name, max_model_len)
            return entry.metrics
        return metrics

    async def _make_room(self, entry: ModelEntry) -> None:
        if self._share is None:  # one model, no --memory-gb: nothing to share the memory with
            return
        need = self._estimated_cost(entry.config)
        while self._held_bytes() + need > self.budget_bytes:
            victims = [other for other in self._entries.values()
                       if other.idle and not other.config.pinned and other is not entry]
            if victims:
                await self._unload(min(victims, key=lambda e: e.last_used), "memory")
                continue
            busy = [other for other in self._entries.values() if other.built is not None
                    and not other.config.pinned and other is not entry]
            if not busy:
                left = self.budget_bytes - self._held_bytes()
                raise ModelBuildError(
                    f"it needs about {need / 2**30:.2f} GB (weights and KV cache), and the "
                    f"{self.budget_bytes / 2**30:.2f} GB budget (--memory-gb) has "
                    f"{left / 2**30:.2f} GB left beside the pinned models")
            log.info("model %s waits for room: %s in use", entry.name,
                     ", ".join(other.name for other in busy))
            self._idle.clear()
            await self._idle.wait()

    def _estimated_cost(self, config: ModelConfig) -> int:
        if config.settings.kv_cache_gb is not None:
            return stored_weight_bytes(config.spec) + int(config.settings.kv_cache_gb * 2**30)
        return self._share

    def _held_bytes(self) -> int:
        return sum(entry.built.cost_bytes for entry in self._entries.values()
                   if entry.built is not None)

    async def _unload(self, entry: ModelEntry, reason: str) -> None:
        """Only an idle model (its state set here, before any await, so no request takes it)."""
        entry.state = "unloading"
        entry.transition = asyncio.create_task(self._stop(entry, reason))
        await entry.transition

    async def _stop(self, entry: ModelEntry, reason: str) -> None:
        try:
            built = entry.built
            assert built is not None
            await built.ctx.engine.stop(grace_s=0)
            built.ctx.close()
            entry.built = None
            del built
            await run_in_own_thread(f"unload-{entry.name}", _free_memory)
            self._lifecycle[entry.name].unloads[reason].inc()
            self._set_memory_limit()
            log.info("unloaded model %s (%s)", entry.name,
                     "memory: another model needed the room" if reason == "memory"
                     else "idle past --model-ttl")
        finally:
            entry.state = "unloaded"
            entry.transition = None
            self._idle.set()  # a load waiting for room may go on

    async def watch_ttl(self, ttl_s: float) -> None:
        """Until cancelled: unloads unpinned models idle for ttl_s."""
        while True:
            await asyncio.sleep(min(ttl_s / TTL_CHECKS_PER_TTL, TTL_CHECK_MAX_S))
            now = time.monotonic()
            for entry in list(self._entries.values()):
                if entry.idle and not entry.config.pinned and now - entry.last_used >= ttl_s:
                    await self._unload(entry, "ttl")

    def _set_memory_limit(self) -> None:
        self.memory_limit_bytes = set_memory_limit(self._held_bytes())

    def _cost_reader(self, name: str) -> Callable[[], float]:
        return lambda: (self._entries[name].built.cost_bytes
                        if self._entries[name].built is not None else 0)

    def loaded(self) -> Iterator[tuple[ModelEntry, ModelContext]]:
        for entry in self._entries.values():
            if entry.built is not None:
                yield entry, entry.built.ctx

    def engine_sources(self) -> list[EngineSource]:
        return [EngineSource((entry.name, ENGINE_INDEX), ctx.engine.stats,
                             ctx.engine.runner.pool.block_bytes)
                for entry, ctx in self.loaded()]

    def describe(self, entry: ModelEntry) -> dict[str, Any]:
        """A model's state, for /v1/models and /health."""
        card: dict[str, Any] = {"state": entry.state, "pinned": entry.config.pinned,
                                "aliases": self.router.aliases_of(entry.name)}
        if entry.built is not None:
            card["max_model_len"] = entry.built.ctx.max_model_len
            card["memory_bytes"] = entry.built.cost_bytes
        return card

    async def close(self) -> None:
        for _, ctx in list(self.loaded()):
            await ctx.engine.stop()
            ctx.close()


def _free_memory() -> None:
    gc.collect()
    mx.clear_cache()
