"""The previous release, checked out beside the current tree, and its processes run from there.

For rolling-upgrade tests (DESIGN.md §7: release N's workers keep working on release N+1's
schema). "The previous release" is the first row of docs/releases.md; its tag `v<version>` is
used when the clone has it (and must name the same commit), else the commit from the table.

The old processes are started with the same interpreter and virtualenv, from a `git worktree` of
that commit: cwd and PYTHONPATH are the worktree, and the editable-install finder of the current
tree is taken off `sys.meta_path` first, so a module the old release does not have fails to import
instead of being taken from the current tree. `probe_imports` shows where each module came from.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ledgerflow.harness.processes import ManagedProcess, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

RELEASES_FILE = Path("docs") / "releases.md"
GIT_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 60.0
# The top-level packages of release 0.1.0 (and `ledgerflow`, should the tree move under it).
PROJECT_PACKAGES = ("cli", "contracts", "ledger_db", "stack", "testkit", "workers", "ledgerflow")

_ROW = re.compile(r"^\|\s*([0-9][^|\s]*)\s*\|\s*([0-9a-f]{40})\s*\|\s*([^|]*?)\s*\|\s*(.*?)\s*\|$")
# Runs before anything of the project is imported: no finder may resolve the current tree.
_ISOLATE = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path"
    " if not getattr(f, '__module__', '').startswith('__editable___ledgerflow')]; "
)
_RUN_CLI = _ISOLATE + "from cli.main import app; app()"
_PROBE = (
    _ISOLATE + "import json, cli.main; print(json.dumps({name: getattr(module, '__file__', None)"
    " for name, module in list(sys.modules.items())}))"
)


class ReleaseError(RuntimeError):
    """The previous release cannot be checked out here (and this is not a mere sdist)."""


@dataclass(frozen=True, slots=True)
class Release:
    version: str
    commit: str
    date: str
    notes: str

    @property
    def tag(self) -> str:
        return f"v{self.version}"


def find_repo_root(start: Path) -> Path:
    """The nearest directory at or above `start` that holds docs/releases.md."""
    for candidate in (start, *start.parents):
        if (candidate / RELEASES_FILE).is_file():
            return candidate
    raise ReleaseError(f"no {RELEASES_FILE} at or above {start}")


def releases(root: Path) -> list[Release]:
    """The rows of docs/releases.md, newest first."""
    rows = []
    for line in (root / RELEASES_FILE).read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line.strip())
        if match:
            rows.append(Release(*match.groups()))
    return rows


def previous_release(root: Path) -> Release:
    found = releases(root)
    if not found:
        raise ReleaseError(f"{root / RELEASES_FILE} lists no release")
    return found[0]


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_S,
        check=False,
    )


def is_git_checkout(root: Path) -> bool:
    """True when `root` is the top of a git work tree (False for an sdist or a bare copy)."""
    if shutil.which("git") is None:
        return False
    done = _git(root, "rev-parse", "--show-toplevel")
    return done.returncode == 0 and Path(done.stdout.strip()).resolve() == root.resolve()


def release_commit(root: Path, release: Release) -> str:
    """The release's commit: its tag when present (which must agree with the table), else the
    table's commit, which must exist in this clone."""
    tagged = _git(root, "rev-parse", "-q", "--verify", f"refs/tags/{release.tag}^{{commit}}")
    if tagged.returncode == 0:
        commit = tagged.stdout.strip()
        if commit != release.commit:
            raise ReleaseError(
                f"tag {release.tag} is {commit} but {RELEASES_FILE} says {release.commit}"
            )
        return commit
    if _git(root, "cat-file", "-e", f"{release.commit}^{{commit}}").returncode != 0:
        raise ReleaseError(
            f"release {release.version} ({release.commit}) is not in this clone; a shallow clone "
            f"needs `git fetch --unshallow` (or `git fetch origin tag {release.tag}`)"
        )
    return release.commit


@contextmanager
def release_worktree(root: Path, commit: str, path: Path) -> Iterator[Path]:
    """A detached `git worktree` of `commit` at `path` (which must not exist), removed after."""
    added = _git(root, "worktree", "add", "--detach", str(path), commit)
    if added.returncode != 0:
        raise ReleaseError(f"git worktree add {path} {commit}: {added.stderr.strip()}")
    try:
        yield path
    finally:
        _git(root, "worktree", "remove", "--force", str(path))
        _git(root, "worktree", "prune")


def release_env(worktree: Path, env: Mapping[str, str]) -> dict[str, str]:
    """`env` with only the worktree on PYTHONPATH (nothing of the current tree)."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH"}
    clean = {k: v for k, v in env.items() if k not in dropped}
    return clean | {"PYTHONPATH": str(worktree)}


def probe_imports(worktree: Path, env: Mapping[str, str]) -> dict[str, str | None]:
    """Module name -> file, as the old release's `cli.main` imports them, started like its
    processes are: the proof that they run the worktree's code and nothing of the current tree."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=worktree,
        env=release_env(worktree, env),
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise ReleaseError(f"the release's cli.main does not import: {done.stderr[-2000:]}")
    modules: dict[str, str | None] = json.loads(done.stdout.strip().splitlines()[-1])
    return modules


def foreign_modules(
    modules: Mapping[str, str | None], worktree: Path, current_root: Path
) -> dict[str, str | None]:
    """Modules of the project not loaded from the worktree, or loaded from the current tree
    (its virtualenv aside): empty when the old process is isolated."""
    venv, old, current = (p.resolve() for p in (Path(sys.prefix), worktree, current_root))
    foreign: dict[str, str | None] = {}
    for name, file in modules.items():
        path = Path(file).resolve() if file else None
        from_old = path is not None and path.is_relative_to(old)
        if name.split(".")[0] in PROJECT_PACKAGES:
            if not from_old:
                foreign[name] = file
        elif (
            path is not None
            and not from_old
            and path.is_relative_to(current)
            and not path.is_relative_to(venv)
        ):
            foreign[name] = file
    return foreign


def start_release_process(
    worktree: Path,
    args: Sequence[str],
    env: Mapping[str, str],
    log_dir: Path,
    *,
    label: str = "release",
    wait: bool = True,
) -> ManagedProcess:
    """`ledgerflow ARGS` of the release in `worktree`, on a free HTTP port (like
    harness.processes.start_process for the current tree)."""
    from ledgerflow.harness.processes import _die_with_parent  # noqa: PLC0415 - the same child hygiene

    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{label}-{'-'.join(args)}-{port}.log"
    full_env = release_env(worktree, env) | {"LEDGERFLOW_HTTP_PORT": str(port)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _RUN_CLI, *args],
            cwd=worktree,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
    managed = ManagedProcess([label, *args], port, process, log_path)
    if wait:
        managed.wait_ready()
    return managed


__all__ = [
    "Release",
    "ReleaseError",
    "find_repo_root",
    "foreign_modules",
    "is_git_checkout",
    "previous_release",
    "probe_imports",
    "release_commit",
    "release_env",
    "release_worktree",
    "releases",
    "start_release_process",
]
