"""`ledgerflow api`: the wallet app's read side over HTTP (DESIGN.md §6), FastAPI on uvicorn.

Stateless (any number of replicas), read-only (role `ledgerflow_reader`, read-only transactions,
so it can serve from a hot standby). Each route is a thin adapter over ledger_db/reads.py, the
queries the CLI's `history` and `statement` run too. Tokens are verified by the workers'
Authenticator (one implementation): a subject reads the wallets it owns and the commands it
sent; scope `ledger:read` reads any. A wallet or command the reader may not see is answered 404,
exactly like one that does not exist. Infrastructure faults (database, identity provider) are
503 with Retry-After, never a 4xx.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at run time,
# the local `Caller` and `Conn` aliases included.
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, cast
from uuid import UUID

import asyncpg
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledgerflow.api import metrics
from ledgerflow.api.models import (
    BalanceAt,
    CloudEvent,
    EntriesPage,
    Entry,
    Problem,
    Statement,
    Wallet,
)
from ledgerflow.ledger_db import reads
from ledgerflow.ledger_db.cursor import BadCursorError, CursorCodec
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.workers import http
from ledgerflow.workers.app import authenticator
from ledgerflow.workers.auth import (
    Authenticator,
    IdentityProviderUnavailable,
    Principal,
    Refusal,
)
from ledgerflow.workers.settings import Settings

log = logging.getLogger("ledgerflow.api")

READ_SCOPE = "ledger:read"
API_VERSION = "1.0.0"
PROBLEM_JSON = "application/problem+json"
CLOUDEVENTS_JSON = "application/cloudevents+json"
CSV = "text/csv"
RETRY_AFTER_S = 1
_PROBLEM_BASE = "https://ledgerflow.dev/problems/"
_INSTANT = (
    f"RFC 3339 with a time zone, from {reads.TIME_MIN.date()} to {reads.TIME_MAX.date()} "
    "(else 400)."
)
_FROM = f"Entries posted at or after this instant. {_INSTANT}"
_TO = f"Entries posted before this instant. {_INSTANT}"


class ProblemError(Exception):
    """An answer that is a problem (RFC 9457), raised from a route."""

    def __init__(
        self, status: int, code: str, title: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.headers = headers or {}


def _not_found(what: str) -> ProblemError:
    return ProblemError(404, "not_found", "Not found", f"no {what} with this id is visible to you")


def _bad_request(code: str, detail: str) -> ProblemError:
    return ProblemError(400, code, "Bad request", detail)


def _unavailable(detail: str) -> ProblemError:
    return ProblemError(
        503, "unavailable", "Service unavailable", detail, {"Retry-After": str(RETRY_AFTER_S)}
    )


def _problem_response(problem: ProblemError, request: Request) -> JSONResponse:
    body = Problem(
        type=_PROBLEM_BASE + problem.code,
        title=problem.title,
        status=problem.status,
        detail=problem.detail,
        instance=request.url.path,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Invalid parameters or cursor.",
        401: "No token, or a token that is not valid.",
        404: "Unknown, or not visible to the caller.",
        406: "The Accept header asks for a type this route does not serve.",
        503: "Database or identity provider unavailable: retry after the Retry-After seconds.",
    }
    return {
        status: {"model": Problem, "description": described[status], "content": {PROBLEM_JSON: {}}}
        for status in statuses
    }


_COMMON = _problems(400, 401, 404, 503)


@dataclass(slots=True)
class ReadSide:
    """What every request uses: the pool, the token check, the cursor key."""

    settings: Settings
    auth: Authenticator | None
    cursors: CursorCodec
    pool: asyncpg.Pool | None = None

    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self.pool is None:
            raise _unavailable("the API is starting")
        try:
            async with self.pool.acquire() as conn:
                yield cast("asyncpg.Connection", conn)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as error:
            raise _unavailable(f"database unavailable: {type(error).__name__}") from None
        except asyncpg.QueryCanceledError:
            raise _unavailable("the database took too long to answer") from None
        except (asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError) as error:
            # A missing grant or table (an upgrade in progress) is the deployment's, not the
            # request's: the client should retry, operations should look (readiness says so).
            raise _unavailable(f"database not ready for reads: {type(error).__name__}") from None

    async def principal(self, authorization: str | None) -> Principal | None:
        """The caller; None when authentication is off (every wallet is readable)."""
        if self.auth is None:
            return None
        try:
            await self.auth.ensure_keys([authorization])
            verified = self.auth.authenticate(authorization)
        except IdentityProviderUnavailable as error:
            raise _unavailable(str(error)) from None
        if isinstance(verified, Refusal):
            raise ProblemError(
                401,
                "unauthorized",
                "Unauthorized",
                verified.detail,
                {"WWW-Authenticate": 'Bearer realm="ledgerflow"'},
            )
        return verified

    async def ready(self) -> str | None:
        if self.pool is None:
            return "starting"
        try:
            await self.pool.fetchval("SELECT 1 FROM balances LIMIT 1")
        except (OSError, asyncpg.PostgresError) as error:
            return f"database unavailable for reads: {type(error).__name__}"
        return None


def may_read(who: Principal | None, owner: str | None) -> bool:
    """Its owner, or scope ledger:read; everyone when authentication is off."""
    if who is None:
        return True
    return READ_SCOPE in who.scopes or (owner is not None and owner == who.subject)


def _instant(value: datetime | None, name: str, default: datetime) -> datetime:
    if value is None:
        return default
    if value.tzinfo is None or value.utcoffset() is None:
        raise _bad_request("invalid_request", f"`{name}` needs a time zone (RFC 3339)")
    if not reads.TIME_MIN <= value <= reads.TIME_MAX:
        raise _bad_request(
            "invalid_request",
            f"`{name}` must lie between {reads.TIME_MIN.isoformat()} and "
            f"{reads.TIME_MAX.isoformat()}",
        )
    return value


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    first = _instant(start, "from", reads.TIME_MIN)
    last = _instant(end, "to", reads.TIME_MAX)
    if first >= last:
        raise _bad_request("invalid_request", "`from` must be before `to`")
    return first, last


_JSON_TYPES = ("application/json", "application/*", "*/*")
_CSV_TYPES = (CSV, "text/*")


def wants_csv(accept: str) -> bool:
    """CSV when the client ranks text/csv above JSON (a plain `Accept: text/csv` does); JSON
    when it asks for nothing, or for JSON or anything; 406 when it accepts neither."""
    if not accept.strip():
        return False
    ranks: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                with contextlib.suppress(ValueError):
                    quality = float(value)
        ranks.setdefault(media.lower(), quality)
    json_q = max((ranks.get(t, 0.0) for t in _JSON_TYPES), default=0.0)
    csv_q = max((ranks.get(t, 0.0) for t in _CSV_TYPES), default=0.0)
    if json_q <= 0 and csv_q <= 0:
        raise ProblemError(
            406,
            "not_acceptable",
            "Not acceptable",
            "this route serves application/json or text/csv",
        )
    return csv_q > json_q


def build_api(settings: Settings) -> FastAPI:
    """The FastAPI app (routes, problems, OpenAPI); `asgi_app` adds the probes and metrics."""
    side = ReadSide(
        settings=settings,
        auth=authenticator(settings),
        cursors=CursorCodec.from_text(settings.api_cursor_key.get_secret_value()),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if side.cursors.is_dev:
            log.warning("page cursors are signed with the public development key")
        # No connection at start: a database that is down makes the API unready, not dead.
        side.pool = await create_pool(
            settings.read_database_url.get_secret_value(),
            size_min=0,
            size_max=settings.api_db_pool_size_max,
            read_only=True,
            statement_timeout_ms=settings.api_statement_timeout_ms,
            lock_timeout_ms=settings.lock_timeout_ms,
            idle_in_transaction_timeout_ms=settings.idle_in_transaction_timeout_ms,
        )
        try:
            yield
        finally:
            pool, side.pool = side.pool, None
            await pool.close()

    app = FastAPI(
        title="Ledgerflow read API",
        version=API_VERSION,
        description=(
            "Balances, history, statements and command outcomes of a Ledgerflow ledger "
            "(DESIGN.md §6). Money is integers of minor units. Errors are RFC 9457 problems."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/v1/openapi.json",
    )
    app.state.read_side = side
    bearer = HTTPBearer(auto_error=False, description="The identity provider's JWT.")

    async def caller(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        request: Request,
    ) -> Principal | None:
        del credentials  # documents the scheme; the header is verified whole below
        return await side.principal(request.headers.get("authorization"))

    # Type aliases, named like types.
    Caller = Annotated[Principal | None, Depends(caller)]  # noqa: N806
    Conn = Annotated[asyncpg.Connection, Depends(side.connection)]  # noqa: N806

    async def readable(conn: asyncpg.Connection, who: Principal | None, account_id: UUID) -> str:
        """The wallet's currency, or 404 when the caller may not read it."""
        owner = await reads.wallet_owner(conn, account_id)
        if owner is None or not may_read(who, owner.subject):
            raise _not_found("wallet")
        return owner.currency

    @app.exception_handler(ProblemError)
    async def on_problem(request: Request, problem: ProblemError) -> JSONResponse:
        return _problem_response(problem, request)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in error.errors()[:5]
        )
        return _problem_response(_bad_request("invalid_request", where[:500]), request)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _problem_response(
            ProblemError(error.status_code, code, str(error.detail), str(error.detail)), request
        )

    @app.get(
        "/v1/wallets/{account_id}",
        responses=_COMMON,
        summary="A wallet: balance, held, available, tier and outgoing totals",
    )
    async def get_wallet(account_id: UUID, who: Caller, conn: Conn) -> Wallet:
        view = await reads.wallet(conn, account_id)
        if view is None or not may_read(who, view.owner):
            raise _not_found("wallet")
        return Wallet.of(view)

    @app.get(
        "/v1/wallets/{account_id}/entries",
        responses=_COMMON,
        summary="The wallet's entries, newest first, a page at a time",
    )
    async def get_entries(
        account_id: UUID,
        who: Caller,
        conn: Conn,
        limit: Annotated[int, Query(ge=1, le=reads.PAGE_LIMIT_MAX)] = reads.PAGE_LIMIT_DEFAULT,
        cursor: Annotated[str | None, Query(max_length=256)] = None,
        start: Annotated[datetime | None, Query(alias="from", description=_FROM)] = None,
        end: Annotated[datetime | None, Query(alias="to", description=_TO)] = None,
    ) -> EntriesPage:
        first, last = _range(start, end)
        await readable(conn, who, account_id)
        before = None
        if cursor is not None:
            try:
                before = side.cursors.decode(cursor, account_id, first, last)
            except BadCursorError as error:
                raise _bad_request("bad_cursor", str(error)) from None
        page = await reads.history(
            conn, account_id, limit=limit, before=before, start=first, end=last
        )
        next_cursor = (
            side.cursors.encode(account_id, first, last, page.next_position)
            if page.next_position is not None
            else None
        )
        return EntriesPage(
            account_id=account_id,
            items=[Entry.of(line) for line in page.lines],
            next_cursor=next_cursor,
        )

    @app.get(
        "/v1/wallets/{account_id}/statement",
        response_model=Statement,
        responses={
            200: {"content": {CSV: {"schema": {"type": "string"}}}},
            **_COMMON,
            **_problems(406),
            422: {
                "model": Problem,
                "description": "More entries in the range than one statement carries.",
                "content": {PROBLEM_JSON: {}},
            },
        },
        summary="Opening and closing balance, totals and entries of a range (JSON or CSV)",
    )
    async def get_statement(
        account_id: UUID,
        who: Caller,
        conn: Conn,
        request: Request,
        start: Annotated[datetime, Query(alias="from", description=_FROM)],
        end: Annotated[datetime, Query(alias="to", description=_TO)],
    ) -> Statement | Response:
        first, last = _range(start, end)
        if last - first > timedelta(days=reads.STATEMENT_DAYS_MAX):
            raise _bad_request(
                "range_too_long", f"a statement covers at most {reads.STATEMENT_DAYS_MAX} days"
            )
        currency = await readable(conn, who, account_id)
        try:
            statement = await reads.statement(conn, account_id, currency, first, last)
        except reads.StatementTooLargeError as error:
            raise ProblemError(
                422, "statement_too_large", "Statement too large", str(error)
            ) from None
        if wants_csv(request.headers.get("accept", "")):
            return Response(reads.statement_csv(statement), media_type=f"{CSV}; charset=utf-8")
        return Statement.of(statement)

    @app.get(
        "/v1/wallets/{account_id}/balance",
        responses=_COMMON,
        summary="The posted balance at an instant",
    )
    async def get_balance_at(
        account_id: UUID,
        who: Caller,
        conn: Conn,
        at: Annotated[datetime, Query(description=f"The instant. {_INSTANT}")],
    ) -> BalanceAt:
        instant = _instant(at, "at", reads.TIME_MAX)
        currency = await readable(conn, who, account_id)
        balance = await reads.balance_at(conn, account_id, instant)
        return BalanceAt(account_id=account_id, currency=currency, at=instant, balance=balance)

    @app.get(
        "/v1/commands/{type}/{id}",
        response_class=Response,
        responses={
            200: {
                "description": "The result event exactly as the relay published it.",
                "content": {CLOUDEVENTS_JSON: {"schema": CloudEvent.model_json_schema()}},
            },
            **_COMMON,
        },
        summary="The recorded outcome of a command, for a client that missed its result",
    )
    async def get_command(
        type: Annotated[  # noqa: A002 (the path's own word)
            str,
            Path(
                max_length=64,
                description="The command's CloudEvents type, e.g. transfer.initiated.",
            ),
        ],
        id: UUID,  # noqa: A002
        who: Caller,
        conn: Conn,
    ) -> Response:
        flow = reads.command_flow(type)
        if flow is None:
            raise _not_found(
                f"command type {type[:64]!r} (one of {', '.join(reads.command_types())})"
            )
        outcome = await reads.command_outcome(conn, flow, id)
        if outcome is None or not may_read(who, outcome.subject):
            raise _not_found("command")
        return Response(outcome.payload, media_type=CLOUDEVENTS_JSON)

    _strip_validation_errors(app)
    return app


