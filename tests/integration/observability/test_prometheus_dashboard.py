"""Every dashboard query returns data from a real Prometheus scraping real Ledgerflow processes.

A Prometheus of this test's own (Debian's package; the test skips loudly without it) scrapes the
worker and the relay every second and loads the alert rules. After a workload that goes through
every path the dashboard shows (completed, rejected, invalid, failed batch, dead letter), each
query of deploy/grafana/dashboards/ledgerflow.json is evaluated through Prometheus' HTTP API: a
query with no data, or with only NaN, fails the test. Every alert and recording rule must also
evaluate without error.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import urllib.parse
import urllib.request
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from observability_helpers import ALERT_RULES, DASHBOARD, prometheus_binaries

from ledgerflow.contracts.commands import ApproveCashOut, BankAccount, InitiateTransfer
from ledgerflow.contracts.topics import CASHIN, CASHOUT, ONBOARDING, TRANSFER
from ledgerflow.harness.processes import free_port
from ledgerflow.testkit.commands import cashin, onboarding, transfer, wallet_of
from ledgerflow.testkit.pipeline import event_id_of, publish, running_pipeline
from ledgerflow.testkit.plugin import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
POISON = "POISON-DASHBOARD-1"
# Grafana's variables, as a query would see them with "All" selected and a short time range.
VARIABLES = {"$__rate_interval": "1m", "$flow": ".*"}


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return int(response.status) == 200
        except OSError:
            return False


@pytest.fixture
def prometheus_binary() -> str:
    return prometheus_binaries()[1]


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"unknown variable in {panel['title']}: {expr}"
            queries.append((f"{panel['title']} [{target['refId']}]", expr))
    return queries


@contextmanager
def start_prometheus(binary: str, tmp_path: Path, targets: list[str]) -> Iterator[Prometheus]:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [{"job_name": "ledgerflow", "static_configs": [{"targets": targets}]}],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


async def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Path, prometheus_binary: str
) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 25
    async with running_pipeline(
        postgres,
        kafka,
        ledgerflow_db_template,
        tmp_path / "processes",
        lag_interval_ms="500",
        fault_poison_marker=POISON,
        api=True,
    ) as p:
        assert p.api is not None
        targets = [f"127.0.0.1:{x.port}" for x in (p.worker, p.relay, p.api)]
        with start_prometheus(prometheus_binary, tmp_path, targets) as prometheus:
            await wait_until(prometheus.ready, timeout_s=TIMEOUT_S, message="Prometheus ready")

            def scraped() -> bool:
                answer = prometheus.get("/api/v1/targets")["data"]["activeTargets"]
                return len(answer) == len(targets) and all(t["health"] == "up" for t in answer)

            await wait_until(scraped, timeout_s=TIMEOUT_S, message="every target scraped")

            # The workload: every outcome and failure path the dashboard shows.
            alice, bob = onboarding(), onboarding()
            a, b = wallet_of(alice), wallet_of(bob)
            sent = [
                await publish(p.producer, alice, ONBOARDING, p.prefix),
                await publish(p.producer, bob, ONBOARDING, p.prefix),
            ]
            for rec in sent:
                await p.results.wait_for(event_id_of(rec), timeout_s=TIMEOUT_S)
            more = [await publish(p.producer, cashin(a, 100_000), CASHIN, p.prefix)]
            await p.results.wait_for(event_id_of(more[0]), timeout_s=TIMEOUT_S)
            more += [
                await publish(p.producer, transfer(a, b, 100 + i), TRANSFER, p.prefix)
                for i in range(20)
            ]
            more += [
                await publish(p.producer, transfer(b, a, 10**9), TRANSFER, p.prefix),  # rejected
                await publish(
                    p.producer,
                    ApproveCashOut(
                        cashout_id=uuid.uuid4(),
                        wallet_account_id=a,
                        amount=1_000,
                        currency="EUR",
                        destination=BankAccount(bank_code="BANKDEFF", account_number="DE01"),
                    ),
                    CASHOUT,
                    p.prefix,
                ),
            ]
            topic = p.prefix + TRANSFER.command_topic
            await p.producer.send_and_wait(topic, b"not json", key=b"garbage")  # dead letter
            poisoned = InitiateTransfer(  # fails like a bug would: isolated, dead-lettered
                transfer_id=uuid.uuid4(),
                from_account_id=a,
                to_account_id=b,
                amount=1,
                currency="EUR",
                note=POISON,
            )
            await publish(p.producer, poisoned, TRANSFER, p.prefix)
            for rec in more:
                await p.results.wait_for(event_id_of(rec), timeout_s=TIMEOUT_S)
            commands = len(sent) + len(more)
            # The read API's panels: a wallet read, a history page, one unknown wallet (404).
            for path in (f"/v1/wallets/{a}", f"/v1/wallets/{a}/entries", f"/v1/wallets/{b}x"):
                await p.get(path)

            seen: list[float] = []
            read_routes = ("/v1/wallets/{account_id}", "/v1/wallets/{account_id}/entries")

            async def wait_scraped_reads(each: int) -> None:
                """Prometheus scraped the API after `each` reads of every read route: the
                latency panels' rate() needs a sample before the second wave and one after."""

                def scraped() -> bool:
                    result = prometheus.query(
                        "sum by (route) (ledgerflow_api_request_seconds_count)"
                    )
                    counts = {r["metric"].get("route"): float(r["value"][1]) for r in result}
                    return all(counts.get(route, 0) >= each for route in read_routes)

                await wait_until(
                    scraped, timeout_s=TIMEOUT_S, message=f"API scraped after {each} reads"
                )

            def counted() -> bool:
                """Each command decided once and published once, two dead letters: a dead
                letter written twice or a command applied twice shows here."""
                result = prometheus.query(
                    "sum(ledgerflow_commands_total) + sum(ledgerflow_dead_letters_total)"
                    " + sum(ledgerflow_relay_published_total)"
                )
                if result:
                    seen.append(float(result[0]["value"][1]))
                return bool(seen) and seen[-1] == 2 * commands + 2

            async def wait_counted(what: str) -> None:
                try:
                    await wait_until(counted, timeout_s=TIMEOUT_S, message=what)
                except TimeoutError as error:
                    expected = 2 * commands + 2
                    message = f"{what}: {expected} expected, seen {seen[-3:]}"
                    raise AssertionError(message) from error

            await wait_counted("Prometheus saw the workload")
            await wait_scraped_reads(1)

            # A second wave after Prometheus has scraped every series once: a series first seen
            # with its final value has no increase, so rate() of it is 0 and a quantile NaN.
            wave = [
                await publish(p.producer, transfer(a, b, 7 + i), TRANSFER, p.prefix)
                for i in range(5)
            ]
            for rec in wave:
                await p.results.wait_for(event_id_of(rec), timeout_s=TIMEOUT_S)
            commands += len(wave)
            for path in (f"/v1/wallets/{a}", f"/v1/wallets/{a}/entries", f"/v1/wallets/{b}x"):
                await p.get(path)
            await wait_counted("Prometheus saw the second wave")
            await wait_scraped_reads(2)

            empty: list[str] = []

            def every_query_has_data() -> bool:
                empty.clear()
                for title, expr in queries:
                    result = prometheus.query(expr)
                    values = [float(series["value"][1]) for series in result]
                    if not any(math.isfinite(v) for v in values):
                        empty.append(f"{title}: {expr} -> {result}")
                return not empty

            # A few seconds' grace for a series between two scrapes; a panel whose query never
            # returns data fails.
            with contextlib.suppress(TimeoutError):
                await wait_until(every_query_has_data, timeout_s=5, interval_s=1)
            assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

            # The alert rules loaded into a real Prometheus and every one evaluates cleanly.
            def evaluated() -> bool:
                groups = prometheus.get("/api/v1/rules")["data"]["groups"]
                rules = [rule for group in groups for rule in group["rules"]]
                return len(rules) == rule_count() and all(
                    not rule["lastEvaluation"].startswith("0001") for rule in rules
                )

            await wait_until(evaluated, timeout_s=TIMEOUT_S, message="every rule evaluated")
            groups = prometheus.get("/api/v1/rules")["data"]["groups"]
            broken = [
                (rule["name"], rule.get("lastError"))
                for group in groups
                for rule in group["rules"]
                if rule["health"] != "ok"
            ]
            assert not broken, broken

            # On this workload a dead letter fires; a relay is active; lag is measured.
            def alerts(state: str) -> set[str]:
                answer = prometheus.get("/api/v1/alerts")["data"]["alerts"]
                return {a["labels"]["alertname"] for a in answer if a["state"] == state}

            await wait_until(
                lambda: "LedgerflowDeadLetters" in alerts("firing"),
                timeout_s=TIMEOUT_S,
                message="LedgerflowDeadLetters fires",
            )
            quiet = {"LedgerflowNoActiveRelay", "LedgerflowConsumerLagUnknown"}
            assert not quiet & (alerts("pending") | alerts("firing"))


def rule_count() -> int:
    document = yaml.safe_load(ALERT_RULES.read_text())
    return sum(len(group["rules"]) for group in document["groups"])
