"""The read side over HTTP: `ledgerflow api` (DESIGN.md §6)."""
