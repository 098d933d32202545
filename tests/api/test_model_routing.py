"""Routing a request's model name to a served model (api/model_routing.py)."""

import pytest

from api.model_routing import ModelFlag, ModelRouter, RoutingError, parse_alias, parse_model_flag


def test_model_flags_with_and_without_a_name():
    assert parse_model_flag("small=/models/tiny.gguf") == ModelFlag("small", "/models/tiny.gguf")
    assert parse_model_flag("default") == ModelFlag(None, "default")
    assert parse_model_flag("HuggingFaceTB/SmolLM2-135M") == ModelFlag(None, "HuggingFaceTB/SmolLM2-135M")
    assert parse_model_flag("/models/a=b.gguf") == ModelFlag(None, "/models/a=b.gguf")  # a path, no name
    with pytest.raises(RoutingError, match="nothing after"):
        parse_model_flag("small=")


def test_alias_flags():
    assert parse_alias("claude-*haiku*=small") == ("claude-*haiku*", "small")
    for bad in ("small", "=small", "claude-*="):
        with pytest.raises(RoutingError, match="PATTERN=NAME"):
            parse_alias(bad)


def router(**kwargs) -> ModelRouter:
    aliases = [("gpt-4o", "main"), ("claude-*haiku*", "small"), ("claude-*", "main")]
    return ModelRouter(["main", "small"], aliases, **kwargs)


@pytest.mark.parametrize("requested, served", [
    ("main", "main"), ("SMALL", "small"),                                  # names, any case
    ("gpt-4o", "main"), ("GPT-4o", "main"),                                # exact aliases
    ("claude-haiku-4-5", "small"), ("claude-3-5-haiku-20241022", "small"), # the first pattern that matches
    ("claude-sonnet-4-5", "main"),
    ("llama3", "main"), (None, "main"),                                    # unknown or none: the default
])
def test_names_aliases_patterns_then_the_default(requested, served):
    assert router().route(requested) == served


def test_the_default_model_and_strict_names():
    assert router(default="small").route("llama3") == "small"
    assert router(default="small").route(None) == "small"
    strict = router(strict=True)
    assert strict.route("llama3") is None
    assert strict.route("claude-haiku-4-5") == "small"  # aliases still route
    assert strict.route(None) == "main"


def test_bad_configurations_are_refused_with_the_flag_named():
    with pytest.raises(RoutingError, match="--model-alias x=nope: no model is named 'nope'"):
        ModelRouter(["main"], [("x", "nope")])
    with pytest.raises(RoutingError, match="--default-model 'nope'"):
        ModelRouter(["main"], default="nope")
    with pytest.raises(RoutingError, match="no model"):
        ModelRouter([])