def _strip_validation_errors(app: FastAPI) -> None:
    """FastAPI documents a 422 with its own error model on every route with parameters; ours
    answer invalid parameters 400 with a problem, so the document says that instead. FastAPI
    also files a response model under the route's media type (application/json): a problem's
    schema belongs to application/problem+json, the only type problems are served as."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = original()
        for path in document.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                validation = responses.get("422", {}).get("content", {}).get("application/json")
                # FastAPI's own 422 only: a route's documented 422 (a problem) stays.
                if validation is not None and validation.get("schema") == {
                    "$ref": "#/components/schemas/HTTPValidationError"
                }:
                    del responses["422"]
                for response in responses.values():
                    content = response.get("content", {})
                    if content.get(PROBLEM_JSON) == {} and "application/json" in content:
                        content[PROBLEM_JSON] = content.pop("application/json")
        schemas = document.get("components", {}).get("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def asgi_app(settings: Settings) -> "http.ASGIApp":
    """The API with /healthz, /readyz and /metrics beside it (like every process), and the
    request metrics around it."""
    api = build_api(settings)
    side: ReadSide = api.state.read_side
    probes = dict(http.routes(side.ready))
    measured = metrics.measure(api)

    async def app(scope: "http.Scope", receive: "http.Receive", send: "http.Send") -> None:
        handler = probes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if handler is not None:
            await handler(scope, receive, send)
            return
        await measured(scope, receive, send)

    return app
