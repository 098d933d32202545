"""`pagedmlx serve`: load the model, start the engine loop, serve until Ctrl-C or SIGTERM."""

import asyncio
import copy
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
from api.back_pressure import default_max_queue
from api.context import ServerContext
from api.metrics import Metrics
from api.prompt_render import template_supports_tools
from api.request_ids import ACCESS_LOG_FORMAT
from api.reasoning import reasoning_markers
from api.settings import Settings
from api.tool_calls import choose_parser_name
from api.warm import local_url, warm_server, warm_succeeded
from engine import cpu_kernels
from engine.blas import active_blas
from engine.device import device_description
from engine.disk_cache_key import DISK_DTYPES, disk_cache_key, key_directory
from engine.guided import GrammarCompiler
from engine.kv_block_copy import numpy_dtype
from engine.memory_limit import set_memory_limit
from engine.model_loader import LoadedModel, ModelLoadError, load_model
from engine.runner import ModelRunner
from scheduler.config import SchedulerConfig
from scheduler.disk_tier import DiskTier
from scheduler.engine_loop import EngineLoop
from scheduler.faults import FaultPlan

log = logging.getLogger("pagedmlx")


class StartupError(Exception):
    """Printed as one line; the process exits non-zero."""


def serve(settings: Settings, exit_after_warm: bool = False) -> int:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cpu_kernels.set_enabled(settings.cpu_kernels == "auto")
    try:
        loaded = _load(settings)
        config = _scheduler_config(settings, loaded)
        runner = ModelRunner(loaded, config.num_blocks, config.block_size,
                             on_demand=not settings.kv_preallocate,
                             guaranteed_blocks=-(-config.context_limit // config.block_size))
        memory_limit = set_memory_limit(runner.pool.block_bytes * config.num_blocks)
        disk = _disk_tier(settings, loaded, runner, config.block_size)
        fault = FaultPlan.from_env()
        api_keys = load_api_keys(settings.api_key, settings.api_key_file)
    except (StartupError, ValueError) as error:
        print(f"pagedmlx: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if not api_keys and not _is_loopback(settings.host):
        log.warning("WARNING: listening on %s with no API key: anyone who can reach this port "
                    "can use the model and read the prefix cache's timings; set --api-key or "
                    "--api-key-file", settings.host)
    model_name = settings.served_model_name or loaded.model_id
    metrics = Metrics(model_name, config.context_limit, lambda: engine.stats,
                      kv_block_bytes=runner.pool.block_bytes, memory_limit_bytes=memory_limit)
    engine = EngineLoop(runner, config, model_name, fault=fault, step_observer=metrics.observe_step,
                        disk=disk)
    tokenizer = loaded.tokenizer
    encode_tokenizer = copy.deepcopy(tokenizer)  # the tokenize thread's own (see ServerContext)
    template, vocab = getattr(tokenizer, "chat_template", None), tokenizer.get_vocab()
    ctx = ServerContext(
        settings=settings,
        engine=engine,
        tokenizer=tokenizer,
        encode_tokenizer=encode_tokenizer,
        model_name=model_name,
        max_model_len=config.context_limit,
        eos_token_ids=loaded.eos_token_ids,
        metrics=metrics,
        block_size=config.block_size,
        tool_parser_name=(choose_parser_name(template, vocab)
                          if settings.tool_call_parser == "auto" else settings.tool_call_parser),
        grammar=GrammarCompiler(encode_tokenizer, loaded.eos_token_ids),
        reasoning_markers=reasoning_markers(template, vocab),
        api_keys=api_keys,
        max_queue=settings.max_queue or default_max_queue(
            config.num_blocks * config.block_size, config.max_num_seqs),
    )
    _print_startup(loaded, config, ctx, runner, memory_limit, disk)
    return _run(_serve_until_signal(ctx, exit_after_warm))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return host == "localhost"


def _load(settings: Settings) -> LoadedModel:
    try:
        return load_model(settings.model, settings.dtype)
    except ModelLoadError as error:
        raise StartupError(f"cannot load model {settings.model or '(default)'}: {error}") from None


def _scheduler_config(settings: Settings, loaded: LoadedModel) -> SchedulerConfig:
    if settings.max_model_len and settings.max_model_len > loaded.max_context:
        if not settings.allow_long_context:
            raise StartupError(
                f"--max-model-len {settings.max_model_len} is beyond the model's context of "
                f"{loaded.max_context} tokens (--allow-long-context permits it, at a cost in "
                "quality)")
        log.warning("WARNING: --max-model-len %d is beyond the model's trained context of %d "
                    "tokens (--allow-long-context): positions past it were never trained, so "
                    "answers there may degrade", settings.max_model_len, loaded.max_context)
    limits = {name: getattr(settings, name)
              for name in ("max_num_seqs", "max_num_batched_tokens", "max_step_ms")
              if getattr(settings, name) is not None}
    try:
        num_blocks = ModelRunner.blocks_for_budget(loaded, settings.kv_cache_gb,
                                                   settings.block_size)
        return SchedulerConfig(
            num_blocks=num_blocks,
            block_size=settings.block_size,
            max_model_len=settings.max_model_len or loaded.max_context,
            cache_key=f"{loaded.source}:{loaded.dtype}",
            **limits,
        )
    except ValueError as error:
        raise StartupError(str(error)) from None


def _disk_tier(settings: Settings, loaded: LoadedModel, runner: ModelRunner,
               block_size: int) -> DiskTier | None:
    if settings.disk_cache_gb == 0:
        return None
    pool_dtype = numpy_dtype(runner.pool)
    disk_dtype = DISK_DTYPES.get(pool_dtype, pool_dtype)
    key = disk_cache_key(loaded, pool_dtype, disk_dtype, block_size)
    try:
        directory, digest = key_directory(settings.disk_cache_dir, key)
        return DiskTier(directory, digest, int(settings.disk_cache_gb * 2**30), disk_dtype)
    except OSError as error:
        raise StartupError(f"--disk-cache-dir {settings.disk_cache_dir}: {error}") from None


def _print_startup(loaded: LoadedModel, config: SchedulerConfig, ctx: ServerContext,
                   runner: ModelRunner, memory_limit: int, disk: DiskTier | None) -> None:
    pool_tokens = config.num_blocks * config.block_size
    budget_gb = config.num_blocks * runner.pool.block_bytes / 2**30
    allocation = ("allocated up front" if runner.pool_growth is None
                  else f"{runner.pool.nbytes / 2**30:.2f} GB allocated, growing on demand")
    lines = [
        f"pagedmlx {metadata.version('pagedmlx')}",
        f"  model:    {loaded.model_id} ({loaded.source})",
        f"  device:   {device_description()}",
        f"  kernels:  {cpu_kernels.describe()}",
        f"  dtype:    {loaded.dtype}",
        f"  blas:     {active_blas()}",
        f"  kv cache: budget {budget_gb:.2f} GB = {config.num_blocks} blocks x {config.block_size} "
        f"tokens = {pool_tokens} tokens; {allocation}",
        f"  memory:   MLX limit {memory_limit / 2**30:.2f} GB (weights, KV budget, activations)",
        f"  context:  {config.context_limit} tokens, up to {config.max_num_seqs} sequences at once",
        f"  disk:     {_describe_disk(disk)}",
        f"  queue:    up to {ctx.max_queue} requests waiting (--max-queue)",
        f"  tools:    {ctx.tool_parser_name} calls, "
        + ("through the chat template" if template_supports_tools(loaded.tokenizer)
           else "fallback tool prompt (the chat template has no tool support)"),
    ]
    print("\n".join(lines), flush=True)


def _describe_disk(disk: DiskTier | None) -> str:
    if disk is None:
        return "off (--disk-cache-gb 0)"
    stats = disk.stats()
    return (f"{disk.directory}: {stats.num_blocks} blocks, {stats.size_bytes / 2**30:.2f} of "
            f"{stats.capacity_bytes / 2**30:.2f} GB, K/V as {disk.dtype}")


def _run(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover (uvloop has no Windows build)
        return asyncio.run(main)
    return uvloop.run(main)


async def _serve_until_signal(ctx: ServerContext, exit_after_warm: bool = False) -> int:
    """exit_after_warm: stop (gracefully, as on a signal) once --warm's requests are done; exit 1
    unless every one was answered."""
    settings = ctx.settings
    ctx.engine.start()
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
    watch_lag = asyncio.create_task(ctx.metrics.loop_lag.watch())
    warming = None
    if settings.warm:
        warming = asyncio.create_task(warm_server(local_url(settings.host, settings.port),
                                                  settings.warm, next(iter(ctx.api_keys), None)))
        if exit_after_warm:
            warming.add_done_callback(lambda _: stop.set())
    await stop.wait()
    if warming is not None:
        warming.cancel()  # a signal mid-warm: its request is aborted like any client's
    ctx.shutting_down = True
    await _drain(ctx, force)
    watch_lag.cancel()
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
    await ctx.engine.stop()
    ctx.close()
    log.info("stopped")
