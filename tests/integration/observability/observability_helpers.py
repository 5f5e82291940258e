"""Where the dashboard and alert rules are, and finding the Prometheus binaries (or skipping)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
ENSURE_SCRIPT = REPO / "scripts" / "ensure-prometheus.sh"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "ledgerflow.json"
ALERT_RULES = REPO / "deploy" / "prometheus" / "rules" / "ledgerflow-alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "rules" / "ledgerflow-alerts.test.yml"


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
