"""The read API as a process, called over HTTP, on a ledger the real workers wrote (DESIGN.md §6).

One pipeline for the module (signed commands, authentication on, `ledgerflow api` beside the
workers and the relay); each test opens wallets of its own.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio

from ledgerflow.harness.identity import customer_subject
from ledgerflow.harness.results import publish
from ledgerflow.testkit.commands import (
    cashin,
    cashout,
    flow_of,
    merchant,
    onboarding,
    payment,
    refund,
    transfer,
    wallet_of,
)
from ledgerflow.testkit.pipeline import Pipeline, running_pipeline
from ledgerflow.testkit.plugin import assert_audit_passes

pytestmark = pytest.mark.integration

READ = "ledger:read"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path_factory: Any
) -> AsyncIterator[Pipeline]:
    log_dir = tmp_path_factory.mktemp("processes")
    async with running_pipeline(
        postgres, kafka, ledgerflow_db_template, log_dir, signed=True, api=True
    ) as p:
        yield p


def owner(command: Any) -> str:
    return customer_subject(command.customer_id)


async def posted_balance(p: Pipeline, account_id: uuid.UUID) -> int:
    """What the audit holds a wallet's balance to: the sum of its postings."""
    conn = await asyncpg.connect(p.database.app_url)
    try:
        total = await conn.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM postings WHERE account_id = $1", account_id
        )
        stored = await conn.fetchval(
            "SELECT balance FROM balances WHERE account_id = $1 AND shard = 0", account_id
        )
    finally:
        await conn.close()
    assert total == stored
    return int(total)


async def all_entries(p: Pipeline, account_id: uuid.UUID, subject: str, **params: Any) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        query = {"limit": 7, **params} | ({"cursor": cursor} if cursor else {})
        page = await p.get(
            f"/v1/wallets/{account_id}/entries?" + "&".join(f"{k}={v}" for k, v in query.items()),
            as_subject=subject,
        )
        assert page.status_code == 200, page.text
        body = page.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def assert_chain(items: list[dict[str, Any]], balance: int) -> None:
    """Newest first: each entry's balance_after less its amount is the next one's balance."""
    assert items[0]["balance_after"] == balance
    for newer, older in itertools.pairwise(items):
        assert newer["balance_after"] - newer["amount"] == older["balance_after"]
    assert items[-1]["balance_after"] - items[-1]["amount"] == 0  # opened at zero


async def test_every_endpoint_on_a_ledger_the_workers_wrote(api: Pipeline) -> None:
    p = api
    alice, bob, shop = onboarding(), onboarding(), merchant()
    for person in (alice, bob, shop):
        await p.send(person)
    a, b, s = wallet_of(alice), wallet_of(bob), wallet_of(shop)
    await p.send(cashin(a, 50_000))
    await p.send(cashin(b, 5_000))
    sent = transfer(a, b, 1_250)
    published = await p.send(sent)
    await p.send(transfer(b, a, 300))
    await p.send(cashout(a, 2_000, fee=50))
    paid = payment(a, s, 10_000)
    await p.send(paid)
    await p.send(refund(paid, 4_000))
    between = datetime.now(UTC)
    await p.send(cashin(a, 700))
    await assert_audit_passes(p.database.app_url)

    balance = await posted_balance(p, a)
    assert balance == 50_000 - 1_250 + 300 - 2_050 - 10_000 + 4_000 + 700

    wallet = await p.get(f"/v1/wallets/{a}", as_subject=owner(alice))
    assert wallet.status_code == 200, wallet.text
    view = wallet.json()
    assert (view["balance"], view["held"], view["available"]) == (balance, 0, balance)
    assert (view["currency"], view["kind"], view["tier"]) == ("EUR", "consumer", "basic")
    # Today's outgoing: the transfer, the cash-out with its fee and the payment.
    assert view["outgoing_today"]["total"] == 1_250 + 2_050 + 10_000
    assert view["outgoing_today"]["limit"] == 2_000_000
    merchant_view = (await p.get(f"/v1/wallets/{s}", as_subject=owner(shop))).json()
    assert merchant_view["kind"] == "merchant"
    assert merchant_view["balance"] == await posted_balance(p, s)

    items = await all_entries(p, a, owner(alice))
    assert len(items) == 7
    assert_chain(items, balance)
    by_id = {item["id"]: item for item in items}
    assert by_id[str(sent.transfer_id)]["type"] == "transfer.initiated"
    assert by_id[str(sent.transfer_id)]["amount"] == -1_250
    assert by_id[str(sent.transfer_id)]["counterparty_account_id"] == str(b)
    assert by_id[str(paid.payment_id)]["counterparty_account_id"] == str(s)
    assert by_id[str(paid.payment_id)]["amount"] == -10_000
    cashouts = [item for item in items if item["type"] == "cashout.approved"]
    assert [(c["amount"], c["counterparty_account_id"]) for c in cashouts] == [(-2_050, None)]
    # Bob's view of the same transfer: money in, from Alice.
    bobs = await all_entries(p, b, owner(bob))
    assert {(i["id"], i["amount"], i["counterparty_account_id"]) for i in bobs} >= {
        (str(sent.transfer_id), 1_250, str(a))
    }
    assert_chain(bobs, await posted_balance(p, b))

    start = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    end = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    statement = await p.get(
        f"/v1/wallets/{a}/statement", as_subject=owner(alice), params={"from": start, "to": end}
    )
    assert statement.status_code == 200, statement.text
    st = statement.json()
    assert st["opening_balance"] == 0
    assert st["opening_balance"] + st["total_in"] - st["total_out"] == st["closing_balance"]
    assert st["closing_balance"] == balance
    assert [e["id"] for e in st["entries"]] == [i["id"] for i in reversed(items)]
    as_csv = await p.get(
        f"/v1/wallets/{a}/statement",
        as_subject=owner(alice),
        params={"from": start, "to": end},
        headers={"accept": "text/csv"},
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["row"] for r in rows] == ["opening"] + ["entry"] * 7 + ["closing"]
    assert int(rows[-1]["balance_after"]) == balance
    assert [r["id"] for r in rows[1:-1]] == [e["id"] for e in st["entries"]]
    # A statement from just before the last cash-in: it opens at the balance before it.
    late = await p.get(
        f"/v1/wallets/{a}/statement",
        as_subject=owner(alice),
        params={"from": between.isoformat(), "to": end},
    )
    assert late.json()["opening_balance"] == balance - 700
    assert late.json()["total_in"] == 700

    at = await p.get(
        f"/v1/wallets/{a}/balance", as_subject=owner(alice), params={"at": between.isoformat()}
    )
    assert at.status_code == 200, at.text
    assert at.json()["balance"] == balance - 700
    before_all = await p.get(
        f"/v1/wallets/{a}/balance", as_subject=owner(alice), params={"at": start}
    )
    assert before_all.json()["balance"] == 0

    outcome = await p.get(
        f"/v1/commands/transfer.initiated/{sent.transfer_id}", as_subject=owner(alice)
    )
    assert outcome.status_code == 200, outcome.text
    assert outcome.headers["content-type"] == "application/cloudevents+json"
    assert outcome.content == published["_value"]  # byte for byte what the relay published
    unknown = await p.get(f"/v1/commands/transfer.initiated/{uuid.uuid4()}", scope=READ)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"


