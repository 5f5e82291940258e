"""Tools for the deployment tests: helm, pinned schemas from the Go module proxy, YAML helpers.

Nothing here needs Docker or a cluster. helm is built once by scripts/ensure-helm.sh; schemas come
from Go modules downloaded once (`go mod download`); both are cached under ~/.cache/ledgerflow, so
a warm run takes seconds. Without a Go toolchain the tests that need them skip with the reason.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import kubernetes_validate.utils  # type: ignore[import-untyped]
import pytest
import yaml

from ledgerflow.testkit.plugin import skip_loudly

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ledgerflow"
CACHE = (
    Path(os.environ.get("LEDGERFLOW_CACHE_DIR", "")).expanduser()
    if os.environ.get("LEDGERFLOW_CACHE_DIR")
    else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ledgerflow"
)
GO_MODULE_CACHE = CACHE / "gomod"

# Kubernetes versions the rendered manifests are validated against: the chart's floor
# (Chart.yaml kubeVersion) and the newest schema kubernetes-validate ships (helm v3.22's own).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

# Pinned sources of the CRD and Compose schemas (Go modules: reachable through the module proxy).
KEDA = ("github.com/kedacore/keda/v2", "v2.21.0")
KEDA_SCALEDOBJECT_CRD = "config/crd/bases/keda.sh_scaledobjects.yaml"
PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0")
PODMONITOR_CRD = "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml"
PROMETHEUSRULE_CRD = "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
COMPOSE_GO = ("github.com/compose-spec/compose-go/v2", "v2.16.2")
COMPOSE_SCHEMA = "schema/compose-spec.json"

# Files the observability work owns; the deployment references them by these paths.
ALERT_RULES = REPO / "deploy" / "prometheus" / "rules" / "ledgerflow-alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "ledgerflow.json"


# kubernetes-validate parses its JSON schema files again for every object (about 80 ms each);
# the files never change, so parse each once per session. Validation itself is unchanged.
kubernetes_validate.utils.schema_contents = functools.cache(
    kubernetes_validate.utils.schema_contents
)


def ensure_helm() -> Path:
    """The pinned helm binary, built on first use by scripts/ensure-helm.sh."""
    script = REPO / "scripts" / "ensure-helm.sh"
    result = subprocess.run(
        [str(script)], capture_output=True, text=True, check=False, timeout=1800
    )
    if result.returncode == 3:
        skip_loudly(f"no Go toolchain: cannot build helm. {result.stderr.strip()}")
    if result.returncode != 0:
        pytest.fail(f"scripts/ensure-helm.sh failed ({result.returncode}):\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def go_module_dir(module: str, version: str) -> Path:
    """The extracted source of a pinned Go module, downloaded once into the cache."""
    directory = GO_MODULE_CACHE / f"{module}@{version}"
    if directory.is_dir():
        return directory
    go = shutil.which("go")
    if go is None:
        skip_loudly(f"no Go toolchain: cannot download {module}@{version} for its schema")
    GO_MODULE_CACHE.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GOMODCACHE": str(GO_MODULE_CACHE),
        "GOFLAGS": "-modcacherw",  # a cache a user can delete with rm -rf
        "GOTOOLCHAIN": "local",
    }
    result = subprocess.run(
        [str(go), "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=GO_MODULE_CACHE,  # outside any go.mod
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"go mod download {module}@{version} failed:\n{result.stdout}{result.stderr}")
    return Path(json.loads(result.stdout)["Dir"])


@functools.cache
def crd_schema(module: tuple[str, str], path: str, version: str) -> dict[str, Any]:
    """The openAPIV3Schema of one version of a CRD, made strict like kubectl's field validation.

    A CRD schema lists the fields an object may have; the API server drops (or, with
    --validate=strict, rejects) any other. JSON Schema allows them unless told otherwise, so
    every object schema with `properties` and no other rule for extra fields is closed here.
    (Also: Go regular expressions made acceptable to Python's `re`.)
    """
    crd = yaml.safe_load((go_module_dir(*module) / path).read_text(encoding="utf-8"))
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = copy.deepcopy(entry["schema"]["openAPIV3Schema"])
            _close_objects(schema)
            return schema
    raise AssertionError(f"{path} has no version {version}")


def _close_objects(node: Any) -> None:
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("^(?i)"):
            # Go's regexp takes a flag group anywhere; Python only at the very start.
            node["pattern"] = "(?i)^" + pattern.removeprefix("^(?i)")
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            _close_objects(value)
    elif isinstance(node, list):
        for value in node:
            _close_objects(value)


@dataclass(frozen=True, slots=True)
class Rendered:
    """The objects of one `helm template` run."""

    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        matches = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
        return matches[0]


def helm_template(helm: Path, *args: str) -> Rendered:
    """Render the chart as release `ledgerflow` in namespace `ledgerflow`; fail on an error."""
    result = run_helm(
        helm, "template", "ledgerflow", str(CHART), "--namespace", "ledgerflow", *args
    )
    if result.returncode != 0:
        pytest.fail(f"helm template {' '.join(args)} failed:\n{result.stderr}")
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    return Rendered(documents)


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=120
    )


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))
