"""One model, built to serve: weights, KV pool, disk tier, engine loop and its ModelContext.

Runs on a thread of its own (engine/mlx_threads.run_in_own_thread), at start-up or for a load on
demand: it takes seconds, and the event loop and the other models' engines keep going meanwhile."""

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

from mlx.utils import tree_flatten

from api.back_pressure import default_max_queue
from api.model_config import ModelConfig
from api.model_context import ModelContext
from api.prompt_render import template_supports_tools
from api.reasoning import reasoning_markers
from api.tool_calls import choose_parser_name
from engine import cpu_kernels
from engine.blas import active_blas
from engine.device import device_description
from engine.disk_cache_key import DISK_DTYPES, disk_cache_key, key_directory
from engine.guided import GrammarCompiler
from engine.kv_block_copy import numpy_dtype
from engine.kv_pool import default_kv_budget_bytes
from engine.model_loader import LoadedModel, ModelLoadError, load_model, model_id_of
from engine.runner import ModelRunner
from scheduler.config import SchedulerConfig
from scheduler.disk_tier import DiskTier
from scheduler.engine_loop import EngineLoop
from scheduler.faults import FaultPlan

log = logging.getLogger("pagedmlx")


class ModelBuildError(Exception):
    """A model cannot be served as configured; the message is one line for users."""


@dataclass
class BuiltModel:
    ctx: ModelContext
    weights_bytes: int
    kv_budget_bytes: int
    description: list[str]  # the start-up log's lines for it

    @property
    def cost_bytes(self) -> int:
        """What the model is counted for in --memory-gb."""
        return self.weights_bytes + self.kv_budget_bytes