async def test_who_may_read_what(api: Pipeline) -> None:
    p = api
    alice, mallory = onboarding(), onboarding()
    await p.send(alice)
    await p.send(mallory)
    a = wallet_of(alice)
    await p.send(cashin(a, 1_000))
    sent = transfer(a, wallet_of(mallory), 10)
    await p.send(sent)

    paths = [
        f"/v1/wallets/{a}",
        f"/v1/wallets/{a}/entries",
        f"/v1/wallets/{a}/balance?at=2026-01-01T00:00:00Z",
        f"/v1/wallets/{a}/statement?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
        f"/v1/commands/transfer.initiated/{sent.transfer_id}",
    ]
    for path in paths:
        assert (await p.get(path, as_subject=owner(alice))).status_code == 200, path
        assert (await p.get(path, scope=READ)).status_code == 200, path
        nobody = await p.get(path)
        assert nobody.status_code == 401, path
        assert nobody.headers["www-authenticate"].startswith("Bearer")
        assert nobody.json()["status"] == 401
        forged = await p.get(path, headers={"authorization": "Bearer not-a-token"})
        assert forged.status_code == 401, path
        other = await p.get(path, as_subject=owner(mallory))
        assert other.status_code == 404, path
        assert other.headers["content-type"] == "application/problem+json"
    # Someone else's wallet answers exactly like one that does not exist.
    theirs = (await p.get(f"/v1/wallets/{a}", as_subject=owner(mallory))).json()
    missing = (await p.get(f"/v1/wallets/{uuid.uuid4()}", as_subject=owner(mallory))).json()
    assert {k: v for k, v in theirs.items() if k != "instance"} == {
        k: v for k, v in missing.items() if k != "instance"
    }


