"""Each process kind has its own default HTTP port; LEDGERFLOW_HTTP_PORT, when set, wins."""

from __future__ import annotations

import pytest

from ledgerflow.workers.app import FLOW_NAMES
from ledgerflow.workers.settings import DEFAULT_HTTP_PORTS, Settings, http_port


def test_every_process_kind_has_a_distinct_default() -> None:
    kinds = ["worker", "relay", "api", *(f"worker-{name}" for name in FLOW_NAMES)]
    assert set(kinds) == set(DEFAULT_HTTP_PORTS)
    assert len(set(DEFAULT_HTTP_PORTS.values())) == len(DEFAULT_HTTP_PORTS)
    settings = Settings()
    assert http_port(settings, "worker") == 8080
    assert http_port(settings, "relay") == 8081
    assert http_port(settings, "api") == 8082


def test_an_explicit_port_wins_for_every_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERFLOW_HTTP_PORT", "9999")
    settings = Settings()
    assert {http_port(settings, kind) for kind in DEFAULT_HTTP_PORTS} == {9999}
