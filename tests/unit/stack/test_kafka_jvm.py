"""The embedded broker's JVM: which JIT compilers it runs, by setting."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from ledgerflow.stack import kafka_broker
from ledgerflow.stack.settings import StackSettings

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

C1_ONLY = "-XX:TieredStopAtLevel=1"


def _args(tmp_path: Path) -> list[str]:
    stack = StackSettings(dir=tmp_path, java="java")
    return kafka_broker._jvm_args(stack, tmp_path / "libs", kafka_broker.paths(stack), 512)


def test_a_broker_for_tests_and_benchmarks_compiles_with_c1_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: name)
    args = _args(tmp_path)
    assert C1_ONLY in args
    assert args.index(C1_ONLY) < args.index("-cp"), "a JVM option, before the class path"


def test_a_long_lived_broker_keeps_the_jvms_tiered_compilation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: name)
    monkeypatch.setenv("LEDGERFLOW_STACK_KAFKA_JIT", "tiered")
    assert not any(arg.startswith("-XX:TieredStopAtLevel") for arg in _args(tmp_path))
