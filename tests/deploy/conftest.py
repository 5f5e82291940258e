"""Session fixtures of the deployment tests: the helm binary and the chart rendered per scenario."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_support import (
    ALERT_RULES,
    CHART,
    DASHBOARD,
    Rendered,
    ensure_helm,
    helm_template,
)


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm()


@pytest.fixture(scope="session")
def rendered_default(helm: Path) -> Rendered:
    return helm_template(helm)


@pytest.fixture(scope="session")
def rendered_production(helm: Path) -> Rendered:
    """values-production.yaml as the README deploys it: with the alert rules and the dashboard
    when those files exist (the observability work provides them)."""
    args = ["--values", str(CHART / "values-production.yaml")]
    if ALERT_RULES.is_file():
        args += ["--set", "prometheusRule.enabled=true"]
        args += ["--set-file", f"prometheusRule.rules={ALERT_RULES}"]
    if DASHBOARD.is_file():
        args += ["--set", "grafanaDashboard.enabled=true"]
        args += ["--set-file", f"grafanaDashboard.json={DASHBOARD}"]
    return helm_template(helm, *args)


@pytest.fixture(scope="session")
def rendered_hpa(helm: Path) -> Rendered:
    return helm_template(
        helm, "--values", str(CHART / "values-production.yaml"), "--set", "autoscaling.mode=hpa"
    )


@pytest.fixture(scope="session")
def rendered_fixed(helm: Path) -> Rendered:
    return helm_template(helm, "--set", "autoscaling.mode=none")


@pytest.fixture(scope="session", params=["default", "production", "hpa", "fixed"])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    """Every scenario, for the assertions that hold in all of them."""
    value: Rendered = request.getfixturevalue(f"rendered_{request.param}")
    return value
