"""The models a server serves, from the settings: `--model [NAME=]SPEC` flags and `[models.NAME]`
tables of the config file, each with its own settings (the server's, with the table's overrides),
aliases and pin. One model given no name keeps today's behaviour: its own name, loaded at start
and never unloaded (unless --model-ttl)."""

import dataclasses
from dataclasses import dataclass

from api.model_routing import ModelRouter, RoutingError, parse_alias, parse_model_flag
from api.settings import Settings, SettingsError, config_value, flag_name
from engine.model_loader import ModelLoadError, model_id_of

# What a [models.NAME] table may set beside `model`, `aliases` and `pinned`: the settings that
# belong to one model's engine and prompts, not to the server.
PER_MODEL_OPTIONS = frozenset({
    "max_model_len", "allow_long_context", "kv_cache_gb", "kv_preallocate", "dtype",
    "tool_call_parser", "max_num_seqs", "max_queue", "max_num_batched_tokens", "max_step_ms",
    "block_size", "disk_cache_gb", "default_max_tokens", "claude_context_scale",
})


@dataclass(frozen=True)
class ModelConfig:
    name: str
    spec: str | None                # None: the bundled default model
    settings: Settings              # the server's, with this model's overrides
    aliases: tuple[str, ...] = ()
    pinned: bool = False


@dataclass(frozen=True)
class ServedModels:
    configs: tuple[ModelConfig, ...]
    router: ModelRouter

    @property
    def default(self) -> ModelConfig:
        return next(config for config in self.configs if config.name == self.router.default)


def served_models(settings: Settings) -> ServedModels:
    """Raises SettingsError for a bad flag, table, alias or missing local model path."""
    try:
        configs = [*_flag_configs(settings), *_table_configs(settings)]
        if not configs:
            configs = [ModelConfig(settings.served_model_name or _model_id(None), None, settings)]
        _check_unique([config.name for config in configs])
        pins = {name.lower() for name in settings.pin_model}
        unknown = pins - {config.name.lower() for config in configs}
        if unknown:
            raise SettingsError(f"--pin-model: no model is named {', '.join(sorted(unknown))}")
        alone = len(configs) == 1 and settings.model_ttl_s is None
        configs = [dataclasses.replace(config, pinned=config.pinned or alone
                                       or config.name.lower() in pins) for config in configs]
        aliases = [(alias, config.name) for config in configs for alias in config.aliases]
        aliases += [parse_alias(value) for value in settings.model_alias]
        router = ModelRouter([config.name for config in configs], aliases,
                             settings.default_model, settings.strict_model_name)
    except RoutingError as error:
        raise SettingsError(str(error)) from None
    return ServedModels(tuple(configs), router)


def _flag_configs(settings: Settings) -> list[ModelConfig]:
    flags = [parse_model_flag(value) for value in settings.model]
    unnamed_alone = len(flags) == 1 and not settings.model_tables
    configs = []
    for flag in flags:
        own_id = _model_id(_spec(flag.spec))  # a missing local path fails now, not at first use
        name = flag.name or (settings.served_model_name if unnamed_alone else None) or own_id
        configs.append(ModelConfig(name, _spec(flag.spec), settings))
    return configs


def _table_configs(settings: Settings) -> list[ModelConfig]:
    configs = []
    for name, items in settings.model_tables:
        table = {key.replace("-", "_"): value for key, value in items}
        where = f"[models.{name}]"
        unknown = set(table) - PER_MODEL_OPTIONS - {"model", "aliases", "pinned"}
        if unknown:
            raise SettingsError(f"--config: {where} has unknown keys {', '.join(sorted(unknown))}"
                                f" (per model: model, aliases, pinned, "
                                f"{', '.join(sorted(PER_MODEL_OPTIONS))})")
        spec = table.pop("model", None)
        aliases = table.pop("aliases", [])
        pinned = table.pop("pinned", False)
        if spec is not None and not isinstance(spec, str):
            raise SettingsError(f"--config: {where} model must be a string")
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise SettingsError(f"--config: {where} aliases must be a list of strings")
        if not isinstance(pinned, bool):
            raise SettingsError(f"--config: {where} pinned must be true or false")
        overrides = {key: config_value(key, value, f"{where} {key}")
                     for key, value in table.items()}
        _model_id(_spec(spec))
        configs.append(ModelConfig(name, _spec(spec), dataclasses.replace(settings, **overrides),
                                   tuple(aliases), pinned))
    return configs


def _model_id(spec: str | None) -> str:
    try:
        return model_id_of(spec)
    except ModelLoadError as error:
        raise SettingsError(f"cannot load model {spec}: {error}") from None


def _spec(spec: str | None) -> str | None:
    return None if spec in (None, "", "default") else spec


def _check_unique(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name.lower() in seen:
            raise SettingsError(f"{flag_name('model')}: two models are named {name!r}; name them "
                                "apart with NAME=SPEC")
        seen.add(name.lower())
