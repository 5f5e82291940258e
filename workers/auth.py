"""Who asked: the end user's (or a service's) JWT from the `authorization` header, verified.

Kafka ACLs say which service wrote a message, not which person asked for it. Every command
carries the identity provider's token; the worker verifies its signature against the
configured JWKS, its issuer, audience and times, the scope a flow needs, and, when the token
names it, the SHA-256 of the command's data. Ownership of the debited wallet is checked in the
ledger transaction (it needs the locked wallet row). Tokens are never logged.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import orjson

if TYPE_CHECKING:
    from contracts.parsing import ValidCommand

CASHIN_SCOPE = "ledger:cashin"
# Optional claim binding a token to one command's data: hex SHA-256 of its canonical JSON
# (`contracts.parsing.content_hash`), so a captured token cannot authorise another command.
DATA_HASH_CLAIM = "data_sha256"
ALGORITHMS = ("RS256", "ES256", "EdDSA")
JWKS_CACHE_S = 300.0
JWKS_FETCH_TIMEOUT_S = 5.0
TOKEN_CHARS_MAX = 8_192
VERIFIED_TOKENS_MAX = 10_000  # bound of the verified-token cache (cleared when full)


class AuthMode(StrEnum):
    REQUIRED = "required"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a command is `unauthorized`; safe to put in a rejection (no token material)."""

    detail: str


@dataclass(slots=True)
class Authenticator:
    issuer: str
    audience: str
    jwks_file: str | None = None
    jwks_url: str | None = None
    leeway_s: int = 300
    max_token_age_s: int = 3_600
    _keys: dict[str, Any] | None = None
    _loaded_at: float = 0.0
    # Verified tokens by their text: a session token signs many commands, and a signature
    # check costs far more than the rest of a command. Expiry is re-checked on every use.
    _verified: dict[str, dict[str, Any]] = field(default_factory=dict)

    def verify(self, authorization: str | None, command: ValidCommand) -> Principal | Refusal:
        if not authorization:
            return Refusal("no authorization header")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > TOKEN_CHARS_MAX:
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
                self._verified.clear()
            self._verified[token] = claims
        return self._authorize(claims, command)

    def _verify_signature(self, token: str) -> dict[str, Any] | Refusal:
        try:
            header = jwt.get_unverified_header(token)
            key = self._key(str(header.get("kid", "")))
            if key is None:
                return Refusal("token signed with an unknown key")
            claims = jwt.decode(
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

    def _authorize(self, claims: dict[str, Any], command: ValidCommand) -> Principal | Refusal:
        issued_at = claims["iat"]
        if not isinstance(issued_at, int | float) or time.time() - issued_at > (
            self.max_token_age_s + self.leeway_s
        ):
            return Refusal("token too old")
        bound = claims.get(DATA_HASH_CLAIM)
        if bound is not None and bound != command.content_hash.hex():
            return Refusal("token is bound to other command data")
        scopes = frozenset(str(claims.get("scope", "")).split())
        if command.flow.name == "cashin" and CASHIN_SCOPE not in scopes:
            return Refusal(f"cash-in needs a service token with scope {CASHIN_SCOPE}")
        return Principal(str(claims["sub"]), scopes)

    def _key(self, kid: str) -> Any:
        now = time.monotonic()
        if self._keys is None or now - self._loaded_at > JWKS_CACHE_S:
            self._keys = _load_jwks(self.jwks_file, self.jwks_url)
            self._loaded_at = now
        key = self._keys.get(kid)
        if key is None and kid and self.jwks_url:
            # A key rotated in since the last fetch: refresh once.
            self._keys = _load_jwks(self.jwks_file, self.jwks_url)
            self._loaded_at = now
            key = self._keys.get(kid)
        return key


def _load_jwks(jwks_file: str | None, jwks_url: str | None) -> dict[str, Any]:
    if jwks_file:
        document = orjson.loads(Path(jwks_file).read_bytes())
    elif jwks_url:
        with urllib.request.urlopen(jwks_url, timeout=JWKS_FETCH_TIMEOUT_S) as response:  # noqa: S310
            document = orjson.loads(response.read())
    else:
        raise ValueError("LEDGERFLOW_AUTH_JWKS_FILE or LEDGERFLOW_AUTH_JWKS_URL is required")
    key_set = jwt.PyJWKSet.from_dict(document)
    return {str(k.key_id or ""): k.key for k in key_set.keys}
