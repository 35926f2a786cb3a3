"""The Helm chart's renderings (deploy/kubernetes/*.yaml) have the properties a deployment needs.

The tests read the committed plain manifests, so pytest needs no helm: ``make lint``
(scripts/render-manifests.sh --check) fails when they differ from what the chart renders
with deploy/helm/values/*.yaml. Where a property is the server's (its flags, health service
names, metric names, config schema), the test takes it from the server's own code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from vregistry_server.config import ConfigFile
from vregistry_server.redis_topology import parse_redis_url
from vregistry_server.runtime.main import SERVICE_NAME, parse_args
from vregistry_server.runtime.metrics import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
RENDERED = ROOT / "deploy" / "kubernetes"
VALUES = ROOT / "deploy" / "helm" / "values"
# The renderings make lint checks: the chart's defaults plus one per values file.
VARIANTS = ["default", *sorted(p.stem for p in VALUES.glob("*.yaml"))]
TLS_VARIANTS = {"tls-mtls"}
MONITORED_VARIANTS = {"sentinel", "cluster"}
ALERTS = {
    "VregistryRpcErrorRatioHigh",
    "VregistryTokenCacheDegraded",
    "VregistryCircuitOpen",
    "VregistryRealmRefusals",
}
HEALTHCHECK = ["python", "-m", "vregistry_server.healthcheck"]
# Flags whose value is a file the server reads: each must come from a Secret volume.
SECRET_FILE_FLAGS = {
    "--callers-file",
    "--encryption-key-file",
    "--tls-cert",
    "--tls-key",
    "--tls-client-ca",
}
# What a credential looks like, wherever it might be pasted into a ConfigMap.
CREDENTIAL_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@"),  # a URL with user:password@
    re.compile(r"\bsha256:[0-9a-f]{64}\b"),  # a callers-file line
    re.compile(r"\b[A-Za-z0-9_-]{1,32}:[A-Za-z0-9+/]{43}="),  # a keyring line KEY_ID:BASE64
    re.compile(r"^[A-Za-z0-9+/]{43}=$"),  # a bare base64 32-byte key
    re.compile(r"\b(ghp|glpat|xox[bp])[-_][A-Za-z0-9_-]{10,}"),  # well-known token prefixes
]
VAR_REF = re.compile(r"\$\(([A-Z_][A-Z0-9_]*)\)")
SECRET_KEYS = re.compile(r"(?i)^(password|passwd|token|secret|api_?key|private_?key)$")


# --------------------------------------------------------------------------- reading


@cache
def documents(variant: str) -> tuple[dict[str, Any], ...]:
    text = (RENDERED / f"{variant}.yaml").read_text(encoding="utf-8")
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def of_kind(variant: str, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents(variant) if doc["kind"] == kind]


def one(variant: str, kind: str) -> dict[str, Any]:
    (doc,) = of_kind(variant, kind)
    return doc


def pod_spec(variant: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(variant, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(variant: str) -> dict[str, Any]:
    (main,) = pod_spec(variant)["containers"]
    return dict(main)


def flags(variant: str) -> dict[str, str]:
    """The container's ``--flag=value`` arguments (``--flag`` alone maps to "")."""
    parsed = {}
    for arg in container(variant)["args"]:
        name, _, value = arg.partition("=")
        parsed[name] = value
    return parsed


def port_of(variant: str, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container(variant)["ports"]}
    return int(ports[name])


def secret_mounts(variant: str) -> dict[str, str]:
    """Mount path -> Secret name, for every Secret volume mounted into the container."""
    secrets = {
        v["name"]: v["secret"]["secretName"] for v in pod_spec(variant)["volumes"] if "secret" in v
    }
    return {
        m["mountPath"]: secrets[m["name"]]
        for m in container(variant)["volumeMounts"]
        if m["name"] in secrets
    }


def from_secret_volume(variant: str, path: str) -> bool:
    return any(path.startswith(mount.rstrip("/") + "/") for mount in secret_mounts(variant))


def server_config(variant: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(one(variant, "ConfigMap")["data"]["config.yaml"])
    return config


def env(variant: str) -> list[dict[str, Any]]:
    return list(container(variant).get("env", []))


def walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, scalar) pair in a parsed YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, str(k))
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)
    else:
        yield key, node


