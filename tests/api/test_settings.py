import pytest

from api.cli import build_parser, settings_from_args
from api.settings import Settings, SettingsError, env_name, flag_name, options


def settings_for(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]), environ or {})


def test_defaults_bind_loopback():
    settings = settings_for([])
    assert settings == Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8081)


def test_flags_beat_environment_which_beats_config_file(tmp_path):
    config = tmp_path / "pagedmlx.toml"
    config.write_text('port = 9000\nmax-num-seqs = 4\nkeepalive_s = 1\napi_key = "from-file"\n')
    environ = {"PAGEDMLX_PORT": "9001", "PAGEDMLX_MAX_NUM_SEQS": "8"}
    settings = settings_for(["--config", str(config), "--port", "9002"], environ)
    assert settings.port == 9002
    assert settings.max_num_seqs == 8
    assert settings.keepalive_s == 1.0
    assert settings.api_key == "from-file"


def test_config_file_can_come_from_the_environment(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("strict_max_tokens = true\n")
    assert settings_for([], {"PAGEDMLX_CONFIG": str(config)}).strict_max_tokens is True


@pytest.mark.parametrize("raw, expected", [("1", True), ("true", True), ("off", False)])
def test_boolean_environment_values(raw: str, expected: bool):
    assert settings_for([], {"PAGEDMLX_STRICT_MODEL_NAME": raw}).strict_model_name is expected


def test_boolean_flag_overrides_environment_both_ways():
    environ = {"PAGEDMLX_STRICT_MAX_TOKENS": "yes"}
    assert settings_for(["--no-strict-max-tokens"], environ).strict_max_tokens is False
    assert settings_for(["--strict-max-tokens"]).strict_max_tokens is True


@pytest.mark.parametrize(
    "argv, environ, config, message",
    [
        ([], {"PAGEDMLX_PORT": "http"}, None, "--port: expected int"),
        (["--port", "0"], {}, None, "--port must be positive"),
        (["--kv-cache-gb", "-1"], {}, None, "--kv-cache-gb must be positive"),
        ([], {"PAGEDMLX_LOG_LEVEL": "loud"}, None, "--log-level: 'loud' is not one of"),
        ([], {}, "colour = 'red'\n", "unknown key 'colour'"),
        ([], {}, "port = '80'\n", "port must be a int"),
        ([], {}, "port = true\n", "port must be a int"),
        ([], {}, "port = \n", "not valid TOML"),
    ],
)
def test_bad_values_name_the_option(tmp_path, argv, environ, config, message):
    if config is not None:
        path = tmp_path / "bad.toml"
        path.write_text(config)
        argv = [*argv, "--config", str(path)]
    with pytest.raises(SettingsError, match=message):
        settings_for(argv, environ)


def test_help_documents_every_flag_with_its_environment_variable():
    text = " ".join(build_parser().format_help().split())
    for option in options():
        assert flag_name(option.name) in text
        assert env_name(option.name) in text.replace(" ", "")
