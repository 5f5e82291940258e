"""One import name: every module of the project is imported as `ledgerflow.…`, never under a
top-level folder's own name, which would load a second copy (docs/decisions/one-namespace.md)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "cli", "contracts", "harness", "ledger_db", "stack", "testkit", "workers")


def project_sources() -> list[Path]:
    folders = [*(ROOT / name for name in PACKAGES), ROOT / "tests", ROOT / "examples"]
    return sorted(path for folder in folders for path in folder.rglob("*.py"))


def test_every_import_of_the_project_goes_through_ledgerflow() -> None:
    offending = []
    for path in project_sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offending += [
                f"{path.relative_to(ROOT)}:{node.lineno}: {name}"
                for name in names
                if name.split(".")[0] in PACKAGES
            ]
    assert offending == [], "\n".join(offending)


def test_every_package_folder_is_linked_under_ledgerflow() -> None:
    for name in PACKAGES:
        link = ROOT / "ledgerflow" / name
        assert link.is_symlink(), link
        assert link.resolve() == (ROOT / name).resolve()


def test_the_distribution_declares_only_the_one_name() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = project["tool"]["setuptools"]
    assert setuptools["packages"]["find"]["include"] == ["ledgerflow", "ledgerflow.*"]
    assert all(key.split(".")[0] == "ledgerflow" for key in setuptools["package-data"])
    assert project["project"]["scripts"]["ledgerflow"].startswith("ledgerflow.")
    plugin = project["project"]["entry-points"]["pytest11"]["ledgerflow"]
    assert plugin == "ledgerflow.testkit.plugin"


def imported_modules(folder: Path) -> set[tuple[str, str]]:
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {(str(path.relative_to(ROOT)), node.module)}
                found |= {
                    (str(path.relative_to(ROOT)), f"{node.module}.{a.name}") for a in node.names
                }
            elif isinstance(node, ast.Import):
                found |= {(str(path.relative_to(ROOT)), a.name) for a in node.names}
    return found


def imports_from_below(package: str) -> list[str]:
    """Modules of the layers below the CLI and the API that import `package`."""
    below = ("testkit", "harness", "stack", "workers", "ledger_db", "contracts")
    return sorted(
        f"{path}: {module}"
        for folder in below
        for path, module in imported_modules(ROOT / folder)
        if module == package or module.startswith(f"{package}.")
    )


def test_nothing_below_the_cli_imports_it() -> None:
    """The CLI and the test kit both build on the harness; neither the test kit nor anything
    under it reaches up into the CLI."""
    upward = imports_from_below("ledgerflow.cli")
    assert upward == [], "\n".join(upward)


def test_the_read_api_stands_above_the_ledger_and_the_workers() -> None:
    """The API shares the workers' token verification, settings and HTTP probes; nothing the
    workers or the ledger are made of reaches up into it."""
    upward = imports_from_below("ledgerflow.api")
    assert upward == [], "\n".join(upward)
