"""Personal data encrypted at the application level (AES-256-GCM), with rotating keys.

Names, phone numbers, emails, national ids and bank account numbers are stored only as
ciphertext. Each row records the id of the key that encrypted it, so keys can rotate
(`ledgerflow pii rotate-key`); old keys stay in the keyring until no row uses them. The phone
number's uniqueness is enforced on a keyed hash (HMAC-SHA256), never on plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from collections.abc import Mapping
    from uuid import UUID

NONCE_BYTES = 12
KEY_BYTES = 32
ENCRYPTED_FIELDS = ("full_name", "phone_number", "email", "national_id", "bank_account_number")


class PiiKeyError(ValueError):
    """A keyring that cannot be used: malformed, or missing the key a row names."""


@dataclass(frozen=True, slots=True)
class PiiVault:
    keys: Mapping[str, bytes]
    active_key_id: str
    index_key: bytes

    def __post_init__(self) -> None:
        if self.active_key_id not in self.keys:
            raise PiiKeyError(f"the active PII key {self.active_key_id!r} is not in the keyring")
        if any(len(k) != KEY_BYTES for k in self.keys.values()):
            raise PiiKeyError("PII keys are 32 bytes (AES-256)")
        if len(self.index_key) < KEY_BYTES:
            raise PiiKeyError("the PII index key has at least 32 bytes")

    @classmethod
    def from_text(cls, keyring: str, active_key_id: str, index_key: str) -> PiiVault:
        """`keyring` is `id:base64key[,id:base64key…]`; keys are url-safe base64 of 32 bytes."""
        keys: dict[str, bytes] = {}
        for entry in filter(None, (e.strip() for e in keyring.split(","))):
            key_id, sep, encoded = entry.partition(":")
            if not sep or not key_id:
                raise PiiKeyError("keyring entries look like id:base64key")
            keys[key_id] = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        raw_index = base64.urlsafe_b64decode(index_key + "=" * (-len(index_key) % 4))
        return cls(keys, active_key_id, raw_index)

    def encrypt(self, customer_id: UUID, field: str, value: str | None) -> bytes | None:
        """nonce || ciphertext+tag; the customer and field are bound in as associated data, so a
        ciphertext moved to another row or column does not decrypt."""
        if value is None:
            return None
        nonce = os.urandom(NONCE_BYTES)
        aead = AESGCM(self.keys[self.active_key_id])
        return nonce + aead.encrypt(nonce, value.encode(), _aad(customer_id, field))

    def decrypt(self, customer_id: UUID, field: str, blob: bytes | None, key_id: str) -> str | None:
        if blob is None:
            return None
        key = self.keys.get(key_id)
        if key is None:
            raise PiiKeyError(f"no PII key {key_id!r} in the keyring")
        nonce, sealed = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
        return AESGCM(key).decrypt(nonce, sealed, _aad(customer_id, field)).decode()

    def phone_index(self, phone_number: str) -> bytes:
        return hmac.new(self.index_key, phone_number.encode(), hashlib.sha256).digest()


def _aad(customer_id: UUID, field: str) -> bytes:
    return f"{customer_id}:{field}".encode()


def new_key() -> str:
    """A fresh key, url-safe base64, for a keyring entry or the index key."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode().rstrip("=")


# Development keys: the embedded stack, tests and the demo. Public, so worthless as secrets:
# every deployment sets LEDGERFLOW_PII_KEYS and LEDGERFLOW_PII_INDEX_KEY (or their *_FILE).
DEV_KEY_ID = "dev"
DEV_KEYRING = "dev:ZGV2LW9ubHkta2V5LWRvLW5vdC11c2UtaW4tcHJvZCE"
DEV_INDEX_KEY = "ZGV2LW9ubHktaW5kZXgta2V5LW5vdC1mb3ItcHJvZHVjdGlvbg"
DEV_VAULT = PiiVault.from_text(DEV_KEYRING, DEV_KEY_ID, DEV_INDEX_KEY)
