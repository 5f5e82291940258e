"""Who asked: the end user's (or a service's) JWT from the `authorization` header, verified.

Kafka ACLs say which service wrote a message, not which person asked for it. Every command
carries the identity provider's token; the worker verifies its signature against the
configured JWKS, its issuer, audience and times, the scope a flow needs, and, when the token
names it, the SHA-256 of the command's data. Ownership of the debited wallet is checked in the
ledger transaction (it needs the locked wallet row). Tokens are never logged.

The JWKS is fetched off the event loop, once per batch at most (`Authenticator.ensure_keys`),
and at most once per `JWKS_REFRESH_MIN_S` however many unknown `kid`s arrive; verifying each
record stays synchronous and cheap. A provider that cannot be read is the infrastructure's
fault (`IdentityProviderUnavailable`): commands wait, they are never refused for it (DESIGN §7).
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from jwt.utils import base64url_decode, base64url_encode

from ledgerflow.workers import metrics
from ledgerflow.workers.failures import InfrastructureFault

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

    from ledgerflow.contracts.parsing import ValidCommand

_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def decode_segment(segment: bytes, name: str) -> bytes:
    """One base64url segment of a JWS, by PyJWS's own rule (trailing '=' accepted, any byte
    outside the alphabet refused: GHSA-hxm8-2xgr-2p9m, canonical encoding only), with the
    alphabet checked by `bytes.translate` in C: PyJWT 2.15 checks it with a Python loop over
    every character, ~150 µs of a fresh token's ~190 µs here (docs/benchmarks.md)."""
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    if padding > 2 or (padding and len(segment) % 4 != 0):
        raise jwt.DecodeError(f"Invalid {name} padding")
    if len(stripped) % 4 == 1 or stripped.translate(None, _BASE64URL):
        raise jwt.DecodeError(f"Invalid {name} padding")
    try:
        decoded = base64url_decode(stripped)
    except (TypeError, binascii.Error) as error:
        raise jwt.DecodeError(f"Invalid {name} padding") from error
    if base64url_encode(decoded) != stripped:
        raise jwt.DecodeError(f"Invalid {name} padding")
    return decoded


class _JWS(jwt.PyJWS):
    """PyJWS with the same segment rule, checked in C (`decode_segment`)."""

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        return decode_segment(segment, name)


class _JWT(jwt.PyJWT):
    """PyJWT over `_JWS`: every signature, claim and header check is PyJWT's."""

    def __init__(self) -> None:
        super().__init__()
        self._jws = _JWS(options=self._get_sig_options())

    def unverified_header(self, token: str) -> dict[str, Any]:
        return self._jws.get_unverified_header(token)


_JWT_DECODER = _JWT()


log = logging.getLogger("ledgerflow.auth")

CASHIN_SCOPE = "ledger:cashin"
# The payout service answers for the bank: settles and returns held cash-outs (DESIGN.md §5.1).
PAYOUT_SCOPE = "ledger:payout"
# Commands only a service may send, by flow: no customer's token may confirm money the bank
# moved.
SERVICE_SCOPES = {
    "cashin": CASHIN_SCOPE,
    "cashout_settle": PAYOUT_SCOPE,
    "cashout_return": PAYOUT_SCOPE,
}
# Optional claim binding a token to one command's data: hex SHA-256 of its canonical JSON
# (`contracts.parsing.content_hash`), so a captured token cannot authorise another command.
DATA_HASH_CLAIM = "data_sha256"
ALGORITHMS = ("RS256", "ES256", "EdDSA")
JWKS_CACHE_S = 300.0  # keys older than this are fetched again when a batch needs them
# At most one fetch per this interval, whatever arrives: a flood of tokens with random kids
# must not become a flood of requests to the identity provider.
JWKS_REFRESH_MIN_S = 30.0
JWKS_FETCH_TIMEOUT_S = 5.0  # the whole fetch, connection to last byte
JWKS_BYTES_MAX = 1024 * 1024  # a JWKS is a few KiB; anything larger is not one
TOKEN_CHARS_MAX = 8_192
VERIFIED_TOKENS_MAX = 10_000  # bound of the verified-token cache
# When it is full the oldest eighth goes (the first to expire): clearing it all would send every
# live session's next command through a signature check at once, a burst of ~80 µs each.
VERIFIED_TOKENS_EVICTED = VERIFIED_TOKENS_MAX // 8
# Bound of the kids remembered by JWS header segment (cleared when full): every token one key
# signs has the same header, so in practice there is one entry per signing key.
HEADER_KIDS_MAX = 64

