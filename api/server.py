"""`pagedmlx serve`: load the default (and pinned) models, serve until Ctrl-C or SIGTERM; other
models load on first use."""

import asyncio
import ipaddress
import logging
import signal
import sys
from collections.abc import Coroutine
from importlib import metadata
from typing import Any

from aiohttp import web

from api.api_keys import load_api_keys
from api.app import create_app
from api.context import ServerContext
from api.metrics import ServerMetrics
from api.model_builder import ModelBuildError, host_description
from api.model_config import ServedModels, served_models
from api.model_set import ModelSet
from api.request_ids import ACCESS_LOG_FORMAT
from api.settings import Settings, SettingsError
from api.warm import local_url, warm_server, warm_succeeded
from engine import cpu_kernels
from scheduler.faults import FaultPlan

log = logging.getLogger("pagedmlx")


def serve(settings: Settings, exit_after_warm: bool = False) -> int:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cpu_kernels.set_enabled(settings.cpu_kernels == "auto")
    try:
        served = served_models(settings)
        fault = FaultPlan.from_env()
        api_keys = load_api_keys(settings.api_key, settings.api_key_file)
    except (SettingsError, ValueError) as error:
        print(f"pagedmlx: error: {error}", file=sys.stderr)
        return 1
    if not api_keys and not _is_loopback(settings.host):
        log.warning("WARNING: listening on %s with no API key: anyone who can reach this port "
                    "can use the model and read the prefix cache's timings; set --api-key or "
                    "--api-key-file", settings.host)
    try:
        return _run(_serve_until_signal(settings, served, fault, api_keys, exit_after_warm))
    except KeyboardInterrupt:
        return 130


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return host == "localhost"


def _run(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover (uvloop has no Windows build)
        return asyncio.run(main)
    return uvloop.run(main)


async def _start_models(settings: Settings, served: ServedModels,
                        fault: FaultPlan) -> tuple[ModelSet, ServerMetrics]:
    models: ModelSet | None = None
    metrics = ServerMetrics(served.default.name, lambda: models.engine_sources() if models else [],
                            lambda: models.memory_limit_bytes if models else 0)
    budget = None if settings.memory_gb is None else int(settings.memory_gb * 2**30)
    models = ModelSet(served, metrics, budget, fault, settings.keepalive_s)
    print("\n".join([f"pagedmlx {metadata.version('pagedmlx')}", *host_description(),
                     f"  memory:   {models.budget_bytes / 2**30:.2f} GB for the models' weights "
                     "and KV caches (--memory-gb)"]), flush=True)
    await models.load_at_start()
    for entry in models.entries():
        if entry.built is None:
            print(f"  model:    {entry.name} = {entry.config.spec}: loads on first use", flush=True)
    return models, metrics


async def _serve_until_signal(settings: Settings, served: ServedModels, fault: FaultPlan,
                              api_keys: tuple[str, ...], exit_after_warm: bool = False) -> int:
    """exit_after_warm: stop (gracefully, as on a signal) once --warm's requests are done; exit 1
    unless every one was answered."""
    try:
        models, metrics = await _start_models(settings, served, fault)
    except ModelBuildError as error:
        print(f"pagedmlx: error: {error}", file=sys.stderr)
        return 1
    ctx = ServerContext(settings, models, metrics, api_keys)
    runner = web.AppRunner(create_app(ctx), handler_cancellation=True,
                           access_log_format=ACCESS_LOG_FORMAT)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as error:
        print(f"pagedmlx: error: cannot listen on {settings.host}:{settings.port}: "
              f"{error.strerror}", file=sys.stderr)
        await _stop(ctx, runner)
        return 1
    print(f"  serving:  http://{settings.host}:{settings.port}/v1 "
          "(health: /health, metrics: /metrics)", flush=True)
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    background = [asyncio.create_task(metrics.loop_lag.watch())]
    if settings.model_ttl_s is not None:
        background.append(asyncio.create_task(models.watch_ttl(settings.model_ttl_s)))
    warming = None
    if settings.warm:
        warming = asyncio.create_task(warm_server(local_url(settings.host, settings.port),
                                                  settings.warm, next(iter(api_keys), None)))
        if exit_after_warm:
            warming.add_done_callback(lambda _: stop.set())
    await stop.wait()
    if warming is not None:
        warming.cancel()  # a signal mid-warm: its request is aborted like any client's
    ctx.shutting_down = True
    await _drain(ctx, force)
    for task in background:
        task.cancel()
    await _stop(ctx, runner)
    return 1 if exit_after_warm and not warm_succeeded(warming) else 0


async def _drain(ctx: ServerContext, force: asyncio.Event) -> None:
    """Lets in-flight requests finish within the grace period (a second signal cuts it short),
    then cancels the rest, which aborts their requests in the engine."""
    grace = ctx.settings.shutdown_grace_s
    log.info("shutting down: %d requests in flight, grace period %g s", len(ctx.inflight), grace)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while ctx.inflight and loop.time() < deadline and not force.is_set():
        await asyncio.sleep(0.05)
    remaining = list(ctx.inflight)
    if remaining:
        log.info("aborting %d requests still in flight", len(remaining))
        for task in remaining:
            task.cancel()
        await asyncio.wait(remaining, timeout=5.0)


async def _stop(ctx: ServerContext, runner: web.AppRunner) -> None:
    await runner.cleanup()
    await ctx.models.close()
    log.info("stopped")
