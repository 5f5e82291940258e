"""The JWKS cache's rules with a fake provider and a fake clock: one fetch in flight, at most one
per interval however many kids arrive, the last good keys kept, a failing provider never a
refusal (DESIGN §7)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
import pytest
from prometheus_client import REGISTRY

from ledgerflow.contracts.topics import ONBOARDING
from ledgerflow.harness.identity import Issuer
from ledgerflow.ledger_db.unit_of_work import RetryStats
from ledgerflow.testkit.commands import ConsumedRecord, onboarding, parsed, record
from ledgerflow.workers.auth import (
    Authenticator,
    FetchOutcome,
    IdentityProviderUnavailable,
    Principal,
    Refusal,
    parse_jwks,
)
from ledgerflow.workers.batch import BatchProcessor
from ledgerflow.workers.failures import is_infrastructure

if TYPE_CHECKING:
    from ledgerflow.contracts.parsing import ValidCommand
    from ledgerflow.ledger_db.apply import Incoming, LockTiming, Outcome
    from ledgerflow.workers.dead_letters import DeadLetter

REFRESH_MIN_S = 30.0
CACHE_S = 300.0
RANDOM_KIDS = 1_000


@dataclass
class Clock:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeProvider:
    """Answers `body` (or raises `error`) after `delay_s`, counting fetches."""

    body: bytes
    error: BaseException | None = None
    delay_s: float = 0.0
    fetches: int = 0

    async def __call__(self) -> bytes:
        self.fetches += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.body


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def setup(issuer: Issuer, *, delay_s: float = 0.0) -> tuple[Authenticator, FakeProvider, Clock]:
    fake = FakeProvider(orjson.dumps(issuer.jwks()), delay_s=delay_s)
    clock = Clock()
    authenticator = Authenticator(
        issuer=issuer.issuer,
        audience=issuer.audience,
        jwks_cache_s=CACHE_S,
        jwks_refresh_min_s=REFRESH_MIN_S,
        read_jwks=fake,
        clock=clock,
    )
    return authenticator, fake, clock


def fetches(outcome: FetchOutcome) -> float:
    return REGISTRY.get_sample_value("ledgerflow_jwks_fetches_total", {"outcome": outcome}) or 0.0


def random_kid_bearer(issuer: Issuer) -> str:
    """Signed with the issuer's key under a kid it never published (no new key pair: fast)."""
    return dataclasses.replace(issuer, key_id=uuid.uuid4().hex).bearer("mallory")


def command() -> ValidCommand:
    return parsed(onboarding())


async def test_concurrent_unknown_kids_share_one_fetch(issuer: Issuer) -> None:
    authenticator, provider, _ = setup(issuer, delay_s=0.05)
    await asyncio.gather(
        *(authenticator.ensure_keys([random_kid_bearer(issuer)]) for _ in range(50)),
        authenticator.ensure_keys([issuer.bearer("alice")]),
    )
    assert provider.fetches == 1
    assert isinstance(authenticator.verify(issuer.bearer("alice"), command()), Principal)


async def test_a_thousand_random_kids_fetch_at_most_once_per_interval(issuer: Issuer) -> None:
    authenticator, provider, clock = setup(issuer)
    await authenticator.ensure_keys([issuer.bearer("alice")])
    assert provider.fetches == 1
    refusals = 0
    for i in range(RANDOM_KIDS):
        clock.now += 0.1  # 1,000 kids over 100 s: 3 intervals of 30 s
        bearer = random_kid_bearer(issuer)
        await authenticator.ensure_keys([bearer])
        verdict = authenticator.verify(bearer, command())
        assert isinstance(verdict, Refusal), i
        assert "unknown key" in verdict.detail
        refusals += 1
    assert refusals == RANDOM_KIDS
    elapsed = RANDOM_KIDS * 0.1
    assert 2 <= provider.fetches <= 1 + elapsed // REFRESH_MIN_S  # rotation still found


async def test_an_unknown_kid_is_refused_while_the_keys_are_fresh(issuer: Issuer) -> None:
    authenticator, provider, clock = setup(issuer)
    await authenticator.ensure_keys([issuer.bearer("alice")])
    clock.now += REFRESH_MIN_S / 2
    bearer = random_kid_bearer(issuer)
    await authenticator.ensure_keys([bearer])
    assert provider.fetches == 1  # no refresh allowed yet
    verdict = authenticator.verify(bearer, command())
    assert isinstance(verdict, Refusal)
    assert "unknown key" in verdict.detail


async def test_a_key_rotated_in_is_found_at_the_next_allowed_refresh(issuer: Issuer) -> None:
    authenticator, provider, clock = setup(issuer)
    await authenticator.ensure_keys([issuer.bearer("alice")])
    rotated = Issuer()
    provider.body = orjson.dumps({"keys": issuer.jwks()["keys"] + rotated.jwks()["keys"]})
    clock.now += REFRESH_MIN_S
    await authenticator.ensure_keys([rotated.bearer("bob")])
    assert provider.fetches == 2
    verdict = authenticator.verify(rotated.bearer("bob"), command())
    assert isinstance(verdict, Principal)


async def test_known_kids_fetch_nothing_until_the_cache_expires(issuer: Issuer) -> None:
    authenticator, provider, clock = setup(issuer)
    for _ in range(100):
        clock.now += 1.0
        await authenticator.ensure_keys([issuer.bearer("alice")])
    assert provider.fetches == 1
    clock.now += CACHE_S
    await authenticator.ensure_keys([issuer.bearer("someone-new")])
    assert provider.fetches == 2