JwksReader = Callable[[], Awaitable[bytes]]


class AuthMode(StrEnum):
    REQUIRED = "required"
    OFF = "off"


class FetchOutcome(StrEnum):
    """Label of `ledgerflow_jwks_fetches_total`."""

    OK = "ok"
    UNREACHABLE = "unreachable"  # connection refused or reset, timeout, unreadable file
    HTTP_ERROR = "http_error"  # an answer other than 200
    NOT_JWKS = "not_jwks"  # a 200 whose body is not a JWKS with usable keys (an HTML page...)


class IdentityProviderUnavailable(InfrastructureFault):
    """The signing keys could not be read, so a token cannot be judged: the batch waits and is
    retried (readiness false), never answered `unauthorized` for the provider's failure."""

    def __init__(self, detail: str, outcome: FetchOutcome = FetchOutcome.UNREACHABLE) -> None:
        super().__init__(detail)
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a command is `unauthorized`; safe to put in a rejection (no token material)."""

    detail: str


@dataclass(slots=True)
class SigningKeys:
    """The provider's keys by kid: one fetch in flight at a time (concurrent batches share it),
    at most one per `refresh_min_s`, and the last good keys kept when a fetch fails."""

    read: JwksReader
    cache_s: float = JWKS_CACHE_S
    refresh_min_s: float = JWKS_REFRESH_MIN_S
    clock: Callable[[], float] = time.monotonic
    keys: dict[str, Any] | None = None
    fetched_at: float = 0.0  # of the last good keys
    attempted_at: float | None = None
    # Why the last fetch failed; None once one succeeded. While set, a kid the keys lack may be
    # a key rotated in that we could not fetch: its tokens wait rather than being refused.
    failure: str | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        for outcome in FetchOutcome:  # at zero, so that rate() sees the first failure
            metrics.JWKS_FETCHES.labels(outcome.value)

    def _due(self, kids: Collection[str]) -> bool:
        now = self.clock()
        if self.attempted_at is not None and now - self.attempted_at < self.refresh_min_s:
            return False
        if self.keys is None or self.failure is not None or now - self.fetched_at > self.cache_s:
            return True
        return any(kid not in self.keys for kid in kids)

    async def refresh_for(self, kids: Collection[str]) -> None:
        """Fetch when the keys are missing, stale or lack one of `kids`, and the interval
        allows; never raises (`key` says what a failure means for a token)."""
        if not kids or not self._due(kids):
            return
        async with self._lock:
            if not self._due(kids):  # fetched by another batch while this one waited
                return
            self.attempted_at = self.clock()
            try:
                keys = parse_jwks(await self.read())
            except IdentityProviderUnavailable as error:
                self._failed(error.outcome, str(error))
            except Exception as error:  # reading the keys failing is never a command's fault
                self._failed(FetchOutcome.UNREACHABLE, f"{type(error).__name__}: {error}")
            else:
                self.keys, self.fetched_at, self.failure = keys, self.clock(), None
                metrics.JWKS_FETCHES.labels(FetchOutcome.OK.value).inc()

    def _failed(self, outcome: FetchOutcome, detail: str) -> None:
        self.failure = detail
        metrics.JWKS_FETCHES.labels(outcome.value).inc()
        log.warning(
            "identity provider keys unavailable, keeping the last good keys",
            extra={"outcome": outcome.value, "error": detail[:200], "keys": len(self.keys or {})},
        )

    def key(self, kid: str) -> Any:
        """The key, or None when the provider's current keys lack it (the token is refused).
        Raises `IdentityProviderUnavailable` when the keys could not be read to tell."""
        key = self.keys.get(kid) if self.keys is not None else None
        if key is None and (self.keys is None or self.failure is not None):
            raise IdentityProviderUnavailable(
                f"identity provider keys unavailable: {self.failure or 'not fetched yet'}"
            )
        return key


@dataclass(slots=True)
class Authenticator:
    issuer: str
    audience: str
    jwks_file: str | None = None
    jwks_url: str | None = None
    leeway_s: int = 300
    max_token_age_s: int = 3_600
    jwks_cache_s: float = JWKS_CACHE_S
    jwks_refresh_min_s: float = JWKS_REFRESH_MIN_S
    # How the JWKS document is read; from jwks_file or jwks_url unless given (tests).
    read_jwks: JwksReader | None = None
    clock: Callable[[], float] = time.monotonic
    keys: SigningKeys = field(init=False)
    # Verified tokens by their text: a session token signs many commands, and a signature
    # check costs far more than the rest of a command. Expiry is re-checked on every use.
    _verified: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The `kid` of each JWS header segment seen: parsing it means decoding the whole token
    # (~14 µs), which PyJWT's own decode does again anyway; only the key look-up needs it.
    _header_kids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = SigningKeys(
            self.read_jwks or jwks_reader(self.jwks_file, self.jwks_url),
            self.jwks_cache_s,
            self.jwks_refresh_min_s,
            self.clock,
        )

    async def ensure_keys(self, authorizations: Iterable[str | None]) -> None:
        """Once per batch, before `verify`: fetch the keys its tokens need if they are missing,
        stale or lack a kid, and the interval allows. Tokens verified before need no key."""
        kids: set[str] = set()
        for authorization in authorizations:
            token = _bearer_token(authorization)
            if token is None or token in self._verified:
                continue
            try:
                kids.add(self._kid(token))
            except jwt.PyJWTError:
                continue  # malformed: `verify` refuses it without a key
        await self.keys.refresh_for(kids)

    def verify(self, authorization: str | None, command: ValidCommand) -> Principal | Refusal:
        """May `authorization` send `command`? Raises `IdentityProviderUnavailable` when the
        keys to judge the token are missing."""
        claims = self._claims(authorization)
        if isinstance(claims, Refusal):
            return claims
        return self._authorize(claims, command)

    def authenticate(self, authorization: str | None) -> Principal | Refusal:
        """Who reads (the read API): the token's signature, issuer, audience and times, no
        command to bind. Raises `IdentityProviderUnavailable` like `verify`."""
        claims = self._claims(authorization)
        if isinstance(claims, Refusal):
            return claims
        return Principal(str(claims["sub"]), _scopes(claims))

    def _claims(self, authorization: str | None) -> dict[str, Any] | Refusal:
        if not authorization:
            return Refusal("no authorization header")
        token = _bearer_token(authorization)
        if token is None:
            return Refusal("authorization is not a bearer token")
        claims = self._verified.get(token)
        if claims is not None and claims["exp"] + self.leeway_s < time.time():
            return Refusal("token expired")
        if claims is None:
            verified = self._verify_signature(token)
            if isinstance(verified, Refusal):
                return verified
            claims = verified
            if len(self._verified) >= VERIFIED_TOKENS_MAX:
                for oldest in list(islice(self._verified, VERIFIED_TOKENS_EVICTED)):
                    del self._verified[oldest]
            self._verified[token] = claims
        return claims

    def _verify_signature(self, token: str) -> dict[str, Any] | Refusal:
        try:
            key = self.keys.key(self._kid(token))
            if key is None:
                return Refusal("token signed with an unknown key")
            claims = _JWT_DECODER.decode(
                token,
                key=key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            return Refusal("token expired")
        except jwt.InvalidAudienceError:
            return Refusal("token for another audience")
        except jwt.InvalidIssuerError:
            return Refusal("token from another issuer")
        except jwt.PyJWTError as error:
            return Refusal(f"token invalid: {type(error).__name__}")
        return dict(claims)

    def _kid(self, token: str) -> str:
        """The `kid` of the token's header; raises `jwt.DecodeError` for a malformed token.
        Picks the key only: PyJWT's decode parses and checks the header itself."""
        segment = token.partition(".")[0]
        kid = self._header_kids.get(segment)
        if kid is None:
            kid = str(_JWT_DECODER.unverified_header(token).get("kid", ""))
            if len(self._header_kids) >= HEADER_KIDS_MAX:
                self._header_kids.clear()
            self._header_kids[segment] = kid
        return kid

    def _authorize(self, claims: dict[str, Any], command: ValidCommand) -> Principal | Refusal:
        issued_at = claims["iat"]
        if not isinstance(issued_at, int | float) or time.time() - issued_at > (
            self.max_token_age_s + self.leeway_s
        ):
            return Refusal("token too old")
        bound = claims.get(DATA_HASH_CLAIM)
        if bound is not None and bound != command.content_hash.hex():
            return Refusal("token is bound to other command data")
        scopes = _scopes(claims)
        needed = SERVICE_SCOPES.get(command.flow.name)
        if needed is not None and needed not in scopes:
            return Refusal(
                f"{command.flow.command_topic} needs a service token with scope {needed}"
            )
        return Principal(str(claims["sub"]), scopes)


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    return frozenset(str(claims.get("scope", "")).split())