def build_model(config: ModelConfig, share_bytes: int | None,
                metrics_for: Callable[[int], object], fault: FaultPlan) -> BuiltModel:
    """share_bytes: the most the model may take, weights and KV, when its settings name no
    --kv-cache-gb (None: no share, the KV default alone). metrics_for(max_model_len): the model's
    ModelMetrics. The engine loop is started."""
    settings = config.settings
    loaded = _load(config)
    weights_bytes = sum(array.nbytes for _, array in tree_flatten(loaded.model.parameters()))
    kv_budget = _kv_budget_bytes(config, share_bytes, weights_bytes)
    scheduler_config = _scheduler_config(config, loaded, kv_budget)
    runner = ModelRunner(loaded, scheduler_config.num_blocks, scheduler_config.block_size,
                         on_demand=not settings.kv_preallocate,
                         guaranteed_blocks=-(-scheduler_config.context_limit
                                             // scheduler_config.block_size))
    disk = _disk_tier(config, loaded, runner, scheduler_config.block_size)
    metrics = metrics_for(scheduler_config.context_limit)
    engine = EngineLoop(runner, scheduler_config, config.name, fault=fault,
                        step_observer=metrics.observe_step, disk=disk)
    tokenizer = loaded.tokenizer
    encode_tokenizer = copy.deepcopy(tokenizer)  # the tokenize thread's own (see ModelContext)
    template, vocab = getattr(tokenizer, "chat_template", None), tokenizer.get_vocab()
    ctx = ModelContext(
        settings=settings,
        engine=engine,
        tokenizer=tokenizer,
        encode_tokenizer=encode_tokenizer,
        model_name=config.name,
        max_model_len=scheduler_config.context_limit,
        eos_token_ids=loaded.eos_token_ids,
        metrics=metrics,
        block_size=scheduler_config.block_size,
        tool_parser_name=(choose_parser_name(template, vocab)
                          if settings.tool_call_parser == "auto" else settings.tool_call_parser),
        grammar=GrammarCompiler(encode_tokenizer, loaded.eos_token_ids),
        reasoning_markers=reasoning_markers(template, vocab),
        max_queue=settings.max_queue or default_max_queue(
            scheduler_config.num_blocks * scheduler_config.block_size,
            scheduler_config.max_num_seqs),
    )
    engine.start()
    description = _describe(config, loaded, scheduler_config, ctx, runner, disk, weights_bytes)
    return BuiltModel(ctx, weights_bytes, scheduler_config.num_blocks * runner.pool.block_bytes,
                      description)


def _load(config: ModelConfig) -> LoadedModel:
    try:
        return load_model(config.spec, config.settings.dtype)
    except ModelLoadError as error:
        spec = config.spec or "default"
        named = spec if config.name == model_id_of(config.spec) else f"{config.name} ({spec})"
        raise ModelBuildError(f"cannot load model {named}: {error}") from None


def _kv_budget_bytes(config: ModelConfig, share_bytes: int | None, weights_bytes: int) -> int:
    if config.settings.kv_cache_gb is not None:
        return int(config.settings.kv_cache_gb * 2**30)
    budget = default_kv_budget_bytes()
    if share_bytes is not None:
        budget = min(budget, share_bytes - weights_bytes)
    if budget <= 0:
        raise ModelBuildError(
            f"model {config.name}: its {share_bytes / 2**30:.2f} GB share of --memory-gb holds "
            f"its {weights_bytes / 2**30:.2f} GB of weights but no KV cache; raise --memory-gb "
            "or give it a kv_cache_gb")
    return budget


def _scheduler_config(config: ModelConfig, loaded: LoadedModel, kv_budget: int) -> SchedulerConfig:
    settings = config.settings
    if settings.max_model_len and settings.max_model_len > loaded.max_context:
        if not settings.allow_long_context:
            raise ModelBuildError(
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
        num_blocks = ModelRunner.blocks_for_budget(loaded, kv_budget / 2**30, settings.block_size)
        return SchedulerConfig(
            num_blocks=num_blocks,
            block_size=settings.block_size,
            max_model_len=settings.max_model_len or loaded.max_context,
            cache_key=f"{loaded.source}:{loaded.dtype}",
            **limits,
        )
    except ValueError as error:
        raise ModelBuildError(f"model {config.name}: {error}") from None


def _disk_tier(config: ModelConfig, loaded: LoadedModel, runner: ModelRunner,
               block_size: int) -> DiskTier | None:
    settings = config.settings
    if settings.disk_cache_gb == 0:
        return None
    pool_dtype = numpy_dtype(runner.pool)
    disk_dtype = DISK_DTYPES.get(pool_dtype, pool_dtype)
    key = disk_cache_key(loaded, pool_dtype, disk_dtype, block_size)
    try:
        directory, digest = key_directory(settings.disk_cache_dir, key)
        return DiskTier(directory, digest, int(settings.disk_cache_gb * 2**30), disk_dtype)
    except OSError as error:
        raise ModelBuildError(f"--disk-cache-dir {settings.disk_cache_dir}: {error}") from None


def _describe(config: ModelConfig, loaded: LoadedModel, scheduler_config: SchedulerConfig,
              ctx: ModelContext, runner: ModelRunner, disk: DiskTier | None,
              weights_bytes: int) -> list[str]:
    pool_tokens = scheduler_config.num_blocks * scheduler_config.block_size
    budget_gb = scheduler_config.num_blocks * runner.pool.block_bytes / 2**30
    allocation = ("allocated up front" if runner.pool_growth is None
                  else f"{runner.pool.nbytes / 2**30:.2f} GB allocated, growing on demand")
    return [
        f"  model:    {config.name} = {loaded.model_id} ({loaded.source})",
        f"  dtype:    {loaded.dtype}, {weights_bytes / 2**30:.2f} GB of weights",
        f"  kv cache: budget {budget_gb:.2f} GB = {scheduler_config.num_blocks} blocks x "
        f"{scheduler_config.block_size} tokens = {pool_tokens} tokens; {allocation}",
        f"  context:  {scheduler_config.context_limit} tokens, up to "
        f"{scheduler_config.max_num_seqs} sequences at once",
        f"  disk:     {_describe_disk(disk)}",
        f"  queue:    up to {ctx.max_queue} requests waiting (--max-queue)",
        f"  tools:    {ctx.tool_parser_name} calls, "
        + ("through the chat template" if template_supports_tools(loaded.tokenizer)
           else "fallback tool prompt (the chat template has no tool support)"),
    ]


def host_description() -> list[str]:
    """The start-up log's lines about the machine, printed once."""
    return [
        f"  device:   {device_description()}",
        f"  kernels:  {cpu_kernels.describe()}",
        f"  blas:     {active_blas()}",
    ]


def _describe_disk(disk: DiskTier | None) -> str:
    if disk is None:
        return "off (--disk-cache-gb 0)"
    stats = disk.stats()
    return (f"{disk.directory}: {stats.num_blocks} blocks, {stats.size_bytes / 2**30:.2f} of "
            f"{stats.capacity_bytes / 2**30:.2f} GB, K/V as {disk.dtype}")
