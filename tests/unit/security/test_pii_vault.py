"""Personal data encryption: round trip, binding to row and field, key rotation."""

from __future__ import annotations

import uuid

import pytest
from cryptography.exceptions import InvalidTag

from ledgerflow.ledger_db.pii import PiiKeyError, PiiVault, new_key


def vault(keyring: str, active: str) -> PiiVault:
    return PiiVault.from_text(keyring, active, new_key())


def test_round_trip_and_nothing_readable() -> None:
    v = vault(f"k1:{new_key()}", "k1")
    cid = uuid.uuid4()
    blob = v.encrypt(cid, "full_name", "Ada Lovelace")
    assert blob is not None
    assert b"Ada" not in blob
    assert v.decrypt(cid, "full_name", blob, "k1") == "Ada Lovelace"
    assert v.encrypt(cid, "email", None) is None
    assert blob != v.encrypt(cid, "full_name", "Ada Lovelace"), "a fresh nonce every time"


def test_ciphertext_is_bound_to_its_row_and_field() -> None:
    v = vault(f"k1:{new_key()}", "k1")
    cid = uuid.uuid4()
    blob = v.encrypt(cid, "national_id", "X1234567")
    with pytest.raises(InvalidTag):
        v.decrypt(uuid.uuid4(), "national_id", blob, "k1")
    with pytest.raises(InvalidTag):
        v.decrypt(cid, "full_name", blob, "k1")


def test_rotation_keeps_old_data_readable() -> None:
    k1, k2 = new_key(), new_key()
    old = vault(f"k1:{k1}", "k1")
    cid = uuid.uuid4()
    blob = old.encrypt(cid, "phone_number", "+4915112345678")
    both = PiiVault.from_text(f"k1:{k1},k2:{k2}", "k2", new_key())
    assert both.decrypt(cid, "phone_number", blob, "k1") == "+4915112345678"
    new_blob = both.encrypt(cid, "phone_number", "+4915112345678")
    only_new = PiiVault.from_text(f"k2:{k2}", "k2", new_key())
    assert only_new.decrypt(cid, "phone_number", new_blob, "k2") == "+4915112345678"
    with pytest.raises(PiiKeyError):
        only_new.decrypt(cid, "phone_number", blob, "k1")


def test_phone_index_is_keyed() -> None:
    index_key = new_key()
    a = PiiVault.from_text(f"k1:{new_key()}", "k1", index_key)
    b = PiiVault.from_text(f"k1:{new_key()}", "k1", index_key)
    other = PiiVault.from_text(f"k1:{new_key()}", "k1", new_key())
    assert a.phone_index("+4915112345678") == b.phone_index("+4915112345678")
    assert a.phone_index("+4915112345678") != other.phone_index("+4915112345678")


@pytest.mark.parametrize("keyring", ["", "nokey", "k1:" + "A" * 10])
def test_bad_keyrings_are_refused(keyring: str) -> None:
    with pytest.raises((PiiKeyError, ValueError)):
        PiiVault.from_text(keyring, "k1", new_key())
