"""A throwaway identity provider: an issuer key pair, its JWKS file, and signed tokens.

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

from workers.auth import CASHIN_SCOPE, DATA_HASH_CLAIM

if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_ISSUER = "https://identity.ledgerflow.local"
DEFAULT_AUDIENCE = "ledgerflow"
TOKEN_TTL_S = 300


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

    def service_bearer(self, service: str = "cashin-gateway") -> str:
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
