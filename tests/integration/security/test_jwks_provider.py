"""The identity provider's JWKS over HTTP, served by a local server that counts its requests.

A flood of tokens with random kids costs at most one fetch per interval and never stalls the
event loop (no consumer-group rebalance); a provider answering an HTML page or a 500 makes
commands wait, never refused or dead-lettered, and they complete once it serves keys again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from ledgerflow.cli.dlq_cmd import read_dead_letters
from ledgerflow.contracts.codec import encode_command
from ledgerflow.contracts.topics import FLOWS, ONBOARDING
from ledgerflow.harness.identity import Issuer
from ledgerflow.testkit.commands import onboarding
from ledgerflow.testkit.identity_provider import JwksServer
from ledgerflow.testkit.pipeline import COMMAND_PARTITIONS, event_id_of, running_pipeline
from ledgerflow.testkit.plugin import wait_until
from ledgerflow.testkit.scrape import metric
from ledgerflow.workers.auth import (
    Authenticator,
    FetchOutcome,
    IdentityProviderUnavailable,
    jwks_reader,
    parse_jwks,
)

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from ledgerflow.contracts.codec import KafkaRecord
    from ledgerflow.testkit.identity_provider import Answer
    from ledgerflow.testkit.pipeline import ManagedProcess, Pipeline

pytestmark = pytest.mark.integration

RANDOM_KIDS = 1_000
REFRESH_MIN_S = 2.0  # the interval under test (30 s by default)
# A slow provider: fetching once per unknown kid on the event loop, as the old code did, would
# stall it for RANDOM_KIDS times this, far past the 10 s session timeout.
PROVIDER_DELAY_S = 0.2
FLOOD_WAVES = 10
FLOOD_WAVE_PAUSE_S = 1.0
WAITING_COMMANDS = 30
FAILED_BATCHES_MIN = 5
FAULT_HOLD_S = 10.0  # the provider fails for this long after the commands are published
ANSWER_TIMEOUT_S = 120.0
LOOP_GAP_MAX_S = 0.25


def random_kid_bearer(idp: Issuer) -> str:
    return dataclasses.replace(idp, key_id=uuid.uuid4().hex).bearer("mallory")


def url_settings(idp: Issuer, server: JwksServer) -> dict[str, str]:
    return {
        "auth_mode": "required",
        "auth_jwks_url": server.url,
        "auth_issuer": idp.issuer,
        "auth_audience": idp.audience,
        "auth_jwks_refresh_min_s": str(REFRESH_MIN_S),
    }


def group_joins(process: ManagedProcess) -> int:
    """aiokafka logs this line (at INFO, in the worker's log) at every join of a group."""
    return process.log_path.read_text(errors="replace").count("(Re-)joining group")


async def send_all(
    producer: AIOKafkaProducer, prefix: str, bearers: list[str]
) -> list[KafkaRecord]:
    records = [
        encode_command(ONBOARDING, onboarding(), authorization=b, topic_prefix=prefix)
        for b in bearers
    ]
    sent = [
        await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers)) for r in records
    ]
    await asyncio.gather(*sent)
    return records


async def no_dead_letters(p: Pipeline) -> None:
    letters = await read_dead_letters(
        p.bootstrap, [p.prefix + flow.dlq_topic for flow in FLOWS], limit=10
    )
    assert letters == []


async def test_the_url_reader_tells_each_provider_failure_apart() -> None:
    idp = Issuer()
    with JwksServer(idp.jwks()) as server:
        read = jwks_reader(None, server.url)
        assert idp.key_id in parse_jwks(await read())
        for answer, outcome in (
            ("html", FetchOutcome.NOT_JWKS),
            ("error", FetchOutcome.HTTP_ERROR),
        ):
            server.answer = answer  # type: ignore[assignment]
            with pytest.raises(IdentityProviderUnavailable) as raised:
                parse_jwks(await read())
            assert raised.value.outcome is outcome
        closed_url = server.url
    with pytest.raises(OSError, match="refused"):
        await jwks_reader(None, closed_url)()