@pytest.mark.parametrize(
    ("failure", "outcome"),
    [
        (ConnectionRefusedError("refused"), FetchOutcome.UNREACHABLE),
        (TimeoutError(), FetchOutcome.UNREACHABLE),
        (RuntimeError("cannot schedule new futures after shutdown"), FetchOutcome.UNREACHABLE),
        (IdentityProviderUnavailable("HTTP 500", FetchOutcome.HTTP_ERROR), FetchOutcome.HTTP_ERROR),
        (None, FetchOutcome.NOT_JWKS),  # a 200 with an HTML page
    ],
)
async def test_the_last_good_keys_are_kept_when_the_provider_fails(
    issuer: Issuer, failure: BaseException | None, outcome: FetchOutcome
) -> None:
    authenticator, provider, clock = setup(issuer)
    await authenticator.ensure_keys([issuer.bearer("alice")])
    failures_before = fetches(outcome)
    if failure is None:
        provider.body = b"<!doctype html><html><body>Sign in</body></html>"
    provider.error = failure
    clock.now += CACHE_S + 1  # stale: the next batch fetches, and the fetch fails
    known = issuer.bearer("alice")
    await authenticator.ensure_keys([known])
    assert provider.fetches == 2
    assert authenticator.keys.failure is not None
    assert fetches(outcome) == failures_before + 1
    assert isinstance(authenticator.verify(known, command()), Principal)
    # A kid the last good keys lack may be a key rotated in that could not be fetched: the
    # command waits (an infrastructure fault), it is not refused.
    stranger = random_kid_bearer(issuer)
    await authenticator.ensure_keys([stranger])
    with pytest.raises(IdentityProviderUnavailable) as raised:
        authenticator.verify(stranger, command())
    assert is_infrastructure(raised.value)
    assert provider.fetches == 2  # still within the interval after the failed fetch


async def test_no_keys_ever_fetched_means_waiting_then_recovering(issuer: Issuer) -> None:
    html = b"<html>maintenance</html>"
    authenticator, provider, clock = setup(issuer)
    good, provider.body = provider.body, html
    bearer = issuer.bearer("alice")
    await authenticator.ensure_keys([bearer])
    with pytest.raises(IdentityProviderUnavailable, match="not a JWKS"):
        authenticator.verify(bearer, command())
    provider.body = good
    await authenticator.ensure_keys([bearer])
    assert provider.fetches == 1  # the interval holds after failures too
    clock.now += REFRESH_MIN_S
    await authenticator.ensure_keys([bearer])
    assert provider.fetches == 2
    assert isinstance(authenticator.verify(bearer, command()), Principal)


@pytest.mark.parametrize(
    "body",
    [
        b"<!doctype html><html></html>",
        b"",
        b"[]",
        b'{"keys": []}',
        b'{"keys": "no"}',
        b'{"keys": [{"kty": "nonsense"}]}',
        b'{"error": "maintenance"}',
    ],
)
def test_a_body_that_is_not_a_jwks_is_the_providers_failure(body: bytes) -> None:
    with pytest.raises(IdentityProviderUnavailable) as raised:
        parse_jwks(body)
    assert raised.value.outcome is FetchOutcome.NOT_JWKS


async def test_verified_tokens_need_no_fetch(issuer: Issuer) -> None:
    authenticator, provider, clock = setup(issuer)
    bearer = issuer.bearer("alice")
    await authenticator.ensure_keys([bearer])
    assert isinstance(authenticator.verify(bearer, command()), Principal)
    provider.error = ConnectionResetError()
    clock.now += CACHE_S + 1
    await authenticator.ensure_keys([bearer, None, "Basic x", "Bearer not-a-jwt"])
    assert provider.fetches == 1


@dataclass
class NoWriter:
    retry_stats: RetryStats = field(default_factory=RetryStats)
    applied: int = 0

    async def apply(
        self, batch: list[Incoming], *, timing: LockTiming | None = None
    ) -> list[Outcome]:
        self.applied += len(batch)
        return []


async def no_dead_letters(letters: object) -> list[DeadLetter]:
    raise AssertionError(f"nothing may be dead-lettered: {letters}")


async def test_an_unreadable_provider_fails_the_batch_as_the_infrastructures(
    issuer: Issuer,
) -> None:
    """The batch raises (it is rewound and retried); nothing is refused or dead-lettered."""
    authenticator, provider, _ = setup(issuer)
    provider.body = b"<html>maintenance</html>"
    kafka = record(onboarding())
    headers = [*kafka.headers, ("authorization", issuer.bearer("alice").encode())]
    writer = NoWriter()
    batch = BatchProcessor(
        ONBOARDING,
        writer,  # type: ignore[arg-type]
        no_dead_letters,
        authenticator=authenticator,
    )
    records = [ConsumedRecord("onboarding.requested", 0, 1, kafka.key, kafka.value, headers)]
    with pytest.raises(IdentityProviderUnavailable) as raised:
        await batch.process(records)
    assert is_infrastructure(raised.value)
    isolated = await batch.process_isolating(records)
    assert isinstance(isolated.interrupted, IdentityProviderUnavailable)
    assert isolated.handled == []
    assert writer.applied == 0
