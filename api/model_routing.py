"""Which served model a request's `model` names (issue 20): names, aliases and alias patterns.

Order: a model's own name, then an exact alias, then the first `--model-alias` pattern that matches
(shell-style, `claude-*haiku*`), then `--default-model` unless `--strict-model-name`. Matching ignores
case, as clients spell model names either way. Pure Python: the server keeps one router, built from
the settings, and asks it for every request; loading and unloading are not its business.
"""

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class RoutingError(ValueError):
    """A bad --model / --model-alias value; the message names the flag."""


@dataclass(frozen=True)
class ModelFlag:
    name: str | None  # None: the model's own name, once it is known
    spec: str  # as --model took it before: the default model, a GGUF path, a folder, a repo id


def parse_model_flag(value: str) -> ModelFlag:
    """`NAME=SPEC` or a bare `SPEC` (a path may hold `=`: only a name without `/` counts as one)."""
    name, sep, spec = value.partition("=")
    if sep and name and "/" not in name and spec:
        return ModelFlag(name, spec)
    if sep and not spec:
        raise RoutingError(f"--model {value!r}: nothing after '='")
    return ModelFlag(None, value)


def parse_alias(value: str) -> tuple[str, str]:
    """`PATTERN=NAME` of --model-alias."""
    pattern, sep, name = value.rpartition("=")
    if not sep or not pattern or not name:
        raise RoutingError(f"--model-alias {value!r}: expected PATTERN=NAME, e.g. 'claude-*haiku*=small'")
    return pattern, name


class ModelRouter:
    def __init__(self, names: Sequence[str], aliases: Iterable[tuple[str, str]] = (),
                 default: str | None = None, strict: bool = False) -> None:
        """names: the served models; aliases: (name or pattern, model name) in precedence order;
        default: the model unknown names go to (None: the first of names)."""
        if not names:
            raise RoutingError("no model to serve")
        self.names = tuple(names)
        self._by_lower = {name.lower(): name for name in self.names}
        self._exact: dict[str, str] = {}
        self._patterns: list[tuple[str, str]] = []
        self._spelled: list[tuple[str, str]] = []  # (alias as given, model), for listing
        for pattern, target in aliases:
            if target.lower() not in self._by_lower:
                raise RoutingError(f"--model-alias {pattern}={target}: no model is named {target!r} "
                                   f"(served: {', '.join(self.names)})")
            target = self._by_lower[target.lower()]
            self._spelled.append((pattern, target))
            if any(char in pattern for char in "*?["):
                self._patterns.append((pattern.lower(), target))
            else:
                self._exact.setdefault(pattern.lower(), target)
        if default is not None and default.lower() not in self._by_lower:
            raise RoutingError(f"--default-model {default!r} is not a served model "
                               f"(served: {', '.join(self.names)})")
        self.default = self._by_lower[default.lower()] if default is not None else self.names[0]
        self.strict = strict

    def aliases_of(self, name: str) -> list[str]:
        """The names and patterns that route to model `name`, as given."""
        return list(dict.fromkeys(alias for alias, target in self._spelled if target == name))

    def route(self, requested: str | None) -> str | None:
        """The model serving `requested`; None when it names none and the router is strict."""
        if requested is None:
            return self.default
        key = requested.lower()
        if key in self._by_lower:
            return self._by_lower[key]
        if key in self._exact:
            return self._exact[key]
        for pattern, target in self._patterns:
            if fnmatch.fnmatchcase(key, pattern):
                return target
        return None if self.strict else self.default
