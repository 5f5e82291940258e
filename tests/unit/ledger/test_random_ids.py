"""The ids a batch makes before its locks: random version-4 UUIDs, as any UUID is used."""

import uuid
from datetime import UTC, datetime

import orjson

from ledgerflow.contracts.codec import encode_event
from ledgerflow.ledger_db.apply import RANDOM_IDS_MAX, random_ids


def test_ids_are_distinct_version_4_uuids() -> None:
    ids = random_ids(RANDOM_IDS_MAX)
    assert len(ids) == RANDOM_IDS_MAX == len(set(ids))
    for made in ids:
        assert isinstance(made, uuid.UUID)
        assert made.version == 4
        assert made.variant == uuid.RFC_4122
        again = uuid.UUID(str(made))  # the same id, written and read back
        assert again == made
        assert hash(again) == hash(made)
    # Random bits: over 10,000 ids, a bit outside the version and the variant is set about
    # half the time.
    for bit in (0, 31, 61, 80, 100, 127):
        ones = sum(made.int >> bit & 1 for made in ids)
        assert 0.45 * len(ids) < ones < 0.55 * len(ids), bit
    assert random_ids(0) == []


def test_an_id_is_written_into_a_result_event_as_its_string() -> None:
    made = random_ids(1)[0]
    value = encode_event(
        "transfer.completed",
        {"journal_entry_id": made},
        event_id=str(made),
        source="/ledgerflow",
        causation_id=None,
        correlation_id=None,
        time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    event = orjson.loads(value)
    assert event["id"] == event["data"]["journal_entry_id"] == str(made)
