"""Fuzz `ledgerflow api` (a process, over HTTP) from the COMMITTED contract, contracts/openapi.json.

Schemathesis generates the requests of every operation from the document, valid ones and invalid
ones (a path that is no UUID, a limit out of range, a required parameter left out, ...), and
validates every answer with its default checks: no 5xx, a documented status and content type, a
body that matches its schema, authentication enforced. The ledger is seeded first and every
operation also draws the seeded wallets, commands and a real page cursor, each asked for once
whatever else is drawn, so that answers 200 are fuzzed too (a random UUID only finds 404). Each
operation runs twice: with a `ledger:read` token, and with none (401 problems only).

Reproducible: derandomized (the examples follow from the test's code), no example database.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from ledgerflow.testkit.commands import cashin, merchant, onboarding, payment, transfer, wallet_of
from ledgerflow.testkit.pipeline import Pipeline, running_pipeline

pytestmark = [
    pytest.mark.integration,
    # Schemathesis' own strategies draw from `random`; Hypothesis seeds it for every example, so
    # the runs stay reproducible (derandomized), and the warning is not ours to fix.
    pytest.mark.filterwarnings(
        "ignore:Do not use the `random` module inside strategies"
        ":hypothesis.errors.HypothesisDeprecationWarning"
    ),
]

READ = "ledger:read"
CONTRACT = Path(__file__).resolve().parents[3] / "contracts" / "openapi.json"
# Generated examples per operation and run (a token, none): 5 operations x 2 runs x 40, plus the
# seeded examples, take ~15 s on two cores.
MAX_EXAMPLES = 40
REQUEST_TIMEOUT_S = 10.0

SCHEMA = schemathesis.openapi.from_path(CONTRACT)
OPERATIONS = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations()}
COMMAND = "GET /v1/commands/{type}/{id}"


@dataclass(slots=True)
class Seeded:
    """The running pipeline and what its ledger was seeded with."""

    pipeline: Pipeline
    base_url: str
    wallets: list[uuid.UUID]
    commands: list[tuple[str, uuid.UUID]]  # (CloudEvents type, command id)
    cursor: str  # the next page of wallets[0] at limit 1
    unknown: uuid.UUID  # no wallet's, no command's
    start: datetime
    end: datetime
    token: str = field(repr=False)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path_factory: Any
) -> AsyncIterator[Seeded]:
    log_dir = tmp_path_factory.mktemp("processes")
    async with running_pipeline(
        postgres, kafka, ledgerflow_db_template, log_dir, signed=True, api=True
    ) as p:
        assert p.api is not None
        assert p.signer is not None
        start = datetime.now(UTC) - timedelta(hours=1)
        alice, bob, shop = onboarding(), onboarding(), merchant()
        for person in (alice, bob, shop):
            await p.send(person)
        a, b, s = wallet_of(alice), wallet_of(bob), wallet_of(shop)
        funded = cashin(a, 50_000)
        sent = transfer(a, b, 1_250)
        paid = payment(a, s, 3_000)
        for command in (funded, cashin(b, 2_000), sent, paid, transfer(b, a, 300)):
            await p.send(command)
        first = await p.get(f"/v1/wallets/{a}/entries", scope=READ, params={"limit": 1})
        assert first.status_code == 200, first.text
        yield Seeded(
            pipeline=p,
            base_url=f"http://127.0.0.1:{p.api.port}",
            wallets=[a, b, s],
            commands=[
                ("onboarding.requested", alice.customer_id),
                ("cashin.confirmed", funded.cashin_id),
                ("transfer.initiated", sent.transfer_id),
                ("payment.initiated", paid.payment_id),
            ],
            cursor=first.json()["next_cursor"],
            unknown=uuid.uuid4(),
            start=start,
            end=datetime.now(UTC) + timedelta(hours=1),
            token=p.signer.issuer.bearer("ledgerflow-fuzz", scope=READ),
        )


def seeded_parts(label: str, seed: Seeded, *, unknown: bool = False) -> list[dict[str, Any]]:
    """Requests that reach the seeded rows (or, `unknown`, the same with an id that names none),
    as the fixed parts of a case: `as_strategy`'s and `Case`'s keyword arguments."""
    if label == COMMAND:
        commands = seed.commands[:1] if unknown else seed.commands
        return [
            {"path_parameters": {"type": t, "id": str(seed.unknown if unknown else i)}}
            for t, i in commands
        ]
    wallets = [{"account_id": str(w)} for w in ([seed.unknown] if unknown else seed.wallets)]
    if label.endswith("/statement"):
        bounds = {"from": seed.start.isoformat(), "to": seed.end.isoformat()}
        as_csv = {"path_parameters": wallets[0], "query": bounds, "headers": {"Accept": "text/csv"}}
        return [{"path_parameters": w, "query": bounds} for w in wallets] + [as_csv]
    if label.endswith("/balance"):
        return [{"path_parameters": w, "query": {"at": seed.end.isoformat()}} for w in wallets]
    if label.endswith("/entries"):
        paged = {"path_parameters": wallets[0], "query": {"limit": 1, "cursor": seed.cursor}}
        return [{"path_parameters": w} for w in wallets] + ([] if unknown else [paged])
    return [{"path_parameters": w} for w in wallets]


def cases(label: str, seed: Seeded) -> st.SearchStrategy[Any]:
    """Anything the document allows (and does not), and the seeded rows with the rest drawn."""
    operation = OPERATIONS[label]
    drawn = [operation.as_strategy(mode) for mode in GenerationMode]
    reaching = [operation.as_strategy(**fixed) for fixed in seeded_parts(label, seed)]
    return st.one_of(*drawn, *reaching)


# A schema-valid request the API still refuses, 400, for a rule JSON Schema cannot state: a cursor
# it did not sign, a time outside [1970, 9000), `from` not before `to`, a statement over a year.
BEYOND_THE_SCHEMA = (
    ("bad_cursor", ""),
    ("range_too_long", ""),
    ("invalid_request", "must lie between"),
    ("invalid_request", "must be before"),
)


def valid_requests_refused_only_for_rules_beyond_the_schema(
    ctx: Any, response: Any, case: Any
) -> bool | None:
    """Schemathesis' positive_data_acceptance, less the rules above: a schema-valid request is
    answered 2xx, 401 or 404, or 400 for one of BEYOND_THE_SCHEMA."""
    del ctx
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if 200 <= status < 300 or status in (401, 404):
        return None
    assert status == 400, f"a schema-valid request answered {status}"
    problem = response.json()
    code = problem["type"].rsplit("/", 1)[-1]
    assert any(code == c and text in problem["detail"] for c, text in BEYOND_THE_SCHEMA), (
        f"a schema-valid request refused: {problem}"
    )
    return None


def refused_without_a_token(response: Any, case: Any) -> None:
    """No token: 401 with a bearer challenge, or 404 where an invalid path found no route."""
    if response.status_code == 404 and case.meta is not None:
        assert case.meta.is_negative_at(ParameterLocation.PATH), response.text
        return
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"][0].startswith("Bearer"), response.headers


def fuzz(label: str, seed: Seeded, authorized: bool) -> collections.Counter[int]:
    """Fuzz one operation; blocking (the test runs it in a thread). The statuses it answered."""
    operation = OPERATIONS[label]
    statuses: collections.Counter[int] = collections.Counter()
    headers = {"Authorization": seed.token} if authorized else None
    session = requests.Session()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases(label, seed))
    def one(case: Any) -> None:
        if not authorized:  # none at all, not even one the document's scheme made up
            case.headers = {
                name: value
                for name, value in (case.headers or {}).items()
                if name.lower() != "authorization"
            }
        response = case.call_and_validate(
            base_url=seed.base_url,
            session=session,
            headers=headers,
            excluded_checks=[positive_data_acceptance],
            additional_checks=[valid_requests_refused_only_for_rules_beyond_the_schema],
            timeout=REQUEST_TIMEOUT_S,
        )
        statuses[response.status_code] += 1
        if not authorized:
            refused_without_a_token(response, case)

    # Each seeded row, and an unknown one, asked for once (explicit examples run first, whatever
    # Hypothesis draws).
    for fixed in seeded_parts(label, seed) + seeded_parts(label, seed, unknown=True):
        one = example(case=operation.Case(**fixed))(one)
    try:
        one()
    finally:
        session.close()
    return statuses


@pytest.mark.parametrize("authorized", [True, False], ids=["ledger-read-token", "no-token"])
@pytest.mark.parametrize("label", list(OPERATIONS))
async def test_every_answer_is_what_the_committed_contract_says(
    seeded: Seeded, label: str, authorized: bool
) -> None:
    # In a thread: the requests block, and the pipeline's consumers live on this event loop.
    statuses = await asyncio.to_thread(fuzz, label, seeded, authorized)
    assert sum(statuses.values()) > MAX_EXAMPLES // 2, statuses
    if authorized:
        # Every seeded example answered 200 (it reached its row), every unknown one 404.
        assert statuses[200] >= len(seeded_parts(label, seeded)), statuses
        assert statuses[404] >= len(seeded_parts(label, seeded, unknown=True)), statuses
    else:
        assert set(statuses) <= {401, 404}, statuses
        assert statuses[401] > 0, statuses