def _bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > TOKEN_CHARS_MAX:
        return None
    return token


def jwks_reader(jwks_file: str | None, jwks_url: str | None) -> JwksReader:
    """Reads the JWKS document in a thread: neither a slow disk nor a slow provider may stall
    the event loop (it carries the Kafka heartbeats)."""
    if jwks_file:
        path = Path(jwks_file)

        async def read_file() -> bytes:
            return await asyncio.to_thread(path.read_bytes)

        return read_file
    if jwks_url:
        url = jwks_url

        async def read_url() -> bytes:
            try:
                return await asyncio.wait_for(
                    asyncio.to_thread(_http_get, url), JWKS_FETCH_TIMEOUT_S
                )
            except TimeoutError:
                raise IdentityProviderUnavailable(
                    f"no JWKS within {JWKS_FETCH_TIMEOUT_S} s", FetchOutcome.UNREACHABLE
                ) from None

        return read_url
    raise ValueError("LEDGERFLOW_AUTH_JWKS_FILE or LEDGERFLOW_AUTH_JWKS_URL is required")


def _http_get(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=JWKS_FETCH_TIMEOUT_S) as response:  # noqa: S310
            status = int(response.status)
            body: bytes = response.read(JWKS_BYTES_MAX + 1)
    except urllib.error.HTTPError as error:
        error.close()
        raise IdentityProviderUnavailable(
            f"identity provider answered HTTP {error.code}", FetchOutcome.HTTP_ERROR
        ) from None
    if status != 200:
        raise IdentityProviderUnavailable(
            f"identity provider answered HTTP {status}", FetchOutcome.HTTP_ERROR
        )
    if len(body) > JWKS_BYTES_MAX:
        raise IdentityProviderUnavailable(
            f"identity provider answered more than {JWKS_BYTES_MAX} bytes", FetchOutcome.NOT_JWKS
        )
    return body


def parse_jwks(document: bytes) -> dict[str, Any]:
    """Keys by kid; a body that is not a JWKS with usable keys is the provider's failure."""
    try:
        parsed = orjson.loads(document)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("keys"), list):
        raise _not_jwks("not a JSON object with a `keys` list")
    try:
        key_set = jwt.PyJWKSet.from_dict(parsed)
    except (ValueError, TypeError, KeyError, jwt.PyJWTError) as error:
        raise _not_jwks(type(error).__name__) from None
    return {str(k.key_id or ""): k.key for k in key_set.keys}


def _not_jwks(why: str) -> IdentityProviderUnavailable:
    return IdentityProviderUnavailable(
        f"identity provider answered something that is not a JWKS: {why}", FetchOutcome.NOT_JWKS
    )
