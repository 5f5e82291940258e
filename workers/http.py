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

    # The check runs as a task that is waited for, never cancelled: cancelling an asyncpg query
    # opens a new connection to send the cancel request, which hangs while the database is
    # unreachable — exactly when the answer matters. One check runs at a time.
    pending: list[asyncio.Task[str | None]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG001
        if not pending or pending[0].done():
            pending[:] = [asyncio.ensure_future(check())]
        task = pending[0]
        done, _ = await asyncio.wait({task}, timeout=READINESS_TIMEOUT_S)
        if not done:
            problem: str | None = "readiness check timed out (database or broker unresponsive)"
        elif task.exception() is not None:
            problem = f"readiness check failed: {type(task.exception()).__name__}"
        else:
            problem = task.result()
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
