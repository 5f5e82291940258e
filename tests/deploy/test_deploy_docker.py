"""The Dockerfile and its pinned dependency set, checked as text (no Docker engine here)."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass

from deploy_support import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "deploy" / "docker" / "requirements.txt"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "cargo", "rustc")


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    arguments: str


def stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, grouped by FROM, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result: list[list[Instruction]] = [[]]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def build_args() -> dict[str, str]:
    return {
        name: value
        for instruction in stages()[0]
        if instruction.keyword == "ARG" and "=" in instruction.arguments
        for name, value in [instruction.arguments.split("=", 1)]
    }


def test_multi_stage_on_a_pinned_slim_python_base() -> None:
    froms = [s[0].arguments for s in stages()[1:]]
    assert len(froms) >= 2, "multi-stage: build, then a clean runtime stage"
    args = build_args()
    for argument in froms:
        image = argument.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), (
            image
        )


def test_runtime_stage_is_non_root_with_ledgerflow_as_entrypoint() -> None:
    runtime = stages()[-1]
    users = [i.arguments for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"
    assert int(uid) != 0
    (entrypoint,) = [i.arguments for i in runtime if i.keyword == "ENTRYPOINT"]
    assert entrypoint == '["ledgerflow"]'
    env = " ".join(i.arguments for i in runtime if i.keyword == "ENV")
    assert "LEDGERFLOW_HTTP_HOST=0.0.0.0" in env


def test_runtime_stage_has_no_build_tools_or_caches() -> None:
    runtime = stages()[-1]
    copies = [i.arguments for i in runtime if i.keyword == "COPY"]
    assert copies == ["--from=build /opt/ledgerflow /opt/ledgerflow"], copies
    for instruction in runtime:
        if instruction.keyword == "RUN":
            assert "apt-get install" not in instruction.arguments
            assert "pip install" not in instruction.arguments
            for tool in BUILD_TOOLS:
                assert not re.search(rf"\b{re.escape(tool)}\b", instruction.arguments), tool
    build = stages()[1]
    build_env = " ".join(i.arguments for i in build if i.keyword == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in build_env


def test_dependencies_come_from_the_pinned_set() -> None:
    build = " ".join(i.arguments for i in stages()[1] if i.keyword in {"RUN", "COPY"})
    assert f"{LOCK.relative_to(REPO)} /tmp/requirements.txt" in build
    assert "--requirement /tmp/requirements.txt" in build
    assert "--no-deps" in build, "the project itself must not resolve dependencies again"


def test_pinned_set_satisfies_pyproject() -> None:
    pins: dict[str, str] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in {LOCK.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} does not satisfy {requirement.specifier}"
        )


def test_build_context_holds_only_what_the_image_copies() -> None:
    patterns = [
        line
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: everything is excluded first"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for instruction in stages()[1]:
        if instruction.keyword == "COPY" and "--from" not in instruction.arguments:
            sources = instruction.arguments.split()[:-1]
            for source in sources:
                source_path = source.removeprefix("./")
                assert any(fnmatch.fnmatch(source_path, a) for a in allowed), source
                assert (REPO / source_path).exists(), source
    for secret_or_state in (".venv", ".stack", ".git"):
        assert not any(fnmatch.fnmatch(secret_or_state, a) for a in allowed)


# Installed by `pip install -e '.[dev]'` but not in the image: the CLI must start without them.
DEVELOPMENT_ONLY = (
    "pytest",
    "pytest_asyncio",
    "hypothesis",
    "testcontainers",
    "matplotlib",
    "jsonschema",
    "yaml",
    "kubernetes_validate",
)
WITHOUT_DEVELOPMENT_PACKAGES = f"""
import importlib.abc, sys
class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {DEVELOPMENT_ONLY!r}:
            raise ImportError(f"{{name}} is a development package: the image does not have it")
sys.meta_path.insert(0, NotInTheImage())
import ledgerflow.workers.app, ledgerflow.workers.relay, ledgerflow.ledger_db.migrate
from ledgerflow.cli.main import app
sys.argv = ["ledgerflow", "--help"]
app()
"""


def test_the_cli_starts_with_the_runtime_dependencies_only() -> None:
    """What the image's build step `ledgerflow --help` checks, without building the image."""
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_DEVELOPMENT_PACKAGES],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "worker" in result.stdout
