"""Structured logs: one JSON object per line on stdout, for the cluster's log collector.

Every line has `ts`, `level`, `logger`, `msg`, the process' `service`, the `trace_id`/`span_id`
of the current span when tracing, and the fields a call passes in `extra=`. Each decided command
gets one line (`log_outcomes`) with its ids and outcome: `flow`, `command_id`, `correlation_id`,
`idempotency_key`, `outcome`, `reason`, `result_event_id`, `trace_id`.

What never appears (docs/runbook.md, "Logs"): command content — names, phone numbers, e-mail,
national ids, bank accounts, amounts, free text — is never passed to a logger; error messages of
exceptions raised while applying commands are not logged (their class is), since a database error
can quote a row. As a second line of defence every line is scrubbed: URLs with credentials
(connection strings), `Bearer` tokens, JWTs and `password=`-style pairs are replaced, and fields
named like personal data or secrets are masked whatever their value.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import orjson
from opentelemetry import trace

from ledgerflow.workers.tracing import trace_id_of

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ledgerflow.contracts.topics import Flow
    from ledgerflow.ledger_db.apply import Incoming, Outcome

COMMANDS_LOGGER = "ledgerflow.commands"
_DECIDED = "command decided"  # the message of every command line
MASK = "***"
MESSAGE_CHARS_MAX = 4_000  # a line stays a line: long messages and tracebacks are cut

# Attributes every LogRecord has; everything else on a record came from `extra=`.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)
# Fields masked whatever their value: named like personal data or secrets.
_SENSITIVE_FIELD = re.compile(
    r"(?i)(full_?name|phone|e_?mail|national_?id|bank_?account|account_number|destination"
    r"|password|passwd|secret|token|authorization|api_?key|credential|dsn|database_url|_url$)"
)
_SCRUBS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Connection strings and any URL with credentials: the whole URL goes.
    (re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s/@'\"]*:[^\s@'\"]*@[^\s'\",]*"), MASK),
    (re.compile(r"(?i)\b(postgres(?:ql)?|kafka|redis|amqp)://[^\s'\",]*"), MASK),
    (re.compile(r"(?i)\bbearer\s+[a-z0-9._~+/=-]+"), "Bearer " + MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    (
        re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api_?key)(\s*[=:]\s*)[^\s&;,'\"]+"),
        r"\1\2" + MASK,
    ),
)


# Every pattern above needs one of these: most values (ids, codes) are let through by one search.
_MAYBE_SECRET = re.compile(r"(?i)://|bearer|eyJ|[=:]")
_sensitive_keys: dict[str, bool] = {}


def scrub(text: str) -> str:
    if _MAYBE_SECRET.search(text) is None:
        return text
    for pattern, replacement in _SCRUBS:
        text = pattern.sub(replacement, text)
    return text


def _sensitive(key: str) -> bool:
    known = _sensitive_keys.get(key)
    if known is None:
        known = _sensitive_keys[key] = _SENSITIVE_FIELD.search(key) is not None
    return known


def _json_value(key: str, value: Any) -> Any:
    if _sensitive(key):
        return MASK
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(str(value))[:MESSAGE_CHARS_MAX]


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def head(self, created: float, level: str, logger: str, msg: str) -> dict[str, Any]:
        return {
            "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
            "level": level.lower(),
            "logger": logger,
            "msg": msg,
            "service": self.service,
        }

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] | None = getattr(record, _CHECKED_FIELDS, None)
        if fields is not None:  # a command line routed through records (`log_outcomes`)
            head = self.head(record.created, record.levelname, record.name, record.getMessage())
            return self.checked_lines(head, [fields], _span_ids()).decode()
        line = self.head(
            record.created,
            record.levelname,
            record.name,
            scrub(record.getMessage())[:MESSAGE_CHARS_MAX],
        )
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = _json_value(key, value)
        if "trace_id" not in line:
            line.update(_span_ids())
        if record.exc_info and record.exc_info[0] is not None:
            line["error_class"] = record.exc_info[0].__name__
            line["exc"] = scrub(self.formatException(record.exc_info))[-MESSAGE_CHARS_MAX:]
        return orjson.dumps(line, default=str).decode()

    @staticmethod
    def checked_lines(
        head: dict[str, Any], fields: Sequence[dict[str, Any]], span: dict[str, str]
    ) -> bytes:
        """Lines whose fields were checked by their maker, one per element of `fields`,
        newline-separated without a final newline; the span's ids where a line has no trace."""
        lines = []
        for own in fields:
            line = head | own
            if "trace_id" not in line:
                line.update(span)
            lines.append(orjson.dumps(line, default=str))
        return b"\n".join(lines)


