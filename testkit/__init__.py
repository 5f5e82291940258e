"""Pytest plugin and helpers for testing against Ledgerflow with real brokers."""
