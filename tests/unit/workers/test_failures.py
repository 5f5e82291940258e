"""Whose fault an error is: only a command's own data may be, everything else waits and retries."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)

from ledgerflow.ledger_db.errors import may_be_the_commands_fault, sqlstate
from ledgerflow.workers.auth import Refusal
from ledgerflow.workers.batch import InjectedFault, PoisonUnproven
from ledgerflow.workers.failures import InfrastructureFault, is_infrastructure


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InsufficientPrivilegeError("permission denied for table outbox"),  # 42501
        asyncpg.UndefinedTableError('relation "wallet_outgoing" does not exist'),  # 42P01
        asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only tx"),  # 25006
        asyncpg.DiskFullError("could not extend file"),  # 53100
        asyncpg.UniqueViolationError("duplicate key"),  # 23505: a race, retries resolve it
        asyncpg.AdminShutdownError("terminating connection"),  # 57P01
        asyncpg.DeadlockDetectedError("deadlock"),  # 40P01
        asyncpg.UndefinedColumnError("column does not exist"),  # 42703: an upgrade in flight
        asyncpg.InternalServerError("XX000"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.exceptions.InternalClientError("protocol"),
        KafkaConnectionError(),
        TopicAuthorizationFailedError(),
        MessageSizeTooLargeError(),
        OSError(28, "No space left on device"),
        ConnectionResetError(),
        TimeoutError(),
        InfrastructureFault("identity provider answered HTML"),
        PoisonUnproven("nothing else applied"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_infrastructure_faults_are_never_the_commands(error: BaseException) -> None:
    assert is_infrastructure(error)
    assert not may_be_the_commands_fault(error)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.NumericValueOutOfRangeError("bigint out of range"),  # 22003
        asyncpg.CheckViolationError("balances_balance_check"),  # 23514
        asyncpg.ForeignKeyViolationError("postings_account_id_fkey"),  # 23503
        InjectedFault("a handler bug"),
        ValueError("bug"),
        AssertionError("invariant"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_data_errors_and_our_own_bugs_are_only_suspects(error: BaseException) -> None:
    assert not is_infrastructure(error)


def test_an_error_raised_from_an_infrastructure_fault_is_the_infrastructures() -> None:
    error = RuntimeError("wrapped")
    error.__cause__ = ConnectionRefusedError()
    assert is_infrastructure(error)


def test_sqlstate_is_read_from_postgres_errors_only() -> None:
    assert sqlstate(asyncpg.DiskFullError("x")) == "53100"
    assert sqlstate(ValueError("x")) is None
    assert may_be_the_commands_fault(asyncpg.CheckViolationError("x"))


def test_an_unknown_postgres_class_leans_toward_retry() -> None:
    class FutureClassError(asyncpg.PostgresError):
        sqlstate = "ZZ001"

    assert is_infrastructure(FutureClassError("x"))


def test_a_refusal_is_an_answer_not_an_exception() -> None:
    # Refused tokens become `unauthorized` outcomes; they never reach this classification.
    assert not isinstance(Refusal("x"), BaseException)