def _span_ids() -> dict[str, str]:
    """The current span's ids, or nothing outside a span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
    }


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stdout, flushed after every line; a batch's command lines are written and flushed in
    one call (`write_lines`): one write instead of one per command, even with PYTHONUNBUFFERED
    (the image sets it), where every stream write is a system call."""

    def write_lines(self, text: str) -> None:
        with self.lock or nullcontext():
            try:
                self.stream.write(text)
                self.flush()
            except Exception:  # as `emit` does: a log line never fails the batch
                self.handleError(logging.makeLogRecord({"name": COMMANDS_LOGGER}))


class _ScrubbingTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure(
    service: str, *, level: str = "INFO", fmt: str = "json", command_lines: bool = True
) -> None:
    """Route every logger (ours, FastStream's, uvicorn's, aiokafka's) to one stdout handler."""
    handler = _COMMAND_LINES.handler = _LineHandler(sys.stdout)
    # No line shows the thread or process names: don't look them up for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            _ScrubbingTextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiokafka's DEBUG lines dump whole fetch responses and produced records (personal data,
    # tokens): never below INFO, whatever the process' level.
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, root.level))
    # Libraries that install handlers of their own would print plain text next to ours.
    for name in (
        "faststream",
        "faststream.access",
        "faststream.access.kafka",
        "uvicorn",
        "uvicorn.error",
        "uvicorn.access",
    ):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    _COMMAND_LINES.level = logging.INFO if command_lines else logging.DEBUG


class _CommandLines:
    level = logging.INFO
    handler: _LineHandler | None = None  # the process' handler, once configured


_COMMAND_LINES = _CommandLines()
_commands_log = logging.getLogger(COMMANDS_LOGGER)
# A record attribute holding fields that need no further checks (not a LogRecord attribute).
_CHECKED_FIELDS = "_ledgerflow_fields"


def log_outcomes(flow: Flow, incoming: Sequence[Incoming], outcomes: Sequence[Outcome]) -> None:
    """One line per decided command: ids and outcome only, never the command's content.

    On the hot path (a line per command), so the process' handler gets the batch's lines
    formatted in one go, without a LogRecord each; only the two ids the client chose are
    scrubbed. Any other handler on the way (a test's log capture) gets records as usual.
    """
    level = _COMMAND_LINES.level
    if not _commands_log.isEnabledFor(level):
        return
    lines = []
    for item, outcome in zip(incoming, outcomes, strict=False):
        meta = item.command.meta
        fields = {
            "flow": flow.name,
            "command_id": scrub(meta.event_id) if meta.event_id else None,
            "correlation_id": scrub(meta.correlation_id) if meta.correlation_id else None,
            "idempotency_key": outcome.key,
            "outcome": outcome.kind.value,
            "reason": outcome.reason,
            "result_event_id": outcome.event_id,
        }
        trace_id = trace_id_of(item.traceparent)
        if trace_id is not None:  # the command's trace, rather than the batch span's
            fields["trace_id"] = trace_id
        lines.append(fields)
    routes = _command_routes(level)
    if routes is None:
        for record in _records(lines, level):
            _commands_log.handle(record)
        return
    ours, others = routes
    formatter = cast("JsonFormatter", ours.formatter)
    head = formatter.head(time.time(), logging.getLevelName(level), COMMANDS_LOGGER, _DECIDED)
    ours.write_lines(formatter.checked_lines(head, lines, _span_ids()).decode() + "\n")
    for record in _records(lines, level) if others else ():
        for handler in others:
            handler.handle(record)


def _records(lines: Sequence[dict[str, Any]], level: int) -> Iterator[logging.LogRecord]:
    """A command line as a record, its fields checked already (`JsonFormatter` keeps them)."""
    for fields in lines:
        record = _commands_log.makeRecord(COMMANDS_LOGGER, level, "", 0, _DECIDED, (), None)
        setattr(record, _CHECKED_FIELDS, fields)
        yield record


def _command_routes(level: int) -> tuple[_LineHandler, list[logging.Handler]] | None:
    """Where a command line goes, as `Logger.callHandlers` would send its record: the process'
    JSON handler, written to directly, and the other handlers. None when the line must go
    through records alone: no such handler on the way, or a filter that needs a record."""
    if _commands_log.disabled or _commands_log.filters:
        return None
    ours: _LineHandler | None = None
    others: list[logging.Handler] = []
    logger: logging.Logger | None = _commands_log
    while logger is not None:
        for handler in logger.handlers:
            if level < handler.level:
                continue
            if (
                handler is _COMMAND_LINES.handler
                and not handler.filters
                and isinstance(handler.formatter, JsonFormatter)
            ):
                ours = _COMMAND_LINES.handler
            else:
                others.append(handler)
        logger = logger.parent if logger.propagate else None
    return None if ours is None else (ours, others)
