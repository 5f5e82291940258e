"""A throwaway identity provider: an issuer key pair, its JWKS file, signed tokens, and a signer
that puts on each command the token the API layer would forward.

Used by `ledgerflow demo` (which must show the real authenticated path), the benchmarks and
the test kit. Production tokens come from the real identity provider (e.g. Cognito).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

from ledgerflow.contracts.commands import (
    ConfirmCashIn,
    RequestOnboarding,
    ReturnCashOut,
    SettleCashOut,
)
from ledgerflow.ledger_db.rules import wallet_account_id
from ledgerflow.workers.auth import CASHIN_SCOPE, DATA_HASH_CLAIM, PAYOUT_SCOPE

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic import BaseModel

DEFAULT_ISSUER = "https://identity.ledgerflow.local"
DEFAULT_AUDIENCE = "ledgerflow"
TOKEN_TTL_S = 300
CASHIN_GATEWAY = "cashin-gateway"
PAYOUT_SERVICE = "payout-service"


@dataclass(slots=True)
class Issuer:
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE
    key_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # RS256, as identity providers such as Cognito sign: verifying RSA costs a fraction of ECDSA.
    _key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [public | {"kid": self.key_id, "use": "sig", "alg": "RS256"}]}

    def write_jwks(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(self.jwks()))
        return path

    def token(
        self,
        subject: str,
        *,
        scope: str | None = None,
        data_hash: bytes | None = None,
        ttl_s: int = TOKEN_TTL_S,
        issued_at: float | None = None,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> str:
        now = int(issued_at if issued_at is not None else time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "aud": audience or self.audience,
            "sub": subject,
            "iat": now,
            "exp": now + ttl_s,
        }
        if scope:
            claims["scope"] = scope
        if data_hash is not None:
            claims[DATA_HASH_CLAIM] = data_hash.hex()
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.key_id})

    def bearer(self, subject: str, **kwargs: Any) -> str:
        return "Bearer " + self.token(subject, **kwargs)

    def service_bearer(self, service: str = CASHIN_GATEWAY) -> str:
        return self.bearer(service, scope=CASHIN_SCOPE)

    def settings(self, jwks_path: Path) -> dict[str, str]:
        """The LEDGERFLOW_AUTH_* settings (as `ledgerflow_env` keywords) that trust this issuer."""
        self.write_jwks(jwks_path)
        return {
            "auth_mode": "required",
            "auth_jwks_file": str(jwks_path),
            "auth_issuer": self.issuer,
            "auth_audience": self.audience,
        }


def customer_subject(customer_id: uuid.UUID) -> str:
    """The subject a customer's session token carries (the one that owns their wallets)."""
    return f"user-{customer_id}"


@dataclass(slots=True)
class Signer:
    """Signs commands as the API layer forwards them: the customer being onboarded, the debited
    wallet's owner, or a service token (the cash-in gateway's, the payout service's). It learns
    owners from the onboardings it signs; a wallet it does not know is signed by a subject that
    owns nothing (so the ledger answers as it would to a stranger: `account_not_found` or
    `unauthorized`)."""

    issuer: Issuer = field(default_factory=Issuer)
    owners: dict[uuid.UUID, str] = field(default_factory=dict)  # wallet -> its owner's subject
    tokens: dict[str, str] = field(default_factory=dict)  # subject and scope -> a bearer
    ttl_s: int = TOKEN_TTL_S  # each session token's life (a benchmark run outlives 5 minutes)

    def authorization(self, command: BaseModel, as_subject: str | None = None) -> str:
        """The `authorization` header value for `command`; `as_subject` signs as someone else."""
        scope = None
        # Someone else signing a service's command holds no service scope: a customer's token.
        if isinstance(command, ConfirmCashIn):
            subject, scope = CASHIN_GATEWAY, CASHIN_SCOPE
        elif isinstance(command, SettleCashOut | ReturnCashOut):
            subject, scope = PAYOUT_SERVICE, PAYOUT_SCOPE
        elif isinstance(command, RequestOnboarding):
            subject = as_subject or customer_subject(command.customer_id)
            wallet = wallet_account_id(command.customer_id, command.currency)
            self.owners.setdefault(wallet, subject)
        else:
            # The debited wallet: a transfer's or payment's sender, a cash-out's wallet, the
            # merchant giving a refund.
            fields = ("from_account_id", "wallet_account_id", "merchant_account_id")
            debited: uuid.UUID = next(getattr(command, f) for f in fields if hasattr(command, f))
            subject = as_subject or self.owners.get(debited, f"user-unknown-{debited}")
        if as_subject is not None and scope is not None:
            subject, scope = as_subject, None
        # One token per user session, as the API layer forwards it for many commands.
        session = f"{subject} {scope or ''}"
        if session not in self.tokens:
            self.tokens[session] = self.issuer.bearer(subject, scope=scope, ttl_s=self.ttl_s)
        return self.tokens[session]
