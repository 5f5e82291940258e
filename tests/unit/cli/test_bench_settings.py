"""The workers' settings of a `bench e2e` run: `--setting` wins over the run's own."""

from __future__ import annotations

from ledgerflow.cli.bench_e2e import run_settings

AUTH = {"auth_mode": "jwt", "auth_jwks_file": "/tmp/jwks.json"}


def test_the_runs_own_settings_without_overrides() -> None:
    settings = run_settings(500, AUTH, {}, naive=False)
    assert settings["batch_records_max"] == "500"
    assert settings["auth_mode"] == "jwt"
    assert settings["basic_balance_max"] == str(10**15)


def test_a_setting_overrides_the_batch_size_and_the_limits() -> None:
    overrides = {"batch_records_max": "1000", "basic_balance_max": "5", "batch_wait_ms": "20"}
    settings = run_settings(500, {"auth_mode": "off"}, overrides, naive=False)
    assert settings["batch_records_max"] == "1000"
    assert settings["basic_balance_max"] == "5"
    assert settings["batch_wait_ms"] == "20"
    assert settings["auth_mode"] == "off"


def test_the_naive_mode_applies_one_record_per_batch_whatever_is_set() -> None:
    settings = run_settings(500, AUTH, {"batch_records_max": "1000"}, naive=True)
    assert settings["batch_records_max"] == "1"
