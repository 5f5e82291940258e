"""Request metrics of the read API, by route template (bounded: never an account id)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:
    from ledgerflow.workers.http import ASGIApp, Receive, Scope, Send

REQUESTS = Counter(
    "ledgerflow_api_requests",
    "Read API requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "ledgerflow_api_request_seconds",
    "Read API request latency from the request to the last byte of the answer, by route.",
    ["route", "method"],
    # The target is p99 <= 20 ms for a wallet and a history page: resolution below it.
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
UNMATCHED = "unmatched"  # any path no route serves: one label, however many paths are probed


def measure(app: ASGIApp) -> ASGIApp:
    """Count and time every HTTP request by the route FastAPI matched (`scope["route"]`)."""

    async def measured(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: dict[str, object]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])  # type: ignore[call-overload]
            await send(message)

        try:
            await app(scope, receive, sending)  # type: ignore[arg-type]
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = str(scope.get("method", ""))
            REQUESTS.labels(template, method, str(status)).inc()
            REQUEST_SECONDS.labels(template, method).observe(time.perf_counter() - started)

    return measured
