"""/healthz, /readyz and /metrics as plain ASGI apps, shared by workers and the relay."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from prometheus_client import make_asgi_app

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Scope = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
    Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

READINESS_TIMEOUT_S = 2.0


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def healthz(scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG001
    """Liveness stays trivial: a process that answers is alive."""
    await _respond(send, 200, b"ok\n")


def readyz(check: Callable[[], Awaitable[str | None]]) -> ASGIApp:
    """Ready when `check` returns None within the timeout; its string says what is missing."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG001
        try:
            problem = await asyncio.wait_for(check(), READINESS_TIMEOUT_S)
        except (TimeoutError, OSError) as error:
            problem = f"readiness check failed: {type(error).__name__}"
        if problem is None:
            await _respond(send, 200, b"ready\n")
        else:
            await _respond(send, 503, problem.encode() + b"\n")

    return app


def routes(check: Callable[[], Awaitable[str | None]]) -> list[tuple[str, ASGIApp]]:
    return [("/healthz", healthz), ("/readyz", readyz(check)), ("/metrics", make_asgi_app())]


def router(table: list[tuple[str, ASGIApp]], lifespan: ASGIApp) -> ASGIApp:
    """A minimal path router for processes that have no FastStream app (the relay)."""
    by_path = dict(table)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send)
            return
        handler = by_path.get(scope.get("path", ""))
        if handler is None:
            await _respond(send, 404, b"not found\n")
            return
        await handler(scope, receive, send)

    return app
