"""The alert rules pass `promtool check rules` and their unit tests (`promtool test rules`).

The unit tests (deploy/prometheus/rules/ledgerflow-alerts.test.yml) make every alert fire and
stay silent; this module also proves that each alert has both kinds of case and a runbook entry.
"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from observability_helpers import ALERT_RULES, ALERT_TESTS, REPO, prometheus_binaries

RUNBOOK = REPO / "docs" / "runbook.md"


@pytest.fixture(scope="module")
def promtool() -> str:
    return prometheus_binaries()[0]


def alert_names() -> list[str]:
    document = yaml.safe_load(ALERT_RULES.read_text())
    return [
        rule["alert"] for group in document["groups"] for rule in group["rules"] if "alert" in rule
    ]


def test_promtool_check_rules(promtool: str) -> None:
    done = subprocess.run(
        [promtool, "check", "rules", str(ALERT_RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    done = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS.name],
        cwd=ALERT_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    document = yaml.safe_load(ALERT_TESTS.read_text())
    fires: set[str] = set()
    silent: set[str] = set()
    for case in document["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = set(alert_names())
    assert len(names) >= 7
    assert names - fires == set(), "alerts no unit test makes fire"
    assert names - silent == set(), "alerts no unit test keeps silent"


def test_every_alert_has_a_runbook_entry() -> None:
    document = yaml.safe_load(ALERT_RULES.read_text())
    runbook = RUNBOOK.read_text()
    headings = {
        m.group(1).strip().lower() for m in re.finditer(r"^#{2,3} (.+)$", runbook, re.MULTILINE)
    }
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            name = rule["alert"]
            assert name.lower() in headings, f"docs/runbook.md has no '## {name}' section"
            assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}"
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]
            assert rule["annotations"]["description"]
