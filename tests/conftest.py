"""Shared test setup lives in the `testkit.plugin` pytest plugin (registered by entry point)."""
