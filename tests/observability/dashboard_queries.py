"""Reads the PromQL queries out of a Grafana dashboard JSON model."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def board_queries(path: str | Path) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel of the board at `path`."""
    board = json.loads(Path(path).read_text())
    return [(panel.get("title", ""), target["expr"])
            for panel in iter_panels(board.get("panels", []))
            for target in panel.get("targets", []) if "expr" in target]


def fill_variables(expr: str, model_name: str, window: str) -> str:
    """`expr` with Grafana's $model_name and $__rate_interval (either form) replaced."""
    for name, value in (("model_name", model_name), ("__rate_interval", window)):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr
