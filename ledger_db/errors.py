"""Whose fault a database error is, by SQLSTATE (PostgreSQL Appendix A), never by a class list.

Only two classes can be a command's fault: 22 (data exception, e.g. a value out of range) and 23
(integrity constraint violation, e.g. a CHECK a command breaks). Even those are only suspects:
the workers dead-letter a command for them only when it fails alone while other records of its
flow apply (workers/failures.py). 23505 (unique violation) is a race between replicas that a
retry resolves, so it is the infrastructure's, like every other class: 08 connection, 25006
read-only after a failover, 40 rollback, 42501 / 42P01 privilege or a table missing during a
deploy, 53 insufficient resources (53100 disk full), 57 operator intervention, 58 system errors,
XX internal errors, and classes PostgreSQL may add later.
"""

from __future__ import annotations

import asyncpg

COMMAND_SUSPECT_CLASSES = frozenset({"22", "23"})
UNIQUE_VIOLATION = "23505"


def sqlstate(error: BaseException) -> str | None:
    """The five-character SQLSTATE of a PostgreSQL error, None for anything else."""
    if isinstance(error, asyncpg.PostgresError):
        code = getattr(error, "sqlstate", None)
        return code if isinstance(code, str) and len(code) == 5 else None
    return None


def may_be_the_commands_fault(error: BaseException) -> bool:
    """True only for a data or integrity error that a command's values could have caused."""
    code = sqlstate(error)
    if code is None:
        return False
    return code[:2] in COMMAND_SUSPECT_CLASSES and code != UNIQUE_VIOLATION