async def test_random_kids_fetch_once_per_interval_without_stalling_the_loop() -> None:
    idp = Issuer()
    with JwksServer(idp.jwks(), delay_s=PROVIDER_DELAY_S) as server:
        authenticator = Authenticator(
            idp.issuer, idp.audience, jwks_url=server.url, jwks_refresh_min_s=REFRESH_MIN_S
        )
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        bearers = [random_kid_bearer(idp) for _ in range(RANDOM_KIDS)]
        started = time.monotonic()
        # Ten "batches" at a time (a worker's four flows and more), over several intervals.
        for wave in range(0, RANDOM_KIDS, 100):
            await asyncio.gather(
                *(
                    authenticator.ensure_keys(bearers[i : i + 10])
                    for i in range(wave, wave + 100, 10)
                )
            )
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        stop.set()
        await ticking
    allowed = 1 + int(elapsed // REFRESH_MIN_S)
    print(
        f"{RANDOM_KIDS} random kids over {elapsed:.1f} s: {server.requests} JWKS fetches "
        f"(at most {allowed}); longest event-loop gap {max(gaps) * 1000:.0f} ms"
    )
    assert 1 <= server.requests <= allowed
    assert max(gaps) < LOOP_GAP_MAX_S  # each fetch took 200 ms, in a thread


async def test_a_flood_of_random_kids_is_refused_without_a_rebalance(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    idp = Issuer()
    with JwksServer(idp.jwks(), delay_s=PROVIDER_DELAY_S) as server:
        async with running_pipeline(
            postgres, kafka, ledgerflow_db_template, tmp_path, **url_settings(idp, server)
        ) as p:
            [first] = await send_all(p.producer, p.prefix, [idp.bearer("alice")])
            [event] = await p.results.wait_for(event_id_of(first), timeout_s=ANSWER_TIMEOUT_S)
            assert event["type"] == "onboarding.completed"
            joins = group_joins(p.worker)
            fetched_before = server.requests
            started = time.monotonic()
            sent: list[KafkaRecord] = []
            for _ in range(FLOOD_WAVES):  # spread over several refresh intervals
                bearers = [random_kid_bearer(idp) for _ in range(RANDOM_KIDS // FLOOD_WAVES)]
                sent += await send_all(p.producer, p.prefix, bearers)
                await asyncio.sleep(FLOOD_WAVE_PAUSE_S)
            for rec in sent:
                [event] = await p.results.wait_for(event_id_of(rec), timeout_s=ANSWER_TIMEOUT_S)
                assert event["data"]["reason"] == "unauthorized", event
            elapsed = time.monotonic() - started
            fetches = server.requests - fetched_before
            allowed = 1 + int(elapsed // REFRESH_MIN_S)
            assigned = metric(p.worker, "ledgerflow_assigned_partitions", flow="onboarding")
            print(
                f"{RANDOM_KIDS} commands with random kids answered unauthorized in "
                f"{elapsed:.1f} s: {fetches} JWKS fetches (at most {allowed}), "
                f"group joins {joins} -> {group_joins(p.worker)}"
            )
            assert fetches <= allowed
            assert group_joins(p.worker) == joins, "the flood must not rebalance the group"
            assert assigned == COMMAND_PARTITIONS
            assert metric(p.worker, "ledgerflow_unauthorized_commands_total") == RANDOM_KIDS
            await no_dead_letters(p)


@pytest.mark.parametrize("answer", ["html", "error"])
async def test_commands_wait_while_the_provider_fails_and_complete_after(
    answer: Answer, postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    idp = Issuer()
    with JwksServer(idp.jwks(), answer=answer) as server:
        async with running_pipeline(
            postgres, kafka, ledgerflow_db_template, tmp_path, **url_settings(idp, server)
        ) as p:
            published_at = time.monotonic()
            sent = await send_all(
                p.producer, p.prefix, [idp.bearer(f"user-{i}") for i in range(WAITING_COMMANDS)]
            )
            await wait_until(
                lambda: (
                    metric(
                        p.worker,
                        "ledgerflow_batch_failures_total",
                        error_class="IdentityProviderUnavailable",
                    )
                    >= FAILED_BATCHES_MIN
                ),
                timeout_s=ANSWER_TIMEOUT_S,
                message="batches waiting for the identity provider",
            )
            await asyncio.sleep(max(0.0, FAULT_HOLD_S - (time.monotonic() - published_at)))
            status, body = p.worker.get("/readyz")
            assert status == 503, body
            assert "batches are failing" in body, body
            assert p.results.events == [], "nothing is answered while the provider fails"
            outcome = "not_jwks" if answer == "html" else "http_error"
            assert metric(p.worker, "ledgerflow_jwks_fetches_total", outcome=outcome) >= 1
            waited = time.monotonic() - published_at
            # Failed fetches are rate-limited too: the provider is not hammered while it is down.
            assert server.requests <= 1 + int(waited // REFRESH_MIN_S)
            server.answer = "jwks"
            healed_at = time.monotonic()
            for rec in sent:
                [event] = await p.results.wait_for(event_id_of(rec), timeout_s=ANSWER_TIMEOUT_S)
                assert event["type"] == "onboarding.completed", event
            recovered = time.monotonic() - healed_at
            await wait_until(
                lambda: p.worker.get("/readyz")[0] == 200,
                timeout_s=ANSWER_TIMEOUT_S,
                message="ready again",
            )
            print(
                f"provider answering {answer}: {WAITING_COMMANDS} commands waited "
                f"{waited:.1f} s ({server.requests} fetches), none refused; all completed "
                f"{recovered:.2f} s after it served the JWKS again"
            )
            assert recovered <= REFRESH_MIN_S + 10
            await no_dead_letters(p)
