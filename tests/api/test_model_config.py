"""`--model NAME=SPEC`, `[models.NAME]` tables, aliases and pins, read into the served models
(pure: nothing is loaded)."""

from pathlib import Path

import pytest

from api.cli import build_parser, settings_from_args
from api.model_config import served_models
from api.settings import Settings, SettingsError


def settings_for(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]), environ or {})


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return str(path)


def test_one_model_without_a_name_is_served_as_before():
    served = served_models(settings_for([]))
    (config,) = served.configs
    assert (config.name, config.spec, config.pinned) == ("SmolLM2-135M-Instruct", None, True)
    assert served_models(settings_for(["--served-model-name", "smol"])).default.name == "smol"
    assert not served_models(settings_for(["--model-ttl-s", "60"])).configs[0].pinned


def test_repeated_model_flags_name_models_and_the_first_is_the_default(tmp_path: Path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    served = served_models(settings_for(["--model", "main=default", "--model", str(folder),
                                         "--model-alias", "claude-*haiku*=tiny",
                                         "--pin-model", "TINY"]))
    assert [(c.name, c.spec, c.pinned) for c in served.configs] == [
        ("main", None, False), ("tiny", str(folder), True)]
    assert served.default.name == "main"
    assert served.router.route("claude-haiku-4-5") == "tiny"
    assert served.router.route("claude-opus-4") == "main"


def test_the_environment_lists_models_separated_by_commas():
    served = served_models(settings_for([], {"PAGEDMLX_MODEL": "a=default, b=default",
                                             "PAGEDMLX_DEFAULT_MODEL": "b"}))
    assert [c.name for c in served.configs] == ["a", "b"] and served.default.name == "b"


def test_tables_override_the_server_settings_per_model(tmp_path: Path):
    path = write(tmp_path, """
max_model_len = 4096
[models.main]
model = "default"
[models.long]
model = "default"
max-model-len = 8192
kv_cache_gb = 0.5
aliases = ["gpt-4o"]
pinned = true
""")
    served = served_models(settings_for(["--config", path, "--max-num-seqs", "4"]))
    main, long = served.configs
    assert (main.settings.max_model_len, long.settings.max_model_len) == (4096, 8192)
    assert (main.settings.kv_cache_gb, long.settings.kv_cache_gb) == (None, 0.5)
    assert main.settings.max_num_seqs == long.settings.max_num_seqs == 4
    assert (long.aliases, long.pinned, main.pinned) == (("gpt-4o",), True, False)
    assert served.router.route("GPT-4O") == "long"


@pytest.mark.parametrize("argv, table, message", [
    (["--model", "a=default", "--model", "A=default"], "", "two models are named 'A'"),
    (["--model", "a=default", "--model-alias", "x=b"], "", "no model is named 'b'"),
    (["--model", "a=default", "--pin-model", "b"], "", "--pin-model: no model is named b"),
    (["--model", "a=default", "--default-model", "b"], "", "--default-model 'b' is not"),
    (["--model", "a=/no/such/model.gguf"], "", "cannot load model /no/such/model.gguf"),
    (["--model-alias", "nothing"], "", "expected PATTERN=NAME"),
    ([], "[models.a]\nport = 1\n", r"\[models.a\] has unknown keys port"),
    ([], "[models.a]\nmax_model_len = 'long'\n", r"\[models.a\] max_model_len must be a int"),
    ([], "[models.a]\naliases = 'x'\n", "aliases must be a list of strings"),
    ([], "models = 3\n", r"must hold \[models.NAME\] tables"),
])
def test_bad_model_configurations_name_what_is_wrong(tmp_path: Path, argv, table, message):
    if table:
        argv = [*argv, "--config", write(tmp_path, table)]
    with pytest.raises(SettingsError, match=message):
        served_models(settings_for(argv))
