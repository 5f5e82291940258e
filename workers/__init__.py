"""FastStream workers and the outbox relay: thin adapters over the ledger."""
