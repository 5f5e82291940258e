"""Whose fault a failed batch is: the infrastructure's (wait and retry) or possibly a command's.

A command is dead-lettered or rejected only for a fault in itself (DESIGN §7). Everything the
workers cannot prove to be the command's fault is the infrastructure's: it is retried with
bounded backoff, readiness false meanwhile, and applied once the fault heals. Unknown errors
lean toward retry (docs/decisions/error-classification.md): a wrong retry costs latency and
pages someone; a wrong dead letter loses a client's answer for good.

Only errors of our own code and PostgreSQL data/integrity errors (ledger_db/errors.py) are
suspects, and even a suspect record is dead-lettered only when it fails alone while other
records of its flow apply (workers/app.py).
"""

from __future__ import annotations

import asyncpg

from ledgerflow.ledger_db.errors import may_be_the_commands_fault

# Exceptions from these libraries are their I/O failing (connections, protocol, brokers), never
# a verdict on one command's content, whatever their class: new classes in a later release
# must not turn into dead letters.
INFRASTRUCTURE_MODULES = ("asyncpg", "aiokafka", "kafka", "ssl", "socket", "httpx", "httpcore")
CAUSES_FOLLOWED_MAX = 8  # bound on walking `raise ... from` chains


class InfrastructureFault(Exception):  # noqa: N818 - a fault, not an error of the caller
    """Raised by our own code for a failure outside the command (identity provider, disk...)."""


def is_infrastructure(error: BaseException) -> bool:
    """True unless the error could be one command's fault."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < CAUSES_FOLLOWED_MAX:
        if _infrastructure_itself(current):
            return True
        current = current.__cause__
        seen += 1
    return False


def _infrastructure_itself(error: BaseException) -> bool:
    if isinstance(error, InfrastructureFault | OSError | TimeoutError | MemoryError):
        return True
    if isinstance(error, asyncpg.PostgresError):
        return not may_be_the_commands_fault(error)
    module = type(error).__module__.split(".", 1)[0]
    return module in INFRASTRUCTURE_MODULES