# --------------------------------------------------------------------------- the renderings


def test_every_documented_values_file_is_rendered() -> None:
    assert {"default", "sentinel", "cluster", "tls-mtls", "metrics-off"} <= set(VARIANTS)
    assert sorted(p.stem for p in RENDERED.glob("*.yaml")) == sorted(VARIANTS)
    for variant in VARIANTS:
        kinds = {doc["kind"] for doc in documents(variant)}
        assert {"Deployment", "ConfigMap", "Service", "PodDisruptionBudget"} <= kinds, variant
        # The chart never carries a Secret: every credential is the operator's, by reference.
        assert "Secret" not in kinds, variant


@pytest.mark.parametrize("variant", VARIANTS)
def test_args_are_the_servers_flags(variant: str) -> None:
    """The server's own parser takes the container's arguments (a renamed flag fails here)."""
    args = parse_args(container(variant)["args"])
    assert args.listen == f"0.0.0.0:{port_of(variant, 'grpc')}"
    assert args.config == "/etc/vregistry/config/config.yaml"
    config_mount = next(
        v for v in pod_spec(variant)["volumes"] if v["name"] == "config" and "configMap" in v
    )
    assert config_mount["configMap"]["name"] == one(variant, "ConfigMap")["metadata"]["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_map_is_a_valid_server_config(variant: str) -> None:
    ConfigFile.model_validate(server_config(variant))  # the server's schema, strict


# --------------------------------------------------------------------------- probes


@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - TLS_VARIANTS))
def test_probes_are_native_grpc_on_the_grpc_port_and_health_service(variant: str) -> None:
    main = container(variant)
    grpc_port = port_of(variant, "grpc")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert set(main[probe]) & {"exec", "httpGet", "tcpSocket"} == set(), (variant, probe)
        assert main[probe]["grpc"]["port"] == grpc_port, (variant, probe)
    # "" is the server as a whole; readiness follows UpstreamService, which the server marks
    # NOT_SERVING at SIGTERM (enter_graceful_shutdown), so the pod leaves the endpoints first.
    assert main["startupProbe"]["grpc"]["service"] == ""
    assert main["livenessProbe"]["grpc"]["service"] == ""
    assert main["readinessProbe"]["grpc"]["service"] == SERVICE_NAME


@pytest.mark.parametrize("variant", sorted(TLS_VARIANTS))
def test_tls_probes_run_the_health_check_over_tls(variant: str) -> None:
    """The kubelet's gRPC probe is plaintext only: with TLS the image's health check probes,
    with the CA (and for mTLS a client certificate) from Secret volumes."""
    main = container(variant)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["exec"]["command"] == HEALTHCHECK, probe
    values = {e["name"]: str(e.get("value", "")) for e in env(variant)}
    assert values["VREGISTRY_HEALTHCHECK_TARGET"] == f"127.0.0.1:{port_of(variant, 'grpc')}"
    for name in (
        "VREGISTRY_HEALTHCHECK_CA",
        "VREGISTRY_HEALTHCHECK_CERT",
        "VREGISTRY_HEALTHCHECK_KEY",
    ):
        assert from_secret_volume(variant, values[name]), name
    assert values["VREGISTRY_HEALTHCHECK_SERVER_NAME"]


# --------------------------------------------------------------------------- security


