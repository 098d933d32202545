"""HTTP requests by route and status: a middleware outside every other, so it sees final statuses."""

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter

from api.context import CONTEXT
from api.metrics.family import Families

CLIENT_CLOSED = 499  # nginx's status for a client that left before the response began
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpMetrics:
    def __init__(self, families: Families) -> None:
        self._values = families.values
        self._requests = families.family(
            Counter, "pagedmlx:http_requests", "HTTP requests by route pattern, method and status "
            f"({CLIENT_CLOSED}: the client left before the response began).",
            ("route", "method", "status"))

    def count(self, route: str, method: str, status: int) -> None:
        self._requests.labels(*self._values, route, method, str(status)).inc()


@web.middleware
async def http_metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"  # bounded label values
    status = CLIENT_CLOSED  # kept when the handler is cancelled: the client went away
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:  # the error middleware lets redirects and the like through
        status = error.status
        raise
    finally:
        request.app[CONTEXT].metrics.http.count(route, request.method, status)
