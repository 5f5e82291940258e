"""docker-compose.yml without Docker: the Compose specification's schema, start order, pins.

The schema is the one compose-go ships (the library `docker compose` itself validates with),
pinned and downloaded once through the Go module proxy.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from deploy_support import (
    ALERT_RULES,
    COMPOSE_GO,
    COMPOSE_SCHEMA,
    DASHBOARD,
    REPO,
    go_module_dir,
    load_yaml,
    skip_loudly,
)

COMPOSE_FILE = REPO / "docker-compose.yml"
LEDGERFLOW_IMAGE = "ledgerflow:0.1.0"
WORKERS = ("worker-onboarding", "worker-cashin", "worker-transfer", "worker-cashout")
LONG_RUNNING = (*WORKERS, "relay")
API = "api"  # the read API: long-running too, but no Kafka and only the reader role
README_SECTION = "## Running with Docker Compose"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def test_matches_the_compose_specification_schema(compose: dict[str, Any]) -> None:
    schema = json.loads((go_module_dir(*COMPOSE_GO) / COMPOSE_SCHEMA).read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_every_image_is_pinned_to_a_version(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image: every service names a pinned image"
        match = re.fullmatch(
            r"(?P<repo>[^:@\s]+)(:(?P<tag>[\w][\w.-]*))?(@sha256:[0-9a-f]{64})?", image
        )
        assert match, f"{name}: {image}"
        tag = match["tag"] or ""
        assert tag or "@sha256:" in image, f"{name}: {image} has no tag or digest"
        assert tag != "latest", f"{name}: {image}"
        assert re.search(r"\d", tag) or "@sha256:" in image, f"{name}: {image} is not a version"


def test_the_system_is_all_there(services: dict[str, dict[str, Any]]) -> None:
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["postgres"]["image"].startswith("postgres:15")
    for name in ("migrate", *LONG_RUNNING):
        assert services[name]["image"] == LEDGERFLOW_IMAGE, name
        assert services[name]["build"]["context"] == "."
    commands = {name: services[name]["command"] for name in LONG_RUNNING}
    assert commands == {
        "worker-onboarding": ["worker", "onboarding"],
        "worker-cashin": ["worker", "cashin"],
        "worker-transfer": ["worker", "transfer"],
        "worker-cashout": ["worker", "cashout"],
        "relay": ["relay"],
    }
    assert "ledgerflow migrate && ledgerflow topics ensure" in services["migrate"]["command"][0]
    assert {"prometheus", "grafana", "otel-collector"} <= set(services)


def test_start_order_follows_health_and_completion(services: dict[str, dict[str, Any]]) -> None:
    def condition(service: str, dependency: str) -> str:
        value: str = services[service]["depends_on"][dependency]["condition"]
        return value

    assert condition("migrate", "postgres") == "service_healthy"
    assert condition("migrate", "kafka") == "service_healthy"
    for name in LONG_RUNNING:
        assert condition(name, "migrate") == "service_completed_successfully"
        assert services[name]["restart"] == "unless-stopped"
    assert services["migrate"]["restart"] == "no"
    # Every service_healthy dependency has a health check to become healthy with.
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no health check"
    # And the dependencies form no cycle.
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, f"dependency cycle through {name}"
        if name in done:
            return
        visiting.add(name)
        for dependency in services[name].get("depends_on", {}):
            visit(dependency)
        visiting.discard(name)
        done.add(name)

    for name in services:
        visit(name)


def test_ledgerflow_processes_listen_on_all_interfaces_and_check_readiness(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in LONG_RUNNING:
        service = services[name]
        env = service["environment"]
        assert env["LEDGERFLOW_HTTP_HOST"] == "0.0.0.0", name
        assert env["LEDGERFLOW_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert "@postgres:5432/ledgerflow" in env["LEDGERFLOW_DATABASE_URL"]
        assert env["LEDGERFLOW_DATABASE_URL"].startswith("postgresql://ledgerflow_app:")
        assert env["LEDGERFLOW_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        check = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{env['LEDGERFLOW_HTTP_PORT']}/readyz" in check, name
        # The same restrictions as the chart: non-root, read-only, no capabilities.
        assert service["user"] == "10001:10001"
        assert service["read_only"] is True
        assert service["tmpfs"] == ["/tmp"]
        assert service["cap_drop"] == ["ALL"]
    owner_url = services["migrate"]["environment"]["LEDGERFLOW_MIGRATION_DATABASE_URL"]
    assert owner_url.startswith("postgresql://ledgerflow_owner:")


def test_postgres_init_creates_both_roles_before_migrations(
    services: dict[str, dict[str, Any]],
) -> None:
    (mount,) = [v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    source = REPO / mount.split(":")[0]
    sql = "\n".join(p.read_text(encoding="utf-8") for p in sorted(source.glob("*.sql")))
    assert re.search(r"CREATE ROLE ledgerflow_owner\b", sql)
    assert re.search(r"CREATE ROLE ledgerflow_app\b", sql)
    assert re.search(r"CREATE DATABASE ledgerflow OWNER ledgerflow_owner", sql)
    assert "SUPERUSER" not in sql.replace("NOSUPERUSER", "")
    # The health check uses TCP: the image's init-time server listens on the socket only.
    assert "--host=127.0.0.1" in services["postgres"]["healthcheck"]["test"]


def test_the_read_api_runs_with_the_reader_role_only(
    services: dict[str, dict[str, Any]],
) -> None:
    api = services[API]
    assert api["image"] == LEDGERFLOW_IMAGE
    assert api["build"]["context"] == "."
    assert api["command"] == ["api"]
    assert api["restart"] == "unless-stopped"
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    env = api["environment"]
    assert env["LEDGERFLOW_READ_DATABASE_URL"].startswith("postgresql://ledgerflow_reader:")
    assert env["LEDGERFLOW_READ_DATABASE_URL"].endswith("@postgres:5432/ledgerflow")
    # Neither the writing role nor the owner, and no Kafka.
    for name in env:
        assert name not in {"LEDGERFLOW_DATABASE_URL", "LEDGERFLOW_MIGRATION_DATABASE_URL"}, name
        assert "KAFKA" not in name, name
    assert env["LEDGERFLOW_HTTP_HOST"] == "0.0.0.0"
    assert env["LEDGERFLOW_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    check = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{env['LEDGERFLOW_HTTP_PORT']}/readyz" in check
    # Published on the laptop's loopback only, as 8082 (the API's port outside a container).
    assert api["ports"] == [f"127.0.0.1:8082:{env['LEDGERFLOW_HTTP_PORT']}"]
    # The same restrictions as every Ledgerflow container.
    assert api["user"] == "10001:10001"
    assert api["read_only"] is True
    assert api["tmpfs"] == ["/tmp"]
    assert api["cap_drop"] == ["ALL"]
    assert api["security_opt"] == ["no-new-privileges:true"]


def test_postgres_init_creates_the_read_only_role(services: dict[str, dict[str, Any]]) -> None:
    (mount,) = [v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    source = REPO / mount.split(":")[0]
    sql = "\n".join(p.read_text(encoding="utf-8") for p in sorted(source.glob("*.sql")))
    (statement,) = re.findall(r"^CREATE ROLE ledgerflow_reader\b.*;$", sql, flags=re.MULTILINE)
    for option in ("LOGIN", "NOCREATEDB", "NOCREATEROLE", "NOSUPERUSER"):
        assert f" {option} " in statement, option
    assert "PASSWORD :'reader_password'" in statement
    assert r"\getenv reader_password LEDGERFLOW_READER_PASSWORD" in sql
    # The password the api's URL uses is the one the role is created with.
    password = services["postgres"]["environment"]["LEDGERFLOW_READER_PASSWORD"]
    assert password == "${LEDGERFLOW_READER_PASSWORD:-ledgerflow_reader}"
    assert f":{password}@" in services[API]["environment"]["LEDGERFLOW_READ_DATABASE_URL"]


def test_every_bind_mounted_file_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
    missing = [p.relative_to(REPO) for p in (ALERT_RULES, DASHBOARD) if not p.is_file()]
    if missing:
        skip_loudly(f"not yet provided by the observability work: {missing}")


def test_prometheus_scrapes_every_process_and_loads_our_rules(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    config_file = REPO / "deploy/compose/prometheus/prometheus.yml"
    config = load_yaml(config_file)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ledgerflow"]
    (discovery,) = job["dns_sd_configs"]
    assert sorted(discovery["names"]) == sorted((*LONG_RUNNING, API))
    assert discovery["port"] == 8080
    assert config["rule_files"] == [f"rules/{ALERT_RULES.name}"]
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in mounts
    assert f"./{config_file.relative_to(REPO)}:/etc/prometheus/prometheus.yml:ro" in mounts
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_loudly("promtool not on PATH (scripts/ensure-prometheus.sh installs it)")
    # Lay the files out as the container sees them, then let promtool check config and rules.
    if not ALERT_RULES.is_file():
        skip_loudly(f"{ALERT_RULES.relative_to(REPO)} is missing: cannot check the config")
    shutil.copy(config_file, tmp_path / "prometheus.yml")
    shutil.copytree(ALERT_RULES.parent, tmp_path / "rules")
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_our_dashboard(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    provisioning = REPO / "deploy/compose/grafana/provisioning"
    (provider,) = load_yaml(provisioning / "dashboards/ledgerflow.yml")["providers"]
    dashboards_mount = f"./deploy/grafana/dashboards:{provider['options']['path']}:ro"
    assert dashboards_mount in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    datasources = load_yaml(provisioning / "datasources/ledgerflow.yml")["datasources"]
    by_uid = {d["uid"]: d for d in datasources}
    assert by_uid["prometheus"]["url"] == "http://prometheus:9090"
    if not DASHBOARD.is_file():
        skip_loudly(f"{DASHBOARD.relative_to(REPO)} is missing: cannot match its datasources")
    # Every datasource the dashboard names by uid is provisioned (or is a dashboard variable).
    used = _datasource_uids(json.loads(DASHBOARD.read_text(encoding="utf-8")))
    unknown = {uid for uid in used if uid not in by_uid and not uid.startswith("$")}
    assert not unknown, f"the dashboard uses datasources compose does not provision: {unknown}"


def _datasource_uids(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        reference = node.get("datasource")
        if isinstance(reference, dict) and isinstance(reference.get("uid"), str):
            found.add(reference["uid"])
        for value in node.values():
            found |= _datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            found |= _datasource_uids(value)
    return found


def test_traces_flow_from_processes_through_the_collector(
    services: dict[str, dict[str, Any]],
) -> None:
    config = load_yaml(REPO / "deploy/compose/otel-collector/config.yaml")
    pipeline = config["service"]["pipelines"]["traces"]
    assert "otlp" in pipeline["receivers"]
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    for section in ("receivers", "processors", "exporters"):
        for component in pipeline[section]:
            assert component in config[section], f"{section} {component} is not configured"
    (jaeger_exporter,) = [e for e in pipeline["exporters"] if e.startswith("otlp_grpc/")]
    assert config["exporters"][jaeger_exporter]["endpoint"] == "jaeger:4317"
    assert "jaeger" in services
    mount = services["otel-collector"]["volumes"][0]
    assert mount.startswith("./deploy/compose/otel-collector/config.yaml:")


def test_readme_names_exactly_the_services_that_exist(services: dict[str, dict[str, Any]]) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert README_SECTION in readme, f"README.md has no {README_SECTION!r} section"
    section = readme.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `([a-z][a-z0-9-]*)` \|", section, flags=re.MULTILINE))
    assert named, "the section's service table is missing"
    assert named == set(services), {
        "named but not in docker-compose.yml": sorted(named - set(services)),
        "in docker-compose.yml but not named": sorted(set(services) - named),
    }
