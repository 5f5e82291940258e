"""A local identity provider's JWKS endpoint for tests: 127.0.0.1, a free port, a thread.

The test switches what it answers (the JWKS, an HTML page with status 200, a 500) and how slowly,
and counts the requests it received: the workers' fetches, seen from the provider's side.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Literal

import orjson

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any, Self

Answer = Literal["jwks", "html", "error"]
HTML_PAGE = b"<!doctype html><html><body><h1>Sign in</h1><p>Maintenance</p></body></html>"


@dataclass(slots=True)
class JwksServer:
    """Serves `jwks` at `url` until stopped; `answer` and `delay_s` may change at any time."""

    jwks: dict[str, Any]
    answer: Answer = "jwks"
    delay_s: float = 0.0
    requests: int = 0
    request_times: list[float] = field(default_factory=list)  # time.monotonic() of each
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"

    def start(self) -> Self:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with provider._lock:
                    provider.requests += 1
                    provider.request_times.append(time.monotonic())
                    answer, delay_s = provider.answer, provider.delay_s
                if delay_s:
                    time.sleep(delay_s)
                if answer == "jwks":
                    status, kind, body = 200, "application/json", orjson.dumps(provider.jwks)
                elif answer == "html":
                    status, kind, body = 200, "text/html; charset=utf-8", HTML_PAGE
                else:
                    status, kind, body = 500, "text/plain", b"internal error\n"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Quiet: the test counts requests itself."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def requests_since(self, since: float) -> int:
        with self._lock:
            return sum(1 for t in self.request_times if t >= since)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
