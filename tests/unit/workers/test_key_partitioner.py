"""The producers' partitioner puts every key where Kafka's default partitioner does, and every
producer of the project is built by one function with it."""

from __future__ import annotations

import uuid

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from ledgerflow.workers.kafka_io import (
    PRODUCER_BATCH_BYTES_MAX,
    _key_hash,
    idempotent_producer,
    key_partitioner,
)

# Partition of a key as the Java client computes it (Utils.toPositive(Utils.murmur2(key)) %
# partitions), from Kafka's own DefaultPartitionerTest and murmur2 test vectors.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_matches_the_java_clients_hash() -> None:
    for key, java in JAVA_MURMUR2.items():
        assert _key_hash(key) == java & 0x7FFFFFFF, key


@given(
    key=st.one_of(st.binary(max_size=64), st.uuids().map(lambda u: str(u).encode())),
    partitions=st.integers(min_value=1, max_value=48),
)
def test_same_partition_as_kafkas_default(key: bytes, partitions: int) -> None:
    all_partitions = list(range(partitions))
    expected = DefaultPartitioner()(key, all_partitions, all_partitions)
    assert key_partitioner(key, all_partitions, all_partitions) == expected
    assert key_partitioner(key, all_partitions, all_partitions) == expected  # remembered


def test_a_key_keeps_its_partition_whatever_is_available() -> None:
    key = str(uuid.UUID(int=7)).encode()
    first = key_partitioner(key, list(range(6)), [])
    assert key_partitioner(key, list(range(6)), [first]) == first
    assert key_partitioner(key, list(range(6)), [p for p in range(6) if p != first]) == first


def test_an_unkeyed_record_goes_to_an_available_partition() -> None:
    for _ in range(50):
        assert key_partitioner(None, list(range(6)), [2, 4]) in {2, 4}
    assert key_partitioner(None, list(range(6)), []) in range(6)


async def test_the_projects_producer_uses_it_and_large_batches() -> None:
    producer = idempotent_producer("127.0.0.1:9", "test")
    assert producer._partitioner is key_partitioner
    # aiokafka's 16 KiB default holds a relay round back per partition (docs/benchmarks.md).
    assert producer._message_accumulator._batch_size == PRODUCER_BATCH_BYTES_MAX
