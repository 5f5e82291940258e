"""The ledger: pure posting rules and the only code that talks to PostgreSQL."""
