"""Reading /metrics of a running process, and finding the Prometheus binaries (or skipping)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from ledgerflow.harness.processes import ManagedProcess

REPO = Path(__file__).resolve().parents[3]
ENSURE_SCRIPT = REPO / "scripts" / "ensure-prometheus.sh"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "ledgerflow.json"
ALERT_RULES = REPO / "deploy" / "prometheus" / "rules" / "ledgerflow-alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "rules" / "ledgerflow-alerts.test.yml"


@dataclass(frozen=True, slots=True)
class Samples:
    """One scrape: (sample name, sorted label pairs) to value."""

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample called `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and wanted <= set(ls))

    def has(self, name: str, **labels: str) -> bool:
        wanted = set(labels.items())
        return any(n == name and wanted <= set(ls) for (n, ls) in self.values)

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [dict(ls) for (n, ls) in self.values if n == name]


def scrape(process: ManagedProcess) -> Samples:
    status, text = process.get("/metrics")
    assert status == 200, text
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Samples(values)


def prometheus_binaries() -> tuple[str, str]:
    """(promtool, prometheus) paths; installs Debian's package when possible, else skips loudly."""
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if promtool and prometheus:
        return promtool, prometheus
    done = subprocess.run(
        ["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
    )
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if promtool and prometheus:
        return promtool, prometheus
    pytest.skip(
        "PROMETHEUS BINARIES MISSING: promtool/prometheus are not installed and "
        f"scripts/ensure-prometheus.sh could not install them: {done.stderr.strip()[-500:]}"
    )
