"""Logs: JSON lines with ids and outcomes; no personal data and no secret, ever.

Real worker and relay processes at DEBUG, with traces exported over OTLP/HTTP (to a receiver in
this test, authenticated with a token), run a workload full of distinctive personal data and
secrets, through the success, rejection, invalid, dead-letter and failed-batch paths. Every
captured log line is then searched for each value: zero hits.
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ledgerflow.contracts.commands import (
    ApproveCashOut,
    BankAccount,
    InitiateTransfer,
    RequestOnboarding,
)
from ledgerflow.contracts.topics import CASHIN, CASHOUT, ONBOARDING, TRANSFER
from ledgerflow.testkit.commands import cashin, record, wallet_of
from ledgerflow.testkit.pipeline import event_id_of, publish, running_pipeline
from ledgerflow.testkit.plugin import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
FULL_NAME = "Quetzalina Zyxwarth-Obscuro"
PHONE = "+4915199887766"
EMAIL = "quetzalina.zyxwarth@obscuro-mail.example"
NATIONAL_ID = "NIDQZ4471908X"
IBAN = "DE44500105175407324931"
BANK_CODE = "QZBKDEFFXXX"
PAYOUT_IBAN = "FR7630006000011234567890189"
NOTE = "Zyxwarth rent share for Quetzalina"
JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiJxdWV0emFsaW5hIiwiaXNzIjoibGVkZ2VyZmxvdyJ9."
    "c2lnbmF0dXJlLVF6N0t4OTJtTHBWd1I0"
)
OTLP_TOKEN = "otlp-token-Qz7Kx92mLpVwR4"
MIGRATION_PASSWORD = "MigrPw-7Hq2vZ9kT"
POISON = "POISON-PILL-7781"


class _Receiver(BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP trace receiver: keeps each request's path, headers and body."""

    received: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    received: list[tuple[str, dict[str, str], bytes]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def onboarding(phone: str = PHONE, name: str = FULL_NAME) -> RequestOnboarding:
    return RequestOnboarding(
        customer_id=uuid.uuid4(),
        full_name=name,
        phone_number=phone,
        currency="EUR",
        email=EMAIL,
        national_id=NATIONAL_ID,
        bank_account=BankAccount(bank_code=BANK_CODE, account_number=IBAN),
    )


def read_logs(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text(errors="replace") for path in directory.glob("*.log")}


async def test_logs_are_json_with_ids_and_outcomes_and_never_pii_or_secrets(
    postgres: Any,
    kafka: Any,
    ledgerflow_db_template: str,
    tmp_path: Path,
    otlp_receiver: tuple[str, list[tuple[str, dict[str, str], bytes]]],
) -> None:
    endpoint, received = otlp_receiver
    bearer = f"Bearer {JWT}"
    async with running_pipeline(
        postgres,
        kafka,
        ledgerflow_db_template,
        tmp_path,
        log_level="DEBUG",
        otlp_endpoint=endpoint,
        otlp_headers=f"authorization=Bearer {OTLP_TOKEN}",
        migration_database_url=f"postgresql://owner:{MIGRATION_PASSWORD}@127.0.0.1:1/ledgerflow",
        fault_poison_marker=POISON,
    ) as p:
        secrets = [p.database.app_url]
        alice = onboarding()
        bob = onboarding(phone="+4915199887700", name="Bertholdine Zyxwarth")
        a, b = wallet_of(alice), wallet_of(bob)
        correlation = f"corr-{uuid.uuid4()}"
        sent = [
            await publish(p.producer, alice, ONBOARDING, p.prefix, authorization=bearer),
            await publish(
                p.producer,
                bob,
                ONBOARDING,
                p.prefix,
                authorization=bearer,
                correlation_id=correlation,
            ),
        ]
        for rec in sent:
            await p.results.wait_for(event_id_of(rec), timeout_s=TIMEOUT_S)
        # The same phone number again, once Alice has it: rejected, phone_number_taken.
        sent.append(
            await publish(p.producer, onboarding(), ONBOARDING, p.prefix, authorization=bearer)
        )
        await p.results.wait_for(event_id_of(sent[2]), timeout_s=TIMEOUT_S)
        more = [
            await publish(p.producer, cashin(a, 50_000), CASHIN, p.prefix, authorization=bearer),
        ]
        await p.results.wait_for(event_id_of(more[0]), timeout_s=TIMEOUT_S)
        more += [
            await publish(
                p.producer,
                InitiateTransfer(
                    transfer_id=uuid.uuid4(),
                    from_account_id=a,
                    to_account_id=b,
                    amount=1_000,
                    currency="EUR",
                    note=NOTE,
                ),
                TRANSFER,
                p.prefix,
                authorization=bearer,
            ),
            await publish(
                p.producer,
                ApproveCashOut(
                    cashout_id=uuid.uuid4(),
                    wallet_account_id=a,
                    amount=2_000,
                    currency="EUR",
                    destination=BankAccount(bank_code=BANK_CODE, account_number=PAYOUT_IBAN),
                ),
                CASHOUT,
                p.prefix,
                authorization=bearer,
            ),
        ]
        # Invalid: personal data in a field that fails validation; answered invalid_command.
        invalid = record(onboarding(), authorization=bearer)
        envelope = orjson.loads(invalid.value)
        envelope["data"]["phone_number"] = f"call {FULL_NAME} on {PHONE}"
        topic = p.prefix + ONBOARDING.command_topic
        await p.producer.send_and_wait(topic, orjson.dumps(envelope), key=invalid.key)
        # Unattributable: dead-lettered, with personal data and a token in it.
        await p.producer.send_and_wait(
            topic, f'{{"name": "{FULL_NAME}", "token": "{JWT}"'.encode(), key=b"x"
        )
        # A command that fails like a bug would: the batch fails, is isolated, dead-lettered.
        poisoned = onboarding(phone="+4915199887711", name=f"{FULL_NAME} {POISON}")
        await publish(p.producer, poisoned, ONBOARDING, p.prefix, authorization=bearer)
        for rec in more:
            await p.results.wait_for(event_id_of(rec), timeout_s=TIMEOUT_S)
        await p.results.wait_for(envelope["id"], timeout_s=TIMEOUT_S)

        def isolated() -> bool:
            _status, text = p.worker.get("/metrics")
            return 'ledgerflow_dead_letters_total{topic="onboarding.requested"} 2.0' in text

        await wait_until(isolated, timeout_s=TIMEOUT_S, message="the poisoned command isolated")
        secrets.append(p.database.owner_url)
    # The processes have stopped: their logs are complete, their spans flushed.

    logs = read_logs(tmp_path)
    assert len(logs) == 2, logs.keys()
    forbidden = [
        FULL_NAME,
        "Quetzalina",
        "Zyxwarth",
        PHONE,
        PHONE.removeprefix("+"),
        "15199887766",
        EMAIL,
        NATIONAL_ID,
        IBAN,
        PAYOUT_IBAN,
        NOTE,
        JWT,
        JWT.split(".")[2],
        OTLP_TOKEN,
        MIGRATION_PASSWORD,
        "ledgerflow_app:ledgerflow_app@",
        "ledgerflow_owner:ledgerflow_owner@",
        *secrets,
    ]
    hits = {
        value: [name for name, text in logs.items() if value in text]
        for value in forbidden
        if any(value in text for text in logs.values())
    }
    assert not hits, f"personal data or secrets in the logs: {hits}"

    # Every line is one JSON object; each decided command has a line with its ids and outcome.
    lines = [json.loads(line) for text in logs.values() for line in text.splitlines() if line]
    assert all({"ts", "level", "logger", "msg", "service"} <= line.keys() for line in lines)
    decided = [line for line in lines if line["msg"] == "command decided"]
    by_command = {line["command_id"]: line for line in decided}
    for rec in sent + more:
        line = by_command[event_id_of(rec)]
        assert {"correlation_id", "idempotency_key", "outcome", "flow", "result_event_id"} <= (
            line.keys()
        )
    assert by_command[event_id_of(sent[1])]["correlation_id"] == correlation
    assert by_command[event_id_of(sent[2])]["outcome"] == "rejected"
    assert by_command[event_id_of(sent[2])]["reason"] == "phone_number_taken"
    assert by_command[envelope["id"]]["outcome"] == "invalid"
    assert any(line["msg"] == "batch failed, will retry" for line in lines)

    # Spans went out over OTLP/HTTP with the configured token, from both processes.
    assert received, "no spans exported over OTLP"
    services: set[str] = set()
    for path, headers, body in received:
        assert path == "/v1/traces"
        assert {k.lower(): v for k, v in headers.items()}["authorization"] == (
            f"Bearer {OTLP_TOKEN}"
        )
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
    assert services == {"ledgerflow-worker", "ledgerflow-relay"}
