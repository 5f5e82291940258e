"""Distinctive personal data goes in; no table, result event or log line gives it back in clear."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import asyncpg
import pytest

from ledgerflow.contracts.commands import BankAccount
from ledgerflow.contracts.topics import ONBOARDING
from ledgerflow.harness.identity import Issuer
from ledgerflow.ledger_db.pii import PiiVault, new_key
from ledgerflow.testkit.commands import onboarding
from ledgerflow.testkit.pipeline import event_id_of, publish, running_pipeline

pytestmark = pytest.mark.integration

NAME = "Zebulon Quixotic-Marchbanks"
PHONE = "+4915199988877"
EMAIL = "zebulon.quixotic@example.org"
NATIONAL_ID = "ZQX98765432"
ACCOUNT_NUMBER = "DE02120300000000202051"


async def rows_containing(conn: asyncpg.Connection, needle: str) -> list[str]:
    """Tables any of whose rows, as text, holds `needle` in clear (bytea shown as hex too)."""
    hits = []
    tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    for (table,) in tables:
        found = await conn.fetchval(
            f'SELECT count(*) FROM "{table}" t WHERE t::text ILIKE $1 OR t::text ILIKE $2',
            f"%{needle}%",
            f"%{needle.encode().hex()}%",
        )
        if found:
            hits.append(table)
    return hits


async def test_personal_data_is_never_stored_shown_or_logged_in_clear(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    idp = Issuer()
    keyring = f"k1:{new_key()}"
    index_key = new_key()
    settings = idp.settings(tmp_path / "jwks.json") | {
        "pii_keys": keyring,
        "pii_active_key_id": "k1",
        "pii_index_key": index_key,
    }
    async with running_pipeline(postgres, kafka, ledgerflow_db_template, tmp_path, **settings) as p:
        person = onboarding(phone_number=PHONE).model_copy(
            update={
                "full_name": NAME,
                "email": EMAIL,
                "national_id": NATIONAL_ID,
                "bank_account": BankAccount(bank_code="BYLADEM1001", account_number=ACCOUNT_NUMBER),
            }
        )
        rec = await publish(p.producer, person, ONBOARDING, p.prefix, authorization=idp.bearer("z"))
        [event] = await p.results.wait_for(event_id_of(rec))
        assert event["type"] == "onboarding.completed"
        again = person.model_copy(update={"customer_id": onboarding().customer_id})
        rec = await publish(p.producer, again, ONBOARDING, p.prefix, authorization=idp.bearer("y"))
        [taken] = await p.results.wait_for(event_id_of(rec))
        assert taken["data"]["reason"] == "phone_number_taken", "uniqueness works on the HMAC"

        conn = await asyncpg.connect(p.database.admin_url)
        try:
            for value in (NAME, PHONE, EMAIL, NATIONAL_ID, ACCOUNT_NUMBER):
                assert await rows_containing(conn, value) == [], value
            row = await conn.fetchrow(
                "SELECT * FROM customer_pii WHERE customer_id = $1", person.customer_id
            )
        finally:
            await conn.close()
        vault = PiiVault.from_text(keyring, "k1", index_key)
        assert vault.decrypt(person.customer_id, "full_name", row["full_name"], "k1") == NAME
        assert row["key_id"] == "k1"

        for value in (NAME, PHONE, EMAIL, NATIONAL_ID, ACCOUNT_NUMBER):
            assert not any(value in str(e) for e in p.results.events), value
        logs = "".join(proc.log_path.read_text(errors="replace") for proc in [*p.workers, p.relay])
        for value in (NAME, PHONE, EMAIL, NATIONAL_ID, ACCOUNT_NUMBER, keyring, index_key):
            assert value not in logs
        assert "eyJ" not in logs, "no token in the logs"

        # Rotation: a new active key; every row moves to it; the old key can then go.
        rotated_keyring = f"{keyring},k2:{new_key()}"
        env = p.env | {
            "LEDGERFLOW_PII_KEYS": rotated_keyring,
            "LEDGERFLOW_PII_ACTIVE_KEY_ID": "k2",
            "LEDGERFLOW_MIGRATION_DATABASE_URL": p.database.owner_url,
        }
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "ledgerflow.cli", "pii", "rotate-key"],
            env=env,
            capture_output=True,
            check=True,
            timeout=60,
        )
        assert b"re-encrypted 1 customer" in out.stdout
        conn = await asyncpg.connect(p.database.admin_url)
        try:
            row = await conn.fetchrow(
                "SELECT * FROM customer_pii WHERE customer_id = $1", person.customer_id
            )
        finally:
            await conn.close()
        only_k2 = PiiVault.from_text(rotated_keyring.split(",")[1], "k2", index_key)
        assert row["key_id"] == "k2"
        assert only_k2.decrypt(person.customer_id, "email", row["email"], "k2") == EMAIL
