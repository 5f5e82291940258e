#!/usr/bin/env bash
# Another team's view of Ledgerflow: build the wheel, check that it installs the one import name
# `ledgerflow`, install it with examples/integrator into a fresh virtualenv OUTSIDE the repository
# and run that project's tests there. The plugin finds PostgreSQL and Kafka by itself (the
# embedded stack, in the project's own .stack/, on free ports when this checkout's stack holds
# the defaults) and stops what it started.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
base="${TMPDIR:-/tmp}"
work="$(mktemp -d "$base/ledgerflow-integrator.XXXXXX")"
case "$work" in "$repo"/*) echo "the example must run outside the repository: $work" >&2; exit 2;; esac
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

echo "== building the wheel"
# From a copy of the checkout's files (tracked and new, never ignored ones such as .venv or a
# stale build/), links kept as links; setuptools follows those under ledgerflow/.
"$python" - "$repo" "$work/src" <<'PY'
import shutil, subprocess, sys
from pathlib import Path
repo, dest = Path(sys.argv[1]), Path(sys.argv[2])
listed = subprocess.run(
    ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    check=True, capture_output=True,
).stdout.decode().split("\0")
for name in filter(None, listed):
    source, target = repo / name, dest / name
    if source.is_symlink() or source.is_file():  # a deleted, still tracked file is skipped
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
PY
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/ledgerflow-*.whl)"
"$python" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
top = sorted({name.split("/")[0] for name in names})
extra = [t for t in top if t != "ledgerflow" and not t.endswith(".dist-info")]
if extra or "ledgerflow" not in top:
    sys.exit(f"the wheel's top level must be ledgerflow and its dist-info only, not {top}")
for needed in ("ledgerflow/py.typed", "ledgerflow/ledger_db/migrations/", "ledgerflow/stack/kafka/pom.xml",
               "ledgerflow/contracts/iso4217.txt", "ledgerflow/testkit/plugin.py",
               "ledgerflow/api/app.py"):
    if not any(name.startswith(needed) for name in names):
        sys.exit(f"the wheel lacks {needed}")
print(f"wheel top level: {', '.join(top)} ({len(names)} files)")
PY

echo "== a fresh virtualenv outside the repository: $work/venv"
cp -r "$repo/examples/integrator" "$work/project"
rm -rf "$work/project/.stack"
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --upgrade pip
"$work/venv/bin/pip" install --quiet "ledgerflow[testkit] @ file://$wheel" "$work/project"
cd "$work/project"  # from here on nothing of the checkout is on the import path
"$work/venv/bin/python" - <<'PY'
import importlib.metadata as md, sys
top = md.distribution("ledgerflow").read_text("top_level.txt")
assert top is not None and top.split() == ["ledgerflow"], top
import ledgerflow, ledgerflow.testkit.plugin
assert "/site-packages/" in ledgerflow.__file__, ledgerflow.__file__
print(f"ledgerflow {ledgerflow.__version__} from {ledgerflow.__file__}")
PY

echo "== the example project's tests"
env -u LEDGERFLOW_TEST_DATABASE_URL -u LEDGERFLOW_TEST_KAFKA_BOOTSTRAP_SERVERS \
  LEDGERFLOW_TEST_STACK_STOP=1 LEDGERFLOW_TEST_DOCKER="${LEDGERFLOW_TEST_DOCKER:-}" \
  "$work/venv/bin/pytest" -p no:cacheprovider
