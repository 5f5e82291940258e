"""What "the previous release" is: docs/releases.md, its tag and pyproject's version agree."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

from ledgerflow.testkit.releases import (
    foreign_modules,
    is_git_checkout,
    previous_release,
    release_commit,
    releases,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_lists_releases_newest_first_below_the_current_version() -> None:
    listed = releases(ROOT)
    assert listed, "docs/releases.md lists no release"
    versions = [Version(r.version) for r in listed]
    assert versions == sorted(versions, reverse=True)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert Version(project["version"]) > versions[0], (
        "pyproject.toml still carries the released version: set it to the next .dev0"
    )


def test_the_tag_when_present_names_the_tables_commit() -> None:
    if not is_git_checkout(ROOT):
        pytest.skip(f"{ROOT} is not a git checkout: the tag cannot be checked")
    release = previous_release(ROOT)
    assert release_commit(ROOT, release) == release.commit
    tag = subprocess.run(
        ["git", "-C", str(ROOT), "tag", "--list", release.tag],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if tag:  # an annotated tag, as `git describe` and releases expect
        kind = subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-t", f"refs/tags/{release.tag}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert kind == "tag"


def test_foreign_modules_flags_what_did_not_come_from_the_worktree(tmp_path: Path) -> None:
    worktree, current = tmp_path / "old", tmp_path / "current"
    modules = {
        "cli": str(worktree / "cli" / "__init__.py"),
        "workers.app": str(current / "workers" / "app.py"),  # the current tree leaked in
        "ledgerflow.x": str(current / "ledgerflow" / "x.py"),
        "helper": str(current / "scripts" / "helper.py"),  # not a package of ours, yet ours
        "json": str(Path(sys.base_prefix) / "lib" / "json" / "__init__.py"),
        "sys": None,
    }
    assert set(foreign_modules(modules, worktree, current)) == {
        "workers.app",
        "ledgerflow.x",
        "helper",
    }
