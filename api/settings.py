"""Server settings: defaults < TOML config file < PAGEDMLX_* environment < command line flags.

`Settings` is the one list of options: the CLI flags, the environment variables, the config
keys and the README table are all derived from its fields.
"""

import dataclasses
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.tool_calls import PARSERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "PAGEDMLX_"
LOG_LEVELS = ("debug", "info", "warning", "error")
DTYPES = ("auto", "float32", "bfloat16", "float16", "quantized", "q8", "q4", "q8-int8", "q4-int8")
TOOL_CALL_PARSERS = ("auto", *PARSERS)


class SettingsError(ValueError):
    """A bad option value; the CLI prints it as one line."""


def _option(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Settings:
    model: tuple[str, ...] = _option(
        (),
        "model to serve: a GGUF file, an mlx-lm model folder or a Hugging Face repo id, as "
        "SPEC or NAME=SPEC; repeat it to serve several, which load on first use (default: the "
        "bundled SmolLM2-135M-Instruct; the first one given is loaded at start-up)",
    )
    model_alias: tuple[str, ...] = _option(
        (), "PATTERN=NAME: requests whose model matches PATTERN (a name, or a shell pattern such "
        "as 'claude-*haiku*') go to the model NAME; repeatable"
    )
    default_model: str | None = _option(
        None, "the model that serves requests naming no model or an unknown one (default: the "
        "first --model)"
    )
    pin_model: tuple[str, ...] = _option(
        (), "keep this model loaded from start-up on, never unloaded; repeatable (a server of "
        "one model keeps it loaded unless --model-ttl is set)"
    )
    model_ttl_s: float | None = _option(
        None, "unload a model that served no request for this many seconds (default: never; "
        "pinned models stay)"
    )
    memory_gb: float | None = _option(
        None, "most memory the loaded models' weights and KV cache budgets may take together, in "
        "GB; a load that needs room first unloads the least recently used idle models (default: "
        "half the free memory at start-up on the CPU, 0.7 of it on a GPU)"
    )
    host: str = _option("127.0.0.1", "address to bind; use 0.0.0.0 to accept remote clients (a "
                        "warning is printed when that is done without an API key)")
    port: int = _option(8081, "TCP port to listen on")
    served_model_name: str | None = _option(
        None, "name of a model given without NAME= (default: its own name, e.g. the file's or "
        "folder's name)"
    )
    api_key: str | None = _option(
        None, "require this key as 'Authorization: Bearer KEY' or 'x-api-key' on every route but "
        "/health and /metrics"
    )
    api_key_file: str | None = _option(
        None, "accept the keys in this file too, one per line: each key is a tenant, whose "
        "prefix cache no other key can hit"
    )
    metrics_require_key: bool = _option(
        False, "with a key set, require it on /metrics too (only /health stays open)"
    )
    log_prompts: bool = _option(
        False, "log each request's prompt and output text (never logged otherwise)"
    )
    max_num_seqs: int | None = _option(
        None, "most sequences running at once (default: the scheduler's)"
    )
    max_queue: int | None = _option(
        None, "most requests waiting for the engine; past it new ones get 429 (OpenAI) or 529 "
        "(Anthropic) with Retry-After (default: 4x --max-num-seqs, or the KV pool / 2048 tokens "
        "if more)"
    )
    max_num_batched_tokens: int | None = _option(
        None, "most tokens (decode rows + prefill chunks) in one step (default: the scheduler's)"
    )
    max_step_ms: float | None = _option(
        None, "target time of one scheduler step; long prompts are cut into chunks to stay under it"
    )
    kv_cache_gb: float | None = _option(
        None, "most memory the paged KV cache may take, in GB; it grows into it on demand "
        "(default: half the free memory on the CPU, 0.7 of it on a GPU)"
    )
    kv_preallocate: bool = _option(
        False, "allocate the whole KV cache budget at start-up instead of growing it on demand"
    )
    block_size: int = _option(16, "tokens per KV cache block")
    disk_cache_gb: float = _option(
        4.0, "most disk space the prefix cache's disk tier may take, in GB: full KV blocks are "
        "written behind to it and read back after a restart or an eviction (least recently used "
        "go first; 0 turns the tier off)"
    )
    disk_cache_dir: str = _option(
        "~/.cache/pagedmlx/kv", "directory of the disk tier; each model key (model, dtype, block "
        "size, KV layout) gets its own subdirectory, so servers of one model may share it"
    )
    warm: str | None = _option(
        None, "at start-up, prefill the prompts of the request bodies in this JSON or JSONL file "
        "(e.g. a recorded Claude Code first request) into the prefix cache"
    )
    cpu_kernels: str = _option(
        "auto", "the compiled CPU kernels (fused paged attention, quantized matmul): `auto` uses "
        "them where they were built, `off` runs the pure-MLX path", choices=("auto", "off")
    )
    dtype: str | None = _option(
        None,
        "weight dtype (default auto: as stored on GPU; on CPU a quantized checkpoint keeps its bits on the "
        "exact CPU kernel, else float32); q8/q4: at most 8/4-bit weights on the exact CPU kernel (float32 "
        "activations); q8-int8/q4-int8: the int8-activation kernel (faster prefill, rounded activations)",
        choices=DTYPES,
    )
    max_model_len: int | None = _option(
        None, "context length limit, prompt plus output (default: the model's)"
    )
    allow_long_context: bool = _option(
        False, "allow a --max-model-len beyond the model's trained context (quality degrades "
        "past it; a warning is printed), as vLLM's VLLM_ALLOW_LONG_MAX_MODEL_LEN"
    )
    tool_call_parser: str = _option(
        "auto", "format of tool calls in the model's answers (auto: from the chat template "
        "and vocabulary; hermes when the template has no tool support)", choices=TOOL_CALL_PARSERS
    )
    claude_context_scale: bool = _option(
        False, "report Anthropic token counts (usage, count_tokens, 'prompt is too long') scaled "
        "by 200k / max-model-len, so Claude Code compacts before the real limit"
    )
    default_max_tokens: int | None = _option(
        None, "max_tokens of a request that sets none (default: what the context leaves)"
    )
    strict_max_tokens: bool = _option(
        False, "reject a max_tokens beyond what the context leaves instead of clamping it"
    )
    strict_model_name: bool = _option(
        False, "reject a request whose model names no served model or alias (404) instead of "
        "sending it to the default model"
    )
    keepalive_s: float = _option(
        5.0, "seconds of silence after which a stream gets an SSE ': keep-alive' comment"
    )
    max_body_mb: float = _option(32.0, "largest request body accepted, in MB (413 beyond)")
    shutdown_grace_s: float = _option(
        10.0, "on Ctrl-C or SIGTERM, seconds to let in-flight requests finish before aborting them"
    )
    log_level: str = _option("info", "logging level", choices=LOG_LEVELS)
    model_tables: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = field(
        default=(), metadata={"help": "", "choices": None, "config_only": True})

    def __post_init__(self) -> None:
        for name in ("port", "block_size"):
            _require(getattr(self, name) > 0, name, "must be positive")
        _require(self.port < 65536, "port", "must be below 65536")
        for name in ("max_num_seqs", "max_queue", "max_num_batched_tokens", "max_model_len",
                     "default_max_tokens", "max_step_ms", "kv_cache_gb", "model_ttl_s",
                     "memory_gb"):
            value = getattr(self, name)
            _require(value is None or value > 0, name, "must be positive")
        _require(self.disk_cache_gb >= 0, "disk_cache_gb", "must not be negative")
        _require(self.keepalive_s > 0, "keepalive_s", "must be positive")
        _require(self.max_body_mb > 0, "max_body_mb", "must be positive")
        _require(self.shutdown_grace_s >= 0, "shutdown_grace_s", "must not be negative")
        for option in dataclasses.fields(self):
            choices = option.metadata["choices"]
            value = getattr(self, option.name)
            if choices and value is not None and value not in choices:
                raise SettingsError(
                    f"{flag_name(option.name)}: {value!r} is not one of {', '.join(choices)}")


def _require(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise SettingsError(f"{flag_name(name)} {what}")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def options() -> tuple[dataclasses.Field, ...]:
    """The options of the command line and the environment (the config file has these, and
    [models.NAME] tables)."""
    return tuple(option for option in dataclasses.fields(Settings)
                 if not option.metadata.get("config_only"))


def value_type(name: str) -> type:
    """The type of an option (str, int, float, bool, or tuple for a repeatable str), with the
    Optional stripped."""
    hint = typing.get_type_hints(Settings)[name]
    if isinstance(hint, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


def parse_value(name: str, raw: str) -> Any:
    """Converts a string (environment, command line) to the option's type; a repeatable
    option's environment variable holds its values separated by commas."""
    kind = value_type(name)
    if kind is tuple:
        return tuple(value.strip() for value in raw.split(",") if value.strip())
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{flag_name(name)}: expected true or false, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{flag_name(name)}: expected {kind.__name__}, got {raw!r}") from None


def load_settings(
    cli_values: Mapping[str, Any],
    environ: Mapping[str, str],
    config_path: str | None = None,
) -> Settings:
    """Merges the sources, lowest precedence first. cli_values holds only the flags given."""
    names = {option.name for option in options()}
    merged: dict[str, Any] = {}
    if config_path:
        merged.update(_read_config(config_path, names))
    for name in names:
        if env_name(name) in environ:
            merged[name] = parse_value(name, environ[env_name(name)])
    merged.update(cli_values)
    return Settings(**merged)


def _read_config(path: str, names: set[str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise SettingsError(f"--config: cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"--config: {path} is not valid TOML: {error}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "models":
            values["model_tables"] = _model_tables(value, path)
            continue
        if name not in names:
            raise SettingsError(f"--config: unknown key {key!r} in {path}")
        values[name] = config_value(name, value, key)
    return values


def config_value(name: str, value: Any, key: str) -> Any:
    """A config file's value for option `name`, checked against its type."""
    kind = value_type(name)
    if kind is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise SettingsError(f"--config: {key} must be a string or a list of strings, "
                                f"got {value!r}")
        return tuple(items)
    wrong_bool = isinstance(value, bool) and kind is not bool
    if wrong_bool or not (isinstance(value, kind) or (kind is float and type(value) is int)):
        raise SettingsError(f"--config: {key} must be a {kind.__name__}, got {value!r}")
    return kind(value)


def _model_tables(tables: Any, path: str) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """[models.NAME] tables, in file order; their keys are checked where models are configured."""
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise SettingsError(f"--config: 'models' in {path} must hold [models.NAME] tables")
    return tuple((name, tuple(table.items())) for name, table in tables.items())
