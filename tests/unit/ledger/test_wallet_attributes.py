"""What a writer knows of its wallets between batches: one version at a time, bounded."""

from __future__ import annotations

import uuid

from ledgerflow.ledger_db.wallet_attributes import Attributes, WalletAttributes


def attributes(tier: str = "basic") -> Attributes:
    return ("EUR", "open", tier, "subject-1", "consumer", uuid.uuid4())


def test_known_only_at_the_version_read_with_them() -> None:
    known = WalletAttributes()
    w = uuid.uuid4()
    assert known.unknown([w]) == [w]
    known.remember(3, w, attributes())
    assert known.unknown([w]) == []
    assert known.get(3, w) is not None
    assert known.get(4, w) is None  # changed since: read again


def test_another_version_forgets_every_wallet() -> None:
    known = WalletAttributes()
    a, b = uuid.uuid4(), uuid.uuid4()
    known.remember(1, a, attributes())
    known.remember(2, b, attributes("full"))
    assert (known.version, len(known)) == (2, 1)
    assert known.get(2, a) is None
    assert known.get(2, b) == known.get(2, b)
    # A batch that read an older version after another read a newer one: forgotten again,
    # so neither batch's attributes outlive a version they were not read at.
    known.remember(1, a, attributes())
    assert (known.version, len(known)) == (1, 1)
    assert known.get(1, b) is None


def test_bounded_the_oldest_forgotten_first() -> None:
    known = WalletAttributes(size_max=2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for w in (a, b, c):
        known.remember(7, w, attributes())
    assert len(known) == 2
    assert known.unknown([a, b, c]) == [a]
    known.remember(7, b, attributes("full"))  # known already: nothing forgotten
    assert known.unknown([a, b, c]) == [a]
    assert known.get(7, b) is not None
    assert known.get(7, b)[2] == "full"  # type: ignore[index]
