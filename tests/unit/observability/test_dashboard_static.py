"""The dashboard, the alert rules and docs/metrics.md agree with the metrics the code registers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

# Imported to register Ledgerflow's metrics: the workers' and the read API's.
import ledgerflow.api.metrics
import ledgerflow.workers.metrics  # noqa: F401

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "ledgerflow.json"
RULES = REPO / "deploy" / "prometheus" / "rules" / "ledgerflow-alerts.yml"
METRICS_DOC = (REPO / "docs" / "metrics.md").read_text()
METRIC = re.compile(r"\b((?:ledgerflow|faststream|process)_[a-z_]+)\b")
SUFFIXES = ("_bucket", "_count", "_sum")
# Labels that would carry unbounded or personal values.
FORBIDDEN_LABELS = {"account_id", "customer_id", "wallet_account_id", "command_id", "key", "user"}


def documented(name: str) -> bool:
    if f"`{name}`" in METRICS_DOC:
        return True
    for suffix in SUFFIXES:
        if name.endswith(suffix) and f"`{name.removesuffix(suffix)}`" in METRICS_DOC:
            return True
    return name.startswith("process_")


def dashboard() -> dict[str, object]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def exprs() -> list[str]:
    found = [
        target["expr"]
        for panel in dashboard()["panels"]  # type: ignore[attr-defined]
        for target in panel.get("targets", [])
    ]
    document = yaml.safe_load(RULES.read_text())
    found += [rule["expr"] for group in document["groups"] for rule in group["rules"]]
    return found


def test_dashboard_panels_are_well_formed() -> None:
    panels = dashboard()["panels"]
    assert isinstance(panels, list)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    names = {v["name"] for v in dashboard()["templating"]["list"]}  # type: ignore[index]
    assert names == {"datasource", "flow"}


def test_the_dashboard_covers_what_sres_asked_for() -> None:
    text = DASHBOARD.read_text()
    for metric in (
        "ledgerflow_commands_total",  # throughput by type and outcome, rejection reasons
        "ledgerflow_command_latency_seconds_bucket",  # latency percentiles
        "ledgerflow_consumer_lag_messages",  # lag per partition
        "ledgerflow_outbox_pending_rows",  # outbox backlog
        "ledgerflow_outbox_oldest_pending_age_seconds",  # and age
        "ledgerflow_dead_letters_total",
        "ledgerflow_db_retries_total",
        "ledgerflow_db_pool_connections",
        "faststream_received_processed_messages_total",
    ):
        assert metric in text, metric


def exposed_names() -> set[str]:
    """Every sample name the default registry can expose (metrics without samples yet too)."""
    names = set(REGISTRY._names_to_collectors)  # no public listing exists
    # Collected at scrape time from the pool, so not known to the registry in advance.
    return names | {"ledgerflow_db_pool_connections", "ledgerflow_db_pool_connections_max"}


def test_every_metric_in_queries_is_exposed_and_documented() -> None:
    exposed = exposed_names()
    for expr in exprs():
        for name in METRIC.findall(expr):
            assert documented(name), f"{name} is not in docs/metrics.md"
            if name.startswith("ledgerflow_"):
                assert name in exposed, f"{name} is queried but nothing exposes it"


def test_every_ledgerflow_metric_is_documented_with_bounded_labels() -> None:
    for name in exposed_names():
        if name.startswith("ledgerflow_") and not name.endswith("_created"):
            # A counter is also registered under its name without `_total`, an info without
            # `_info`: one of the spellings is the documented one.
            spellings = (name, f"{name}_total", f"{name}_info")
            assert any(documented(n) for n in spellings), f"{name} is not in docs/metrics.md"
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            assert not FORBIDDEN_LABELS & set(sample.labels), (metric.name, sample.labels)
