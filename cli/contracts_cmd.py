"""`ledgerflow contracts export`: write the published contract files from the models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ledgerflow import contracts
from ledgerflow.api.openapi import OPENAPI_FILE, render_openapi
from ledgerflow.contracts.schema_export import render_all

contracts_app = typer.Typer(
    no_args_is_help=True,
    help="The contract v1: JSON Schemas, the AsyncAPI document and the read API's OpenAPI.",
)

PACKAGE_DIR = Path(contracts.__file__).resolve().parent


@contracts_app.callback()
def contracts_group() -> None:
    """The contract v1: JSON Schemas, the AsyncAPI document and the read API's OpenAPI."""


def rendered() -> dict[str, str]:
    """Every generated contract file by its path under contracts/."""
    return render_all() | {OPENAPI_FILE: render_openapi()}


def stale_files(out_dir: Path) -> list[str]:
    """Generated files under `out_dir` that are missing or differ from a fresh rendering."""
    stale = []
    for relative, text in rendered().items():
        path = out_dir / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(relative)
    return stale


@contracts_app.command()
def export(
    out_dir: Annotated[
        Path, typer.Option(help="Where to write; the contracts package by default.")
    ] = PACKAGE_DIR,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 when a file is stale.")
    ] = False,
) -> None:
    """Write schemas/<type>.v1.json (one per message type) and asyncapi.yaml from the models,
    and openapi.json from the read API's routes."""
    if check:
        stale = stale_files(out_dir)
        for relative in stale:
            typer.echo(f"stale: {out_dir / relative}")
        raise typer.Exit(1 if stale else 0)
    for relative, text in rendered().items():
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            typer.echo(f"wrote {path}")
