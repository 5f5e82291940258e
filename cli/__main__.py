"""`python -m cli` is `ledgerflow`: child processes start without relying on the PATH."""

from ledgerflow.cli.main import app

app()
