"""The content-hash key: HMAC-SHA-256 of the plain digest, configured like every secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import TYPE_CHECKING

import pytest

from ledgerflow.ledger_db.content_hash import (
    DEV_CONTENT_HASH_KEY,
    ContentHashKey,
    ContentHashKeyError,
)
from ledgerflow.workers.settings import Settings, content_hash_key

if TYPE_CHECKING:
    from pathlib import Path

PLAIN = hashlib.sha256(b'{"amount":1}').digest()


def test_the_stored_value_is_the_hmac_of_the_plain_digest() -> None:
    key = ContentHashKey(os.urandom(32))
    assert key.keyed(PLAIN) == hmac.new(key.secret, PLAIN, hashlib.sha256).digest() != PLAIN
    assert ContentHashKey(os.urandom(32)).keyed(PLAIN) != key.keyed(PLAIN)


def test_the_deployment_state_decides_plain_or_keyed_and_refuses_another_key() -> None:
    key = ContentHashKey(os.urandom(32))
    assert not key.writes_keyed(None)
    assert key.writes_keyed(key.check)
    with pytest.raises(ContentHashKeyError):
        key.writes_keyed(ContentHashKey(os.urandom(32)).check)


def test_a_short_key_is_refused_and_the_secret_is_not_in_repr() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ContentHashKey(b"short")
    key = ContentHashKey(b"s" * 32)
    assert "sss" not in repr(key)


def test_the_default_is_the_public_dev_key_and_the_file_variant_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGERFLOW_CONTENT_HASH_KEY", raising=False)
    assert content_hash_key(Settings()).is_dev
    secret = os.urandom(32)
    path = tmp_path / "content-hash-key"
    text = base64.urlsafe_b64encode(secret).decode().rstrip("=")
    path.write_text(text + "\n")
    monkeypatch.setenv("LEDGERFLOW_CONTENT_HASH_KEY_FILE", str(path))
    settings = Settings()
    assert content_hash_key(settings).secret == secret
    assert not content_hash_key(settings).is_dev
    assert text not in repr(settings), "a secret setting"
    assert DEV_CONTENT_HASH_KEY.is_dev
