"""Entry point of the `ledgerflow` command: sub-commands are registered here, defined elsewhere."""

import typer

from ledgerflow.cli import chaos, demo, ledger_cmd, ops
from ledgerflow.cli.bench import bench_app
from ledgerflow.cli.contracts_cmd import contracts_app
from ledgerflow.cli.dlq_cmd import dlq_app
from ledgerflow.cli.outbox_cmd import outbox_app
from ledgerflow.cli.stack_cmd import stack_app

app = typer.Typer(no_args_is_help=True, help="Ledgerflow: the money core of the wallet.")
app.add_typer(stack_app, name="stack")
app.add_typer(ops.topics_app, name="topics")
app.add_typer(ledger_cmd.accounts_app, name="accounts")
app.add_typer(ledger_cmd.customers_app, name="customers")
app.add_typer(ledger_cmd.holds_app, name="holds")
app.add_typer(ledger_cmd.merchants_app, name="merchants")
app.add_typer(ledger_cmd.pii_app, name="pii")
app.add_typer(bench_app, name="bench")
app.add_typer(contracts_app, name="contracts")
app.add_typer(dlq_app, name="dlq")
app.add_typer(outbox_app, name="outbox")
app.command()(demo.demo)
app.command()(ops.migrate)
app.command()(ops.worker)
app.command()(ops.relay)
app.command()(ops.api)
app.command()(ledger_cmd.balance)
app.command()(ledger_cmd.history)
app.command()(ledger_cmd.statement)
app.command()(ledger_cmd.audit)
app.command()(chaos.chaos)