async def test_cursors_are_tamper_evident(api: Pipeline) -> None:
    p = api
    alice, bob = onboarding(), onboarding()
    await p.send(alice)
    await p.send(bob)
    a = wallet_of(alice)
    for amount in (100, 200, 300):
        await p.send(cashin(a, amount))
    first = (await p.get(f"/v1/wallets/{a}/entries?limit=1", as_subject=owner(alice))).json()
    cursor = first["next_cursor"]
    assert cursor is not None
    ok = await p.get(f"/v1/wallets/{a}/entries?limit=1&cursor={cursor}", as_subject=owner(alice))
    assert ok.status_code == 200
    assert ok.json()["items"][0]["amount"] == 200
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    for bad in (flipped, cursor[:-2], "not-a-cursor", cursor + "AA"):
        answer = await p.get(
            f"/v1/wallets/{a}/entries?limit=1&cursor={bad}", as_subject=owner(alice)
        )
        assert answer.status_code == 400, bad
        assert answer.json()["type"].endswith("bad_cursor")
    # A cursor of Alice's history does not page Bob's, nor another time range of hers.
    elsewhere = await p.get(f"/v1/wallets/{wallet_of(bob)}/entries?cursor={cursor}", scope=READ)
    assert elsewhere.status_code == 400
    ranged = await p.get(
        f"/v1/wallets/{a}/entries?cursor={cursor}&from=2026-01-01T00:00:00Z",
        as_subject=owner(alice),
    )
    assert ranged.status_code == 400


async def test_bad_parameters_are_problems_not_errors(api: Pipeline) -> None:
    p = api
    alice = onboarding()
    await p.send(alice)
    a = wallet_of(alice)
    checks = {
        f"/v1/wallets/{a}/entries?limit=0": 400,
        f"/v1/wallets/{a}/entries?limit=201": 400,
        f"/v1/wallets/{a}/entries?from=2026-01-01T00:00:00": 400,  # no time zone
        f"/v1/wallets/{a}/statement?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z": 400,
        f"/v1/wallets/{a}/statement?from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z": 400,
        f"/v1/wallets/{a}/statement": 400,
        f"/v1/wallets/{a}/balance": 400,
        "/v1/wallets/not-a-uuid": 400,
        f"/v1/commands/no.such.type/{uuid.uuid4()}": 404,
    }
    for path, status in checks.items():
        answer = await p.get(path, scope=READ)
        assert answer.status_code == status, (path, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["status"] == status


async def test_paging_while_new_entries_arrive(api: Pipeline) -> None:
    """1,000 entries, paged 50 at a time while 1,000 more arrive between the pages: every one of
    the first 1,000 exactly once, newest first, and none of the new ones."""
    p = api
    assert p.signer is not None
    alice = onboarding()
    await p.send(alice)
    a = wallet_of(alice)
    first = [cashin(a, 1) for _ in range(1_000)]
    later = [cashin(a, 2) for _ in range(1_000)]
    flow = flow_of(first[0])

    async def send_all(commands: list[Any]) -> None:
        for command in commands:
            authorization = p.signer.authorization(command)  # type: ignore[union-attr]
            await publish(p.producer, command, flow, p.prefix, authorization=authorization)

    await send_all(first)
    await p.results.wait_for_key(str(first[-1].cashin_id), timeout_s=60)
    conn = await asyncpg.connect(p.database.app_url)

    async def arrived() -> int:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM postings WHERE account_id = $1 AND amount = 2", a
            )
        )

    async def more_arrived(than: int) -> int:
        """Wait (bounded) until another new entry committed, so pages and writes interleave."""
        async with asyncio.timeout(30):
            # Polls the database (no event to wait on), bounded by the timeout above.
            while (count := await arrived()) <= than and count < len(later):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        return count

    try:
        seen: list[str] = []
        counts: list[int] = []
        cursor = None
        writing: asyncio.Task[None] | None = None
        while True:
            params = {"limit": 50} | ({"cursor": cursor} if cursor else {})
            page = await p.get(f"/v1/wallets/{a}/entries", as_subject=owner(alice), params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            seen += [item["id"] for item in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
            if writing is None:  # paging has started: the new entries arrive from now on
                writing = asyncio.create_task(send_all(later))
            counts.append(await more_arrived(counts[-1] if counts else 0))
        assert writing is not None
        await writing
        await p.results.wait_for_key(str(later[-1].cashin_id), timeout_s=60)
    finally:
        await conn.close()
    assert len(counts) >= 19
    assert counts[0] < len(later), "the new entries arrived while the pages were read"
    assert len(seen) == len(set(seen)) == 1_000
    assert seen == [str(c.cashin_id) for c in reversed(first)]
    items = await all_entries(p, a, owner(alice), limit=200)
    assert len(items) == 2_000
    assert_chain(items, await posted_balance(p, a))


async def test_readiness_and_metrics(api: Pipeline) -> None:
    assert api.api is not None
    status, _ = api.api.get("/readyz")
    assert status == 200
    await api.get(f"/v1/wallets/{uuid.uuid4()}", scope=READ)
    status, text = api.api.get("/metrics")
    assert status == 200
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("ledgerflow_api_requests_total")
        and 'route="/v1/wallets/{account_id}"' in line
        and 'status="404"' in line
    ]
    assert lines
    assert float(lines[0].rsplit(" ", 1)[1]) >= 1
    assert "ledgerflow_api_request_seconds_bucket" in text
    document = orjson.loads((await api.get("/v1/openapi.json")).content)
    assert document["openapi"].startswith("3.1")
