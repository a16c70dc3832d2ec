"""``GET /metrics`` on the API port (Prometheus text format) and the middleware that counts the API's
HTTP requests by endpoint and status. The metrics themselves are ``metrics.ServerMetrics``.

With ``--api-key`` the page needs the key, as everything on ``/health`` beyond its status does:

    curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/metrics
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.params import Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .api_errors import ERROR_RESPONSES
from .app_state import App
from .metrics import ServerMetrics

OTHER_ENDPOINT = "other"  # paths no route answers: one label, however many paths are tried


class RequestCounter:
    """Plain ASGI middleware: counts each HTTP request by its route's path and the status it got."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            counted = True
            route = scope.get("route")  # set by the router when a route matched
            self.metrics.http_requests.labels(getattr(route, "path", None) or OTHER_ENDPOINT, str(status)).inc()

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start" and not counted:
                count(message["status"])  # before the client has it: a scrape after the response counts it
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if not counted:  # the app raised before it answered: the client gets a 500
                count(500)


def add_metrics(app: App, api: FastAPI, guard: Sequence[Depends]) -> None:
    """Serve ``/metrics`` on ``api`` behind ``guard`` (the key check, if any) and count its requests."""
    api.add_middleware(RequestCounter, metrics=app.metrics)

    @api.api_route(
        "/metrics",
        methods=["GET", "HEAD"],
        dependencies=list(guard),
        responses={
            200: {"description": "Prometheus text format.", "content": {"text/plain": {}}},
            401: ERROR_RESPONSES[401],
        },
        summary="Prometheus metrics",
    )
    def metrics() -> Response:
        return Response(generate_latest(app.metrics.registry), media_type=CONTENT_TYPE_LATEST)
