"""Every token attack of issue 9, tried against the verifier: none accepted."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

import orjson
import pytest
from jwt.utils import base64url_encode

from ledgerflow.contracts.parsing import ValidCommand
from ledgerflow.harness.identity import Issuer
from ledgerflow.testkit.commands import cashin, onboarding, parsed, transfer, wallet_of
from ledgerflow.workers import auth
from ledgerflow.workers.auth import HEADER_KIDS_MAX, Authenticator, Principal, Refusal


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
async def verifier(issuer: Issuer, tmp_path: Path) -> Authenticator:
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    authenticator = Authenticator(
        issuer=issuer.issuer,
        audience=issuer.audience,
        jwks_file=str(jwks),
        leeway_s=60,
        max_token_age_s=600,
    )
    await authenticator.ensure_keys([issuer.bearer("first-batch")])  # as a batch does
    return authenticator


def a_transfer() -> ValidCommand:
    return parsed(transfer(wallet_of(onboarding()), wallet_of(onboarding()), 100))


def test_a_valid_token_names_its_subject(issuer: Issuer, verifier: Authenticator) -> None:
    verdict = verifier.verify(issuer.bearer("alice"), a_transfer())
    assert verdict == Principal("alice", frozenset())


@pytest.mark.parametrize(
    ("attack", "detail"),
    [
        ("missing", "no authorization header"),
        ("not_bearer", "not a bearer token"),
        ("bad_signature", "unknown key"),
        ("forged_same_kid", "token invalid"),
        ("other_issuer", "another issuer"),
        ("wrong_audience", "another audience"),
        ("expired", "expired"),
        ("too_old", "too old"),
        ("bound_to_other_data", "bound to other command data"),
    ],
)
def test_attacks_are_refused(
    attack: str, detail: str, issuer: Issuer, verifier: Authenticator
) -> None:
    command = a_transfer()
    other = a_transfer()
    forger = Issuer(key_id=issuer.key_id)  # same key id, another private key
    header = {
        "missing": None,
        "not_bearer": "Basic YWxpY2U6c2VjcmV0",
        "bad_signature": Issuer().bearer("alice"),
        "forged_same_kid": forger.bearer("alice"),
        "other_issuer": issuer.bearer("alice", issuer="https://evil.example"),
        "wrong_audience": issuer.bearer("alice", audience="another-service"),
        "expired": issuer.bearer("alice", issued_at=time.time() - 400, ttl_s=200),
        "too_old": issuer.bearer("alice", issued_at=time.time() - 3_000, ttl_s=10_000),
        "bound_to_other_data": issuer.bearer("alice", data_hash=other.content_hash),
    }[attack]
    verdict = verifier.verify(header, command)
    assert isinstance(verdict, Refusal)
    assert detail in verdict.detail


def test_expiry_allows_for_consumer_lag(issuer: Issuer, verifier: Authenticator) -> None:
    late = issuer.bearer("alice", issued_at=time.time() - 100, ttl_s=60)  # 40 s past exp
    assert isinstance(verifier.verify(late, a_transfer()), Principal)


def test_token_bound_to_its_own_data_passes(issuer: Issuer, verifier: Authenticator) -> None:
    command = a_transfer()
    bound = issuer.bearer("alice", data_hash=command.content_hash)
    assert isinstance(verifier.verify(bound, command), Principal)


def test_replay_with_a_new_id_but_the_old_token_is_refused(
    issuer: Issuer, verifier: Authenticator
) -> None:
    first = transfer(wallet_of(onboarding()), wallet_of(onboarding()), 100)
    token = issuer.bearer("alice", data_hash=parsed(first).content_hash)
    replay = parsed(
        first.model_copy(
            update={
                "transfer_id": transfer(first.from_account_id, first.to_account_id, 100).transfer_id
            }
        )
    )
    verdict = verifier.verify(token, replay)
    assert isinstance(verdict, Refusal)


def test_cash_in_needs_the_service_scope(issuer: Issuer, verifier: Authenticator) -> None:
    command = parsed(cashin(wallet_of(onboarding()), 100))
    assert isinstance(verifier.verify(issuer.bearer("alice"), command), Refusal)
    assert isinstance(verifier.verify(issuer.service_bearer(), command), Principal)


@pytest.mark.parametrize("attack", ["alg_none_same_kid", "known_header_garbage_rest"])
def test_a_header_seen_before_picks_the_key_and_checks_nothing_else(
    attack: str, issuer: Issuer, verifier: Authenticator
) -> None:
    """The fixture's batch made the issuer's header known: a token reusing it, or its kid
    under another algorithm, is still refused by PyJWT's own checks."""
    genuine = issuer.token("alice")
    known_header = genuine.partition(".")[0]
    token = {
        "alg_none_same_kid": base64url_encode(
            orjson.dumps({"alg": "none", "kid": issuer.key_id, "typ": "JWT"})
        ).decode()
        + "."
        + genuine.split(".")[1]
        + ".",
        "known_header_garbage_rest": known_header + ".bm90LWpzb24.c2ln",
    }[attack]
    verdict = verifier.verify("Bearer " + token, a_transfer())
    assert isinstance(verdict, Refusal)
    assert "token invalid" in verdict.detail


async def test_headers_remembered_are_bounded(issuer: Issuer, verifier: Authenticator) -> None:
    """Tokens under ever new kids (a flood) leave at most HEADER_KIDS_MAX headers known, and
    the issuer's own tokens still pass after the flood."""
    flood = [
        dataclasses.replace(issuer, key_id=uuid.uuid4().hex).bearer("mallory")
        for _ in range(HEADER_KIDS_MAX * 3)
    ]
    for bearer in flood:
        await verifier.ensure_keys([bearer])
        assert len(verifier._header_kids) <= HEADER_KIDS_MAX
        assert isinstance(verifier.verify(bearer, a_transfer()), Refusal)
    assert verifier.verify(issuer.bearer("alice"), a_transfer()) == Principal("alice", frozenset())


async def test_a_full_cache_of_verified_tokens_drops_its_oldest_only(
    issuer: Issuer, verifier: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded, and not cleared: the sessions verified last stay verified (no burst of
    signature checks for every live session each time the cache fills)."""
    monkeypatch.setattr(auth, "VERIFIED_TOKENS_MAX", 8)
    monkeypatch.setattr(auth, "VERIFIED_TOKENS_EVICTED", 2)
    decoded: list[str] = []
    decode = auth._JWT_DECODER.decode

    def counting(token: str, *args: object, **kwargs: object) -> object:
        decoded.append(token)
        return decode(token, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(auth._JWT_DECODER, "decode", counting)
    command = a_transfer()
    bearers = [issuer.bearer(f"session-{n}") for n in range(20)]
    for bearer in bearers:
        assert isinstance(verifier.verify(bearer, command), Principal)
        assert len(verifier._verified) <= 8
    assert len(decoded) == 20
    recent = bearers[-5:]
    for bearer in recent:
        assert verifier.verify(bearer, command) == Principal(
            f"session-{bearers.index(bearer)}", frozenset()
        )
    assert len(decoded) == 20  # the latest were answered from the cache
    assert isinstance(verifier.verify(bearers[0], command), Principal)
    assert len(decoded) == 21  # the oldest was dropped and is checked again