@pytest.mark.parametrize("variant", VARIANTS)
def test_security_context(variant: str) -> None:
    pod = pod_spec(variant)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container(variant)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001  # the image's user (Dockerfile)
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The one writable place besides nothing: /tmp, in memory and bounded.
    writable = [m for m in container(variant)["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"]
    assert container(variant)["resources"]["requests"]
    assert container(variant)["resources"]["limits"]["memory"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_secrets_only_by_reference(variant: str) -> None:
    defined: set[str] = set()
    for entry in env(variant):
        if "valueFrom" in entry:
            assert set(entry["valueFrom"]) == {"secretKeyRef"}, entry["name"]
        else:
            value = str(entry["value"])
            # A value may name a variable defined before it (Kubernetes expands $(VAR)) but
            # never carry a credential itself.
            for ref in VAR_REF.findall(value):
                assert ref in defined, (entry["name"], ref)
            literal = VAR_REF.sub("", value)
            assert not any(p.search(literal) for p in CREDENTIAL_PATTERNS), entry["name"]
        defined.add(entry["name"])
    for flag, value in flags(variant).items():
        if flag in SECRET_FILE_FLAGS:
            assert from_secret_volume(variant, value), (flag, value)
    config = server_config(variant)
    for key, value in walk(config.get("settings", {})):
        if key.endswith("_file"):
            assert from_secret_volume(variant, value), key
    secret_env = {e["name"] for e in env(variant) if "valueFrom" in e}
    for upstream in config["upstreams"]:
        if "password_env" in upstream:
            assert upstream["password_env"] in secret_env, upstream["id"]
        if "password_file" in upstream:
            assert from_secret_volume(variant, upstream["password_file"]), upstream["id"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_credential_in_any_config_map(variant: str) -> None:
    for config_map in of_kind(variant, "ConfigMap"):
        for name, text in config_map["data"].items():
            for key, value in walk(yaml.safe_load(text)):
                assert not SECRET_KEYS.match(key), (name, key)
                for line in str(value).splitlines():
                    assert not any(p.search(line) for p in CREDENTIAL_PATTERNS), (name, key)


def test_credential_patterns_catch_what_they_are_for() -> None:
    """The scan above would see a pasted secret (each pattern against a sample of its kind)."""
    samples = [
        "-----BEGIN PRIVATE KEY-----",
        "redis://:hunter2@redis:6379/0",
        "sha256:" + "ab" * 32 + " ci resolver *",
        "k1:" + "A" * 43 + "=",
        "A" * 43 + "=",
        "glpat-abcdefghijklmnop",
    ]
    for sample in samples:
        assert any(p.search(sample) for p in CREDENTIAL_PATTERNS), sample


# --------------------------------------------------------------------------- Redis


def redis_url(variant: str) -> dict[str, Any] | None:
    for entry in env(variant):
        if entry["name"] == "VREGISTRY_REDIS_URL":
            return entry
    return None


def test_redis_url_forms() -> None:
    """Each topology's URL reaches the server in VREGISTRY_REDIS_URL, the password from a Secret."""
    expected = {"sentinel": "sentinel", "tls-mtls": "standalone", "metrics-off": "standalone"}
    for variant, kind in expected.items():
        entry = redis_url(variant)
        assert entry is not None and "value" in entry, variant
        url = entry["value"].replace("$(VREGISTRY_REDIS_PASSWORD)", "placeholder")
        assert parse_redis_url(url).kind == kind, variant
    assert parse_redis_url(redis_url("tls-mtls")["value"]).tls  # type: ignore[index]
    # The cluster's whole URL (password included) is a Secret's.
    cluster = redis_url("cluster")
    assert cluster is not None and "secretKeyRef" in cluster["valueFrom"]
    assert redis_url("default") is None  # no Redis: tokens in each pod's memory


def test_config_service_uses_the_shared_redis_store() -> None:
    for variant in ("sentinel", "cluster"):
        args = flags(variant)
        assert args["--store"] == "redis"
        assert from_secret_volume(variant, args["--encryption-key-file"])
    assert "--store" not in flags("default")


# --------------------------------------------------------------------------- TLS


def test_tls_and_mtls_from_secrets() -> None:
    args = flags("tls-mtls")
    mounts = secret_mounts("tls-mtls")
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca"):
        assert from_secret_volume("tls-mtls", args[flag]), flag
    assert mounts["/etc/vregistry/tls"] == "vregistry-tls"
    assert mounts["/etc/vregistry/client-ca"] == "vregistry-client-ca"
    settings = server_config("tls-mtls")["settings"]
    assert from_secret_volume("tls-mtls", settings["redis_ca_file"])
    for variant in sorted(set(VARIANTS) - TLS_VARIANTS):
        assert not set(flags(variant)) & {"--tls-cert", "--tls-key", "--tls-client-ca"}


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("variant", VARIANTS)
def test_termination_grace_exceeds_the_servers_grace(variant: str) -> None:
    grace = float(server_config(variant)["settings"]["shutdown_grace_seconds"])
    pre_stop = container(variant)["lifecycle"]["preStop"]["sleep"]["seconds"]
    termination = pod_spec(variant)["terminationGracePeriodSeconds"]
    # The kubelet's clock starts at the preStop hook; SIGTERM follows it, then the grace.
    assert termination > pre_stop + grace
    assert one(variant, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


# --------------------------------------------------------------------------- services


@pytest.mark.parametrize("variant", VARIANTS)
def test_headless_and_cluster_ip_services(variant: str) -> None:
    services = {s["metadata"]["name"]: s for s in of_kind(variant, "Service")}
    pod_labels = one(variant, "Deployment")["spec"]["template"]["metadata"]["labels"]
    main, headless = services["vregistry"], services["vregistry-headless"]
    assert main["spec"]["type"] == "ClusterIP" and "clusterIP" not in main["spec"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    for service in (main, headless):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["targetPort"] == "grpc"
        assert grpc_port["appProtocol"] == "grpc"
        assert grpc_port["port"] == port_of(variant, "grpc")


@pytest.mark.parametrize("variant", VARIANTS)
def test_disruption_budget_and_autoscaler(variant: str) -> None:
    deployment = one(variant, "Deployment")
    pdb = one(variant, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] >= 1
    hpas = of_kind(variant, "HorizontalPodAutoscaler")
    if variant == "metrics-off":  # that values file fixes the count instead
        assert hpas == [] and deployment["spec"]["replicas"] == 3
        return
    (hpa,) = hpas
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # The autoscaler owns the count: a replicas field would reset it at every upgrade.
    assert "replicas" not in deployment["spec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_policy(variant: str) -> None:
    policy = one(variant, "NetworkPolicy")["spec"]
    deployment = one(variant, "Deployment")
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    ingress_ports = [p["port"] for rule in policy["ingress"] for p in rule["ports"]]
    assert "grpc" in ingress_ports
    if "--metrics-listen" in flags(variant):
        assert port_of(variant, "metrics") in ingress_ports
    if "Egress" not in policy["policyTypes"]:
        return
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, 443} <= egress_ports
    if redis_url(variant) is not None:
        expected = {"sentinel": {26379, 6379}, "cluster": {6379, 7000}, "tls-mtls": {6380}}
        assert expected.get(variant, {6379}) <= egress_ports


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("variant", VARIANTS)
def test_metrics_port(variant: str) -> None:
    services = {s["metadata"]["name"]: s for s in of_kind(variant, "Service")}
    main_ports = {p["name"]: p for p in services["vregistry"]["spec"]["ports"]}
    if variant == "metrics-off":
        assert "--metrics-listen" not in flags(variant)
        assert "metrics" not in main_ports
        assert not of_kind(variant, "ServiceMonitor") and not of_kind(variant, "PrometheusRule")
        return
    listen_port = int(flags(variant)["--metrics-listen"].rpartition(":")[2])
    assert port_of(variant, "metrics") == listen_port
    assert main_ports["metrics"]["targetPort"] == "metrics"


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_monitor_is_optional_and_scrapes_the_cluster_ip_service_only(variant: str) -> None:
    monitors = of_kind(variant, "ServiceMonitor")
    if variant not in MONITORED_VARIANTS:
        assert monitors == []
        return
    (monitor,) = monitors
    wanted = monitor["spec"]["selector"]["matchLabels"]
    matched = [
        s for s in of_kind(variant, "Service") if wanted.items() <= s["metadata"]["labels"].items()
    ]
    # One Service, or every pod would be scraped twice.
    assert [s["metadata"]["name"] for s in matched] == ["vregistry"]
    service_ports = {p["name"] for p in matched[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports


def server_metric_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


@pytest.mark.parametrize("variant", VARIANTS)
def test_prometheus_rule_alerts_on_the_servers_metrics(variant: str) -> None:
    rules = of_kind(variant, "PrometheusRule")
    if variant not in MONITORED_VARIANTS:
        assert rules == []
        return
    (rule,) = rules
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) >= ALERTS
    known = server_metric_names()
    for name in ALERTS:
        used = set(re.findall(r"\bvregistry_[a-z_]+", alerts[name]["expr"]))
        assert used and used <= known, (name, used - known)
        assert alerts[name]["labels"]["severity"] in {"warning", "critical"}
        assert alerts[name]["annotations"]["summary"]
