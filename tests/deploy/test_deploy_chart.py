"""The Helm chart, without a cluster: helm lint, helm template, schemas, and what must hold.

Every rendered object is validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail) at the chart's oldest and newest supported version; the custom
resources against their CRDs' schemas from KEDA and the Prometheus Operator.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from deploy_support import (
    ALERT_RULES,
    CHART,
    DASHBOARD,
    KEDA,
    KEDA_SCALEDOBJECT_CRD,
    KUBERNETES_VERSIONS,
    PODMONITOR_CRD,
    PROMETHEUS_OPERATOR,
    PROMETHEUSRULE_CRD,
    Rendered,
    containers,
    crd_schema,
    env_of,
    helm_template,
    load_yaml,
    pod_spec,
    run_helm,
    skip_loudly,
)

from ledgerflow.contracts.topics import flows_of_worker

# The first run builds helm from source (scripts/ensure-helm.sh: about 3.5 minutes on two cores),
# inside the first test's setup: more than the suite's default per-test timeout allows.
pytestmark = pytest.mark.timeout(1800)

# The wire contract (contracts/topics.py): each worker consumes one command topic in one group.
COMMAND_TOPICS = {
    "onboarding": "onboarding.requested",
    "cashin": "cashin.confirmed",
    "transfer": "transfer.initiated",
    "cashout": "cashout.approved",
}
GRACEFUL_TIMEOUT_S = 15  # FastStream's drain on SIGTERM (workers/app.py)
WORKLOAD_KINDS = ("Deployment", "Job")
CUSTOM_KINDS = {
    "ScaledObject": (KEDA, KEDA_SCALEDOBJECT_CRD, "v1alpha1"),
    "PodMonitor": (PROMETHEUS_OPERATOR, PODMONITOR_CRD, "v1"),
    "PrometheusRule": (PROMETHEUS_OPERATOR, PROMETHEUSRULE_CRD, "v1"),
}


def workers_of(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """Worker Deployments by flow name."""
    found: dict[str, dict[str, Any]] = {}
    for deployment in rendered.of_kind("Deployment"):
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        if component.startswith("worker-"):
            found[component.removeprefix("worker-")] = deployment
    return found


def workloads(rendered: Rendered) -> list[dict[str, Any]]:
    return [o for o in rendered.objects if o["kind"] in WORKLOAD_KINDS]


def component_of(obj: dict[str, Any]) -> str:
    component: str = obj["metadata"]["labels"]["app.kubernetes.io/component"]
    return component


def is_api(obj: dict[str, Any]) -> bool:
    return component_of(obj) == "api"


def worker_hpas(rendered: Rendered) -> list[dict[str, Any]]:
    return [
        h
        for h in rendered.of_kind("HorizontalPodAutoscaler")
        if component_of(h).startswith("worker-")
    ]


def values(*files: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in files:
        _merge(merged, load_yaml(CHART / name))
    return merged


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


# --- helm itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("value_files", [[], ["values-production.yaml"]], ids=["default", "prod"])
def test_helm_lint_is_clean(helm: Path, value_files: list[str]) -> None:
    args = [arg for name in value_files for arg in ("--values", str(CHART / name))]
    result = run_helm(helm, "lint", "--strict", str(CHART), *args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_renders_every_scenario(rendered: Rendered) -> None:
    kinds = {o["kind"] for o in rendered.objects}
    assert {"Deployment", "Job", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert len(workers_of(rendered)) == len(COMMAND_TOPICS)


# --- schemas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_builtin_objects_match_the_kubernetes_schemas(
    rendered: Rendered, kubernetes_version: str
) -> None:
    checked = 0
    for obj in rendered.objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kubernetes_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            # Nothing escapes validation: a new custom kind needs its CRD in CUSTOM_KINDS.
            pytest.fail(f"no schema for {obj['apiVersion']} {obj['kind']}")
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {error.message} at {error.path}")
        checked += 1
    assert checked >= 10


def test_custom_resources_match_their_crd_schemas(rendered: Rendered) -> None:
    for obj in rendered.objects:
        if obj["kind"] not in CUSTOM_KINDS:
            continue
        module, path, version = CUSTOM_KINDS[obj["kind"]]
        assert obj["apiVersion"].endswith("/" + version), obj["apiVersion"]
        validator = jsonschema.Draft202012Validator(crd_schema(module, path, version))
        try:
            validator.validate(obj)
        except jsonschema.ValidationError as error:
            location = "/".join(str(p) for p in error.absolute_path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {error.message} at {location}")


# --- autoscaling ------------------------------------------------------------------------------


def test_each_worker_scales_on_its_own_consumer_group_and_topic(
    rendered_default: Rendered, rendered_production: Rendered
) -> None:
    for rendered, value_files in (
        (rendered_default, ["values.yaml"]),
        (rendered_production, ["values.yaml", "values-production.yaml"]),
    ):
        settings = values(*value_files)
        partitions = settings["kafka"]["partitions"]["command"]
        scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in rendered.of_kind("ScaledObject")}
        assert len(scaled) == len(COMMAND_TOPICS)
        for flow, deployment in workers_of(rendered).items():
            scaled_object = scaled[deployment["metadata"]["name"]]
            spec = scaled_object["spec"]
            assert spec["scaleTargetRef"]["kind"] == "Deployment"
            # One trigger per consumer group of the worker (the contracts' registry): the
            # cash-out worker's second-phase groups scale it too.
            expected = [
                (f"ledgerflow.{consumed.name}", consumed.command_topic)
                for consumed in flows_of_worker(flow)
            ]
            triggers = spec["triggers"]
            assert sorted(
                (t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in triggers
            ) == sorted(expected)
            assert triggers[0]["metadata"]["topic"] == COMMAND_TOPICS[flow]
            for trigger in triggers:
                assert trigger["type"] == "kafka"
                metadata = trigger["metadata"]
                assert metadata["bootstrapServers"] == settings["kafka"]["bootstrapServers"]
                assert metadata["allowIdleConsumers"] == "false"
                assert int(metadata["lagThreshold"]) >= 1
            assert spec["minReplicaCount"] >= 1
            assert spec["maxReplicaCount"] <= partitions
            assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
            # The worker itself consumes exactly that topic with that many partitions.
            (container,) = pod_spec(deployment)["containers"]
            assert container["args"] == ["worker", flow]
            env = env_of(container)
            assert env["LEDGERFLOW_COMMAND_PARTITIONS"]["value"] == str(partitions)
            assert env["LEDGERFLOW_TOPIC_PREFIX"]["value"] == ""


def test_topic_prefix_reaches_group_and_topic(helm: Path) -> None:
    rendered = helm_template(helm, "--set", "kafka.topicPrefix=staging.")
    for scaled_object in rendered.of_kind("ScaledObject"):
        metadata = scaled_object["spec"]["triggers"][0]["metadata"]
        assert metadata["consumerGroup"].startswith("staging.ledgerflow.")
        assert metadata["topic"].startswith("staging.")


def test_never_both_an_hpa_and_a_scaled_object_on_one_deployment(rendered: Rendered) -> None:
    targets = [
        s["spec"]["scaleTargetRef"]["name"]
        for s in rendered.of_kind("ScaledObject") + rendered.of_kind("HorizontalPodAutoscaler")
    ]
    assert len(targets) == len(set(targets)), targets
    deployments = {d["metadata"]["name"] for d in rendered.of_kind("Deployment")}
    assert set(targets) <= deployments


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(rendered: Rendered) -> None:
    targets = {
        s["spec"]["scaleTargetRef"]["name"]
        for s in rendered.of_kind("ScaledObject") + rendered.of_kind("HorizontalPodAutoscaler")
    }
    for deployment in workers_of(rendered).values():
        scaled = deployment["metadata"]["name"] in targets
        assert ("replicas" in deployment["spec"]) is not scaled, deployment["metadata"]["name"]


def test_hpa_mode_renders_hpas_within_the_partitions(rendered_hpa: Rendered) -> None:
    assert not rendered_hpa.of_kind("ScaledObject")
    hpas = worker_hpas(rendered_hpa)
    assert len(hpas) == len(COMMAND_TOPICS)
    partitions = values("values.yaml", "values-production.yaml")["kafka"]["partitions"]["command"]
    for hpa in hpas:
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= partitions


def test_fixed_mode_has_no_autoscaler(rendered_fixed: Rendered) -> None:
    """autoscaling.mode is the workers'; the read API's HPA has its own switch."""
    assert not rendered_fixed.of_kind("ScaledObject")
    assert not worker_hpas(rendered_fixed)
    for deployment in workers_of(rendered_fixed).values():
        assert deployment["spec"]["replicas"] >= 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--set", "autoscaling.maxReplicas=7"], "must not exceed kafka.partitions.command"),
        (["--set", "workers.transfer.autoscaling.maxReplicas=12"], "must not exceed"),
        (["--set", "autoscaling.minReplicas=0"], "minReplicas"),
        (["--set", "autoscaling.mode=both"], "mode"),
        (["--set", "terminationGracePeriodSeconds=15"], "terminationGracePeriodSeconds"),
        (["--set", "database.existingSecret="], "existingSecret"),
        (["--set", "workers.payroll.enabled=true"], "payroll"),
        (["--set", "autoscaling.mode=none", "--set", "workers.cashin.replicas=9"], "replicas"),
        (["--set", "api.autoscaling.minReplicas=7"], "api.autoscaling.minReplicas exceeds"),
        (["--set", "api.readDatabase.existingSecret="], "readDatabase"),
        (["--set", "api.cursorKey.existingSecret="], "cursorKey"),
        (
            [
                "--set",
                "api.podDisruptionBudget.minAvailable=1",
                "--set",
                "api.podDisruptionBudget.maxUnavailable=1",
            ],
            "podDisruptionBudget",
        ),
    ],
)
def test_unsafe_values_are_refused(helm: Path, override: list[str], message: str) -> None:
    result = run_helm(helm, "template", "ledgerflow", str(CHART), *override)
    assert result.returncode != 0, f"{override} rendered"
    assert message in result.stderr, result.stderr


# --- pods -------------------------------------------------------------------------------------


def test_probes_hit_healthz_and_readyz_on_the_port_the_process_listens_on(
    rendered: Rendered,
) -> None:
    for deployment in rendered.of_kind("Deployment"):
        for container in pod_spec(deployment)["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            env = env_of(container)
            listening = int(env["LEDGERFLOW_HTTP_PORT"]["value"])
            assert env["LEDGERFLOW_HTTP_HOST"]["value"] == "0.0.0.0"
            for probe, path in (
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
                ("startupProbe", "/healthz"),
            ):
                get = container[probe]["httpGet"]
                assert get["path"] == path, (deployment["metadata"]["name"], probe)
                port = get["port"]
                assert (ports[port] if isinstance(port, str) else port) == listening


def test_pods_meet_the_restricted_pod_security_standard(rendered: Rendered) -> None:
    for workload in workloads(rendered):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, name
        assert pod_security.get("runAsUser", 1) != 0, name
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("hostNetwork") is not True
        assert spec.get("hostPID") is not True
        assert spec.get("hostIPC") is not True
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            assert set(volume) <= {"name", "emptyDir", "configMap", "secret", "projected"}, name
        for container in containers(workload):
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, name
            assert security.get("runAsUser", 1) != 0, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security.get("privileged") is not True, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert not security["capabilities"].get("add"), name
            assert security["seccompProfile"]["type"] == "RuntimeDefault", name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp must be an emptyDir"


def test_every_container_has_resource_requests_and_limits(rendered: Rendered) -> None:
    for workload in workloads(rendered):
        for container in containers(workload):
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), (
                    workload["metadata"]["name"],
                    container["name"],
                    kind,
                )


def test_termination_grace_exceeds_the_graceful_drain(rendered: Rendered) -> None:
    for workload in workloads(rendered):
        assert pod_spec(workload)["terminationGracePeriodSeconds"] > GRACEFUL_TIMEOUT_S


def test_images_are_pinned(rendered: Rendered) -> None:
    for workload in workloads(rendered):
        for container in containers(workload):
            image = container["image"]
            assert re.fullmatch(r"[^:@\s]+(:[\w][\w.-]*|@sha256:[0-9a-f]{64})", image), image
            assert not image.endswith(":latest"), image


def test_workers_roll_one_at_a_time_without_surge(rendered: Rendered) -> None:
    for deployment in workers_of(rendered).values():
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxSurge"] == 0, "a surge replica could hold no partition"


# --- secrets ----------------------------------------------------------------------------------


def _existing_secret_names(settings: dict[str, Any]) -> set[str]:
    names = {
        settings["database"]["existingSecret"],
        settings["database"]["migration"]["existingSecret"],
        settings["database"]["tlsSecret"],
        settings["pii"]["existingSecret"],
        settings["kafka"]["security"]["saslPasswordSecret"],
        settings["kafka"]["security"]["tlsSecret"],
        settings["api"]["readDatabase"]["existingSecret"],
        settings["api"]["cursorKey"]["existingSecret"],
    }
    return names - {""}


def test_secrets_come_only_from_existing_secret_names(rendered: Rendered) -> None:
    assert not rendered.of_kind("Secret"), "the chart must never create a Secret"
    allowed = _existing_secret_names(values("values.yaml")) | _existing_secret_names(
        values("values.yaml", "values-production.yaml")
    )
    for workload in workloads(rendered):
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in allowed, volume
        for container in containers(workload):
            assert "envFrom" not in container
            for entry in container.get("env", []):
                value = entry.get("value", "")
                assert "postgresql://" not in value, f"{entry['name']} carries a URL inline"
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] in allowed, ref
                elif re.search(r"PASSWORD|_KEYS?$|DATABASE_URL", entry["name"]):
                    pytest.fail(f"{entry['name']} must come from a Secret")


def test_workers_require_tokens_and_real_personal_data_keys(
    rendered_default: Rendered, rendered_production: Rendered
) -> None:
    for rendered in (rendered_default, rendered_production):
        for flow, deployment in workers_of(rendered).items():
            (container,) = pod_spec(deployment)["containers"]
            env = env_of(container)
            assert env["LEDGERFLOW_AUTH_MODE"]["value"] == "required", flow
            assert env["LEDGERFLOW_AUTH_JWKS_URL"]["value"].startswith("https://"), flow
            for name in (
                "LEDGERFLOW_PII_KEYS",
                "LEDGERFLOW_PII_INDEX_KEY",
                "LEDGERFLOW_CONTENT_HASH_KEY",
            ):
                assert "secretKeyRef" in env[name]["valueFrom"], (flow, name)


def test_production_encrypts_transport(rendered_production: Rendered) -> None:
    for workload in workloads(rendered_production):
        for container in containers(workload):
            env = env_of(container)
            assert env["LEDGERFLOW_DATABASE_SSLMODE"]["value"] == "verify-full"
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            variables = ["LEDGERFLOW_DATABASE_SSL_ROOT_CERT"]
            if is_api(workload):  # no Kafka at all: test_api_holds_no_kafka_setting_or_credential
                assert not [name for name in env if "KAFKA" in name]
            else:
                assert env["LEDGERFLOW_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
                variables.append("LEDGERFLOW_KAFKA_SSL_CAFILE")
            for variable in variables:
                assert str(Path(env[variable]["value"]).parent) in mounts, variable
    for scaled_object in rendered_production.of_kind("ScaledObject"):
        assert scaled_object["spec"]["triggers"][0]["authenticationRef"]["name"]


def test_numbers_reach_the_processes_as_integers(rendered: Rendered) -> None:
    """Helm reads numbers as floats: 1000000 must not reach pydantic as "1e+06"."""
    for workload in workloads(rendered):
        for container in containers(workload):
            for entry in container.get("env", []):
                assert not re.search(r"\de[+-]\d", entry.get("value", "")), entry


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook_with_the_owner_url(
    rendered: Rendered,
) -> None:
    (job,) = rendered.of_kind("Job")
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"pre-install", "pre-upgrade"}
    steps = [c["args"] for c in containers(job)]
    assert steps == [["migrate"], ["topics", "ensure"]], "schema first, then topics"
    for container in containers(job):
        env = env_of(container)
        assert "secretKeyRef" in env["LEDGERFLOW_MIGRATION_DATABASE_URL"]["valueFrom"]
        assert "LEDGERFLOW_DATABASE_URL" not in env, "the Job needs only the owner role"
        # migrate's data step keys content hashes with the workers' key; topics needs none.
        if container["args"] == ["migrate"]:
            assert "secretKeyRef" in env["LEDGERFLOW_CONTENT_HASH_KEY"]["valueFrom"]
        else:
            assert "LEDGERFLOW_CONTENT_HASH_KEY" not in env
    # A hook runs before the release's ServiceAccount exists: it must bring its own, as a hook.
    account = pod_spec(job)["serviceAccountName"]
    (hook_account,) = [
        s for s in rendered.of_kind("ServiceAccount") if s["metadata"]["name"] == account
    ]
    assert "helm.sh/hook" in hook_account["metadata"]["annotations"]
    assert int(hook_account["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )


def test_migration_keys_content_hashes_only_when_asked(helm: Path) -> None:
    """Keying an existing deployment waits for the upgrade after 0.2's (older workers compare
    plain hashes): a value the operator sets, never the default."""
    (job,) = helm_template(helm, "--set", "migration.keyContentHashes=true").of_kind("Job")
    steps = [c["args"] for c in containers(job)]
    assert steps == [["migrate", "--key-content-hashes"], ["topics", "ensure"]]


def test_replication_factor(rendered_default: Rendered, rendered_production: Rendered) -> None:
    for rendered, expected in ((rendered_default, "1"), (rendered_production, "3")):
        for workload in workloads(rendered):
            if is_api(workload):  # creates no topic, reads none
                continue
            for container in containers(workload):
                assert env_of(container)["LEDGERFLOW_REPLICATION_FACTOR"]["value"] == expected


# --- availability -----------------------------------------------------------------------------


def test_every_deployment_has_a_pod_disruption_budget(rendered: Rendered) -> None:
    budgets = [
        b["spec"]["selector"]["matchLabels"] for b in rendered.of_kind("PodDisruptionBudget")
    ]
    for deployment in rendered.of_kind("Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        matching = [b for b in budgets if b.items() <= selector.items()]
        assert len(matching) == 1, deployment["metadata"]["name"]


def test_production_spreads_every_deployment_across_zones(rendered_production: Rendered) -> None:
    for deployment in rendered_production.of_kind("Deployment"):
        constraints = pod_spec(deployment)["topologySpreadConstraints"]
        by_key = {c["topologyKey"]: c for c in constraints}
        zone = by_key["topology.kubernetes.io/zone"]
        assert zone["maxSkew"] == 1
        assert zone["whenUnsatisfiable"] == "DoNotSchedule"
        assert zone["minDomains"] == 3
        own = deployment["spec"]["selector"]["matchLabels"]
        for constraint in constraints:
            assert constraint["labelSelector"]["matchLabels"] == own
    for scaled_object in rendered_production.of_kind("ScaledObject"):
        assert scaled_object["spec"]["minReplicaCount"] >= 3, "at least one replica per zone"


# --- monitoring and network -------------------------------------------------------------------


def test_pod_monitor_scrapes_workers_and_relay_on_their_metrics_port(rendered: Rendered) -> None:
    (monitor,) = rendered.of_kind("PodMonitor")
    selector = monitor["spec"]["selector"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for deployment in rendered.of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector["matchLabels"].items() <= labels.items()
        for expression in selector.get("matchExpressions", []):
            assert expression["operator"] == "NotIn"
            assert labels[expression["key"]] not in expression["values"]
        (container,) = pod_spec(deployment)["containers"]
        assert endpoint["port"] in {p["name"] for p in container["ports"]}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, In/NotIn expressions) against pod labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        inside = labels.get(expression["key"]) in expression["values"]
        if inside != (expression["operator"] == "In"):
            return False
    return True


def test_network_policy_covers_every_pod_and_allows_only_what_they_use(
    rendered: Rendered,
) -> None:
    policies = rendered.of_kind("NetworkPolicy")
    for policy in policies:
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    # Every pod is fenced by exactly one policy (the api's own, or the release's).
    for workload in workloads(rendered):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert len(covering) == 1, (workload["metadata"]["name"], len(covering))
    spec = rendered.named("NetworkPolicy", "ledgerflow")["spec"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    egress_ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
    assert {53, 5432} <= egress_ports
    assert egress_ports & {9092, 9093}, "Kafka"


def test_production_monitoring_objects(rendered_production: Rendered) -> None:
    if not ALERT_RULES.is_file():
        skip_loudly(f"{ALERT_RULES.relative_to(CHART.parents[1])} is missing: no PrometheusRule")
    (rule,) = rendered_production.of_kind("PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERT_RULES.read_text())["groups"]
    if not DASHBOARD.is_file():
        skip_loudly(f"{DASHBOARD.relative_to(CHART.parents[1])} is missing: no dashboard")
    (dashboard,) = rendered_production.of_kind("ConfigMap")
    assert json.loads(dashboard["data"]["ledgerflow.json"]) == json.loads(DASHBOARD.read_text())
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


# --- the read API -----------------------------------------------------------------------------

API_NAME = "ledgerflow-api"
API_PORT = 8082


def api_container(rendered: Rendered) -> dict[str, Any]:
    (container,) = pod_spec(rendered.named("Deployment", API_NAME))["containers"]
    return container


@pytest.mark.parametrize("scenario", ["default", "production"])
def test_api_renders_a_deployment_service_hpa_and_budget(
    request: pytest.FixtureRequest, scenario: str
) -> None:
    rendered: Rendered = request.getfixturevalue(f"rendered_{scenario}")
    files = ["values.yaml"] + (["values-production.yaml"] if scenario == "production" else [])
    settings = values(*files)["api"]
    deployment = rendered.named("Deployment", API_NAME)
    own = deployment["spec"]["selector"]["matchLabels"]
    assert own["app.kubernetes.io/component"] == "api"
    assert own.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    container = api_container(rendered)
    assert container["args"] == ["api"]
    relay = pod_spec(rendered.named("Deployment", "ledgerflow-relay"))["containers"][0]
    assert container["image"] == relay["image"], "the same image as every process"
    # Stateless: surge first, never fewer ready pods during a rollout.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}

    # Probes on the port the process listens on, which the Service forwards to.
    env = env_of(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(env["LEDGERFLOW_HTTP_PORT"]["value"])
    assert env["LEDGERFLOW_HTTP_HOST"]["value"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert container["resources"] == settings["resources"]

    service = rendered.named("Service", API_NAME)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == own
    (port,) = service["spec"]["ports"]
    assert port == {"name": "http", "port": API_PORT, "targetPort": "http", "protocol": "TCP"}

    hpa = rendered.named("HorizontalPodAutoscaler", API_NAME)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": API_NAME,
    }
    assert hpa["spec"]["minReplicas"] == settings["autoscaling"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] == settings["autoscaling"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": settings["autoscaling"]["targetCPUUtilizationPercentage"],
    }
    assert "replicas" not in deployment["spec"], "replicas are the HPA's"

    budget = rendered.named("PodDisruptionBudget", API_NAME)
    assert budget["spec"]["selector"]["matchLabels"] == own
    assert budget["spec"]["maxUnavailable"] == 1
    if scenario == "production":
        assert hpa["spec"]["minReplicas"] >= 3, "one replica per zone"


def test_api_pods_are_restricted_like_the_relay(rendered: Rendered) -> None:
    api = rendered.named("Deployment", API_NAME)
    relay = rendered.named("Deployment", "ledgerflow-relay")
    for key in ("securityContext", "automountServiceAccountToken", "serviceAccountName"):
        assert pod_spec(api)[key] == pod_spec(relay)[key], key
    assert pod_spec(api)["automountServiceAccountToken"] is False
    (container,) = pod_spec(api)["containers"]
    security = container["securityContext"]
    assert security == pod_spec(relay)["containers"][0]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("scenario", ["default", "production"])
def test_api_reads_with_the_reader_role_and_its_secrets(
    request: pytest.FixtureRequest, scenario: str
) -> None:
    rendered: Rendered = request.getfixturevalue(f"rendered_{scenario}")
    files = ["values.yaml"] + (["values-production.yaml"] if scenario == "production" else [])
    settings = values(*files)
    env = env_of(api_container(rendered))
    read = env["LEDGERFLOW_READ_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert read == {
        "name": settings["api"]["readDatabase"]["existingSecret"],
        "key": settings["api"]["readDatabase"]["urlKey"],
    }
    cursor = env["LEDGERFLOW_API_CURSOR_KEY"]["valueFrom"]["secretKeyRef"]
    assert cursor == {
        "name": settings["api"]["cursorKey"]["existingSecret"],
        "key": settings["api"]["cursorKey"]["key"],
    }
    assert env["LEDGERFLOW_API_DB_POOL_SIZE_MAX"]["value"] == str(settings["api"]["dbPoolSizeMax"])
    # The same identity provider as the workers.
    assert env["LEDGERFLOW_AUTH_MODE"]["value"] == "required"
    assert env["LEDGERFLOW_AUTH_JWKS_URL"]["value"] == settings["auth"]["jwksUrl"]
    assert env["LEDGERFLOW_AUTH_ISSUER"]["value"] == settings["auth"]["issuer"]
    assert env["LEDGERFLOW_AUTH_AUDIENCE"]["value"] == settings["auth"]["audience"]
    # Nothing it does not need: no writing role, no owner role, no personal-data keys.
    for name in (
        "LEDGERFLOW_DATABASE_URL",
        "LEDGERFLOW_MIGRATION_DATABASE_URL",
        "LEDGERFLOW_PII_KEYS",
        "LEDGERFLOW_PII_INDEX_KEY",
        "LEDGERFLOW_CONTENT_HASH_KEY",
    ):
        assert name not in env, name


def test_api_holds_no_kafka_setting_or_credential(helm: Path) -> None:
    """Even with Kafka over mutual TLS and SASL, the api gets no Kafka variable, Secret or file."""
    rendered = helm_template(
        helm,
        "--values",
        str(CHART / "values-production.yaml"),
        "--set",
        "kafka.security.mutualTls=true",
    )
    container = api_container(rendered)
    assert not [name for name in env_of(container) if "KAFKA" in name]
    volumes = pod_spec(rendered.named("Deployment", API_NAME))["volumes"]
    secrets = {v["secret"]["secretName"] for v in volumes if "secret" in v}
    assert secrets == {"ledgerflow-database-ca"}, "the database CA only"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp", "/etc/ledgerflow/database-tls"}
    # The workers still get theirs.
    worker = pod_spec(workers_of(rendered)["transfer"])["containers"][0]
    assert "/etc/ledgerflow/kafka-tls" in {m["mountPath"] for m in worker["volumeMounts"]}
    assert "LEDGERFLOW_KAFKA_SASL_PASSWORD" in env_of(worker)


def test_api_without_autoscaling_runs_fixed_replicas(helm: Path) -> None:
    rendered = helm_template(
        helm, "--set", "api.autoscaling.enabled=false", "--set", "api.replicas=4"
    )
    assert rendered.named("Deployment", API_NAME)["spec"]["replicas"] == 4
    assert not [h for h in rendered.of_kind("HorizontalPodAutoscaler") if is_api(h)]


def test_api_budget_may_use_min_available(helm: Path) -> None:
    rendered = helm_template(helm, "--set", "api.podDisruptionBudget.minAvailable=1")
    spec = rendered.named("PodDisruptionBudget", API_NAME)["spec"]
    assert spec["minAvailable"] == 1
    assert "maxUnavailable" not in spec
    # The workers' budgets keep the global setting.
    relay = rendered.named("PodDisruptionBudget", "ledgerflow-relay")["spec"]
    assert relay["maxUnavailable"] == 1


def test_api_can_be_disabled(helm: Path) -> None:
    rendered = helm_template(helm, "--set", "api.enabled=false")
    assert not [o for o in rendered.objects if o["metadata"]["name"] == API_NAME]
    assert len(workers_of(rendered)) == len(COMMAND_TOPICS)


@pytest.mark.parametrize("scenario", ["default", "production"])
def test_api_network_policy_lets_clients_in_and_reaches_no_kafka(
    request: pytest.FixtureRequest, scenario: str
) -> None:
    rendered: Rendered = request.getfixturevalue(f"rendered_{scenario}")
    files = ["values.yaml"] + (["values-production.yaml"] if scenario == "production" else [])
    settings = values(*files)
    spec = rendered.named("NetworkPolicy", API_NAME)["spec"]
    labels = rendered.named("Deployment", API_NAME)["spec"]["template"]["metadata"]["labels"]
    assert selects(spec["podSelector"], labels)
    scrapes, clients = spec["ingress"]
    for rule in (scrapes, clients):
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert scrapes["from"] == settings["networkPolicy"]["metricsFrom"]
    assert clients["from"] == settings["api"]["networkPolicy"]["from"]
    egress = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
    assert {53, 443} <= egress
    assert set(settings["networkPolicy"]["egress"]["database"]["ports"]) <= egress
    assert not egress & {9092, 9093}, "the api never talks to Kafka"
    # The release's policy leaves the api pods to their own.
    assert not selects(rendered.named("NetworkPolicy", "ledgerflow")["spec"]["podSelector"], labels)


def test_api_network_policy_without_a_jwks_url_has_no_identity_provider_rule(
    helm: Path,
) -> None:
    rendered = helm_template(helm, "--set", "auth.mode=off")
    spec = rendered.named("NetworkPolicy", API_NAME)["spec"]
    assert 443 not in {p["port"] for rule in spec["egress"] for p in rule["ports"]}


# --- documentation ----------------------------------------------------------------------------


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        paths: list[str] = []
        for key, value in node.items():
            paths += _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
        return paths
    return [prefix]


def test_chart_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`([^`\s]+)`", readme))
    paths = {
        re.sub(r"^workers\.\w+\.", "workers.<name>.", path)
        for path in _leaf_paths(load_yaml(CHART / "values.yaml"))
    }
    missing = sorted(paths - documented)
    assert not missing, f"charts/ledgerflow/README.md does not list: {missing}"
