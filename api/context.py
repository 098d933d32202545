"""What the server holds beside its models: the settings, the models, metrics, keys, lifecycle."""

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from api.settings import Settings

if TYPE_CHECKING:
    from api.metrics import ServerMetrics
    from api.model_set import ModelSet


@dataclass
class ServerContext:
    settings: Settings
    models: "ModelSet"
    metrics: "ServerMetrics"
    api_keys: tuple[str, ...] = ()  # accepted on /v1/*, each a tenant; none: no key is checked
    started_at: float = field(default_factory=time.time)
    shutting_down: bool = False
    inflight: set[asyncio.Task] = field(default_factory=set)    # handler tasks, for shutdown


CONTEXT = web.AppKey("context", ServerContext)
