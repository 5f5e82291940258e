"""`LedgerflowContainer`: the image a team deploys, against containerised PostgreSQL and Kafka.
Needs a Docker engine and the image (`docker build -t ledgerflow:test .`, or
LEDGERFLOW_TEST_IMAGE); skips loudly where either is missing."""

from __future__ import annotations

import os

import pytest
from aiokafka import AIOKafkaProducer

from ledgerflow.contracts.topics import ONBOARDING
from ledgerflow.harness.results import ResultCollector, publish
from ledgerflow.testkit.commands import onboarding
from ledgerflow.testkit.containers import LedgerflowContainer
from ledgerflow.testkit.plugin import docker_available, skip_loudly

pytestmark = pytest.mark.integration

IMAGE = os.environ.get("LEDGERFLOW_TEST_IMAGE", "ledgerflow:test")


def _image_present(image: str) -> bool:
    import docker  # type: ignore[import-untyped]  # noqa: PLC0415 - with Docker only

    client = docker.from_env()
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()
    return True


async def test_the_deployed_image_answers_a_command() -> None:
    if not docker_available():
        skip_loudly("no Docker engine answers: LedgerflowContainer (testkit.containers) not run")
    if not _image_present(IMAGE):
        skip_loudly(f"image {IMAGE} is not built: `docker build -t {IMAGE} .` first")
    with LedgerflowContainer(IMAGE, topic_prefix="it.") as ledgerflow:
        producer = AIOKafkaProducer(bootstrap_servers=ledgerflow.kafka_bootstrap_servers)
        results = ResultCollector(ledgerflow.kafka_bootstrap_servers, "it.")
        await producer.start()
        try:
            await results.start()
            command = onboarding()
            await publish(producer, command, ONBOARDING, "it.")
            [event] = await results.wait_for_key(str(command.customer_id), timeout_s=60)
            assert event["type"] == "onboarding.completed"
        finally:
            await results.stop()
            await producer.stop()
