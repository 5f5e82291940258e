"""Dead letters: the original record with its error, written so they never block a partition.

A letter keeps the record's bytes and headers, except `authorization`: a live bearer token must
not sit in the dead-letter topic's retention. A letter the broker or the producer refuses whole
(too large once our headers are added, or any other refusal) is written again truncated: the
headers and the error kept, the value cut, `x-truncated` saying how long it was. A letter
refused even so is returned to the caller, which holds back only that record's partition
(workers/app.py) and raises the alert; the other partitions of the batch go on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError

from ledgerflow.workers import metrics

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiokafka import AIOKafkaProducer

    from ledgerflow.contracts.parsing import Unattributable
    from ledgerflow.contracts.topics import Flow
    from ledgerflow.workers.records import Record

log = logging.getLogger("ledgerflow.dead_letters")

ERROR_HEADER_CHARS_MAX = 1_000
# Headers never copied into a letter (compared in lower case).
STRIPPED_HEADERS = frozenset({"authorization"})
# What a truncated letter keeps: enough of the value to recognise it, and the record's own
# headers only while they are small (ours, with the error and origin, are always kept).
TRUNCATED_VALUE_BYTES_MAX = 1_024
TRUNCATED_HEADERS_BYTES_MAX = 16 * 1024
# One attempt at a letter waits this long for the broker's acknowledgement.
LETTER_SEND_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    # Where the record came from: a refused letter holds back exactly this partition.
    source_topic: str = ""
    source_partition: int = 0
    source_offset: int = 0


def dead_letter(
    record: Record, reason: Unattributable, topic_prefix: str, flow: Flow
) -> DeadLetter:
    """The original bytes, unchanged, with the error and where they came from."""
    headers = [
        (k, v)
        for k, v in (record.headers or ())
        if not k.startswith("x-error") and k.lower() not in STRIPPED_HEADERS
    ]
    headers += [
        ("x-error", reason.error[:ERROR_HEADER_CHARS_MAX].encode()),
        ("x-error-class", reason.error_class.encode()),
        ("x-original-topic", record.topic.encode()),
        ("x-original-partition", str(record.partition).encode()),
        ("x-original-offset", str(record.offset).encode()),
    ]
    return DeadLetter(
        topic_prefix + flow.dlq_topic,
        record.key,
        record.value,
        headers,
        record.topic,
        record.partition,
        record.offset,
    )


def truncated(letter: DeadLetter) -> DeadLetter:
    """The letter cut to fit any topic: value shortened, the record's large headers dropped."""
    value = letter.value or b""
    ours = [(k, v) for k, v in letter.headers if k.startswith("x-")]
    theirs = [(k, v) for k, v in letter.headers if not k.startswith("x-")]
    if sum(len(k) + len(v or b"") for k, v in theirs) > TRUNCATED_HEADERS_BYTES_MAX:
        theirs = []
        ours.append(("x-headers-dropped", b"true"))
    ours.append(("x-truncated", f"value of {len(value)} bytes cut".encode()))
    return replace(letter, value=value[:TRUNCATED_VALUE_BYTES_MAX], headers=theirs + ours)


async def send_dead_letters(
    producer: AIOKafkaProducer, letters: Sequence[DeadLetter]
) -> list[DeadLetter]:
    """Write every letter, truncated where it was refused whole; return those refused even so.

    Every letter not returned was acknowledged by the broker, so the offsets of its record may
    be committed.
    """
    refused: list[DeadLetter] = []
    for letter, error in zip(letters, await _send_all(producer, letters), strict=True):
        if error is None:
            continue
        short = truncated(letter)
        [second] = await _send_all(producer, [short])
        if second is None:
            metrics.DEAD_LETTERS_TRUNCATED.labels(letter.source_topic).inc()
            log.warning(
                "dead letter written truncated",
                extra={"topic": letter.topic, "error_class": type(error).__name__},
            )
            continue
        metrics.DEAD_LETTERS_REFUSED.labels(letter.source_topic, type(second).__name__).inc()
        log.error(
            "dead letter refused even truncated: its partition is held back",
            extra={
                "topic": letter.topic,
                "error_class": type(second).__name__,
                "partition": letter.source_partition,
                "offset": letter.source_offset,
            },
        )
        refused.append(letter)
    return refused


async def _send_all(
    producer: AIOKafkaProducer, letters: Sequence[DeadLetter]
) -> list[BaseException | None]:
    """Each letter's failure (None: acknowledged). Sent together, awaited together."""

    async def one(letter: DeadLetter) -> None:
        future = await producer.send(
            letter.topic, letter.value, key=letter.key, headers=letter.headers
        )
        await future

    results = await asyncio.gather(
        *(asyncio.wait_for(one(letter), LETTER_SEND_TIMEOUT_S) for letter in letters),
        return_exceptions=True,
    )
    errors: list[BaseException | None] = []
    for result in results:
        if isinstance(result, KafkaError | TimeoutError | ValueError):
            errors.append(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            errors.append(None)
    return errors
