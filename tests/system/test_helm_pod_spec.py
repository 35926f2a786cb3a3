"""The chart's pod, as rendered in deploy/kubernetes/, starts the real vregistry-server.

No cluster here, so the pod is played on this machine: the container's arguments and
environment exactly as rendered, with every mount (the ConfigMap, each Secret volume)
written under a temporary directory at the same relative path, and the Secrets' values made
by the test. Three things differ from a cluster, each said where it happens: addresses are
127.0.0.1 free ports instead of 0.0.0.0:50051/9090 (tests reach loopback only), Redis is the
test's real redis-server instead of the cluster's hosts (the topologies have their own tests),
and the TLS probe's server name is the test certificate's instead of the Service's DNS name.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.certs import make_pki
from tests.support.processes import RedisServer, free_port
from tests.support.server_process import SERVER, server_env, wait_serving
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import config_service_pb2_grpc as cpb_grpc
from vregistry_server.admin.callers import hash_token
from vregistry_server.admin.crypto import generate_key_line
from vregistry_server.runtime.main import SERVICE_NAME

RENDERED = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VAR_REF = re.compile(r"\$\(([A-Z_][A-Z0-9_]*)\)")
ADMIN_TOKEN = secrets.token_urlsafe(32)


def _documents(variant: str) -> list[dict[str, Any]]:
    text = (RENDERED / f"{variant}.yaml").read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc]


class Pod:
    """One rendering's pod, materialized under ``root`` with the given Secret values."""

    def __init__(self, variant: str, root: Path, secret_data: dict[tuple[str, str], bytes]) -> None:
        docs = _documents(variant)
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        self.config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        self.spec = deployment["spec"]["template"]["spec"]
        (self.container,) = self.spec["containers"]
        self.root = root
        self.secret_data = secret_data
        self.port = free_port()
        self.metrics_port = free_port()
        self._write_volumes()

    def local(self, path: str) -> str:
        """Where a path inside the container lives here."""
        return str(self.root / path.lstrip("/"))

    def _write_volumes(self) -> None:
        volumes = {v["name"]: v for v in self.spec["volumes"]}
        for mount in self.container["volumeMounts"]:
            volume = volumes[mount["name"]]
            target = Path(self.local(mount["mountPath"]))
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                data = self.config_maps[volume["configMap"]["name"]]["data"]
                for name, text in data.items():
                    (target / name).write_text(self._localize_config(text))
            elif "secret" in volume:
                name = volume["secret"]["secretName"]
                items = volume["secret"].get("items") or [
                    {"key": key, "path": key}
                    for (secret, key) in self.secret_data
                    if secret == name
                ]
                for item in items:
                    path = target / item["path"]
                    path.write_bytes(self.secret_data[(name, item["key"])])
                    path.chmod(0o440)

    def _localize_config(self, text: str) -> str:
        config = yaml.safe_load(text)
        settings = config.get("settings", {})
        for key, value in settings.items():
            if key.endswith("_file"):
                settings[key] = self.local(value)
        for upstream in config.get("upstreams", []):
            if "password_file" in upstream:
                upstream["password_file"] = self.local(upstream["password_file"])
        return yaml.safe_dump(config)

    def args(self) -> list[str]:
        args = []
        for arg in self.container["args"]:
            name, eq, value = arg.partition("=")
            if name == "--listen":
                value = f"127.0.0.1:{self.port}"  # loopback instead of 0.0.0.0 (tests)
            elif name == "--metrics-listen":
                value = f"127.0.0.1:{self.metrics_port}"
            elif value.startswith("/"):
                value = self.local(value)
            args.append(f"{name}{eq}{value}")
        return args

    def env(self, redis_url: str | None) -> dict[str, str]:
        """The container's environment: Secret references resolved, $(VAR) expanded as the
        kubelet does, paths localized."""
        env: dict[str, str] = {}
        for entry in self.container.get("env", []):
            if "valueFrom" in entry:
                ref = entry["valueFrom"]["secretKeyRef"]
                value = self.secret_data[(ref["name"], ref["key"])].decode()
            else:
                value = VAR_REF.sub(lambda m: env[m.group(1)], str(entry["value"]))
                if value.startswith("/"):
                    value = self.local(value)
            env[entry["name"]] = value
        if "VREGISTRY_REDIS_URL" in env:
            assert redis_url is not None
            env["VREGISTRY_REDIS_URL"] = redis_url  # this machine's redis-server (see above)
        if "VREGISTRY_HEALTHCHECK_TARGET" in env:
            env["VREGISTRY_HEALTHCHECK_TARGET"] = f"127.0.0.1:{self.port}"
        return env

    def start(self, redis_url: str | None) -> subprocess.Popen[bytes]:
        log = (self.root / "server.log").open("wb")
        return subprocess.Popen(
            [SERVER, *self.args()],
            env=server_env(self.env(redis_url)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def probe_command(self, probe: str) -> list[str]:
        command: list[str] = self.container[probe]["exec"]["command"]
        assert command[0] == "python"
        return [sys.executable, *command[1:]]  # the image's python is this venv's here

    def grace_budget(self) -> float:
        """Seconds from SIGTERM to the kubelet's SIGKILL: the termination grace less the preStop sleep."""
        pre_stop = self.container["lifecycle"]["preStop"]["sleep"]["seconds"]
        return float(self.spec["terminationGracePeriodSeconds"] - pre_stop)


def _health(target: str, service: str, credentials: grpc.ChannelCredentials | None = None) -> int:
    channel = (
        grpc.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )
        if credentials
        else grpc.insecure_channel(target)
    )
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


def _stop(process: subprocess.Popen[bytes], budget: float) -> tuple[int, float]:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(
            f"still running {budget}s after SIGTERM (the kubelet kills it then)"
        ) from None
    return code, time.monotonic() - started


def test_sentinel_rendering_serves_config_service_and_metrics(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    callers = f"{hash_token(ADMIN_TOKEN)} ops admin,resolver *\n".encode()
    pod = Pod(
        "sentinel",
        tmp_path,
        {
            ("vregistry-callers", "callers"): callers,
            ("vregistry-redis", "password"): b"",
            ("vregistry-keys", "keys"): (generate_key_line("k1") + "\n").encode(),
            ("vregistry-token-cache-key", "key"): base64.b64encode(os.urandom(32)),
        },
    )
    process = pod.start(redis_server.url)
    target = f"127.0.0.1:{pod.port}"
    try:
        wait_serving(process, target, tmp_path / "server.log")
        serving = health_pb2.HealthCheckResponse.SERVING
        # The services the probes name (readiness: UpstreamService), and ConfigService.
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert _health(target, pod.container[probe]["grpc"]["service"]) == serving
        assert pod.container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
        assert _health(target, "vregistry.v1.ConfigService") == serving
        # ConfigService on the Redis store, seeded from the ConfigMap, behind the callers file.
        with grpc.insecure_channel(target) as channel:
            reply = cpb_grpc.ConfigServiceStub(channel).ListUpstreams(
                cpb.ListUpstreamsRequest(parent="groups/-"),
                metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
                timeout=10,
            )
            assert sorted(u.name for u in reply.upstreams) == [
                "groups/default/upstreams/dockerhub",
                "groups/default/upstreams/ghcr",
                "groups/default/upstreams/quay",
            ]
            with pytest.raises(grpc.RpcError) as refused:
                cpb_grpc.ConfigServiceStub(channel).ListUpstreams(
                    cpb.ListUpstreamsRequest(parent="groups/-"), timeout=10
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The metrics port serves the series the PrometheusRule alerts on.
        with urllib.request.urlopen(f"http://127.0.0.1:{pod.metrics_port}/metrics", timeout=5) as r:
            scrape = r.read().decode()
        for name in ("vregistry_rpc_requests_total", "vregistry_token_cache_degraded"):
            assert f"# TYPE {name.removesuffix('_total')}" in scrape, name
        code, _ = _stop(process, pod.grace_budget())
        assert code == 0, (tmp_path / "server.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_tls_mtls_rendering_and_its_exec_probes(tmp_path: Path, redis_server: RedisServer) -> None:
    pki = make_pki(tmp_path / "pki")
    callers = f"{hash_token(ADMIN_TOKEN)} ops admin,resolver *\n".encode()
    pod = Pod(
        "tls-mtls",
        tmp_path / "pod",
        {
            ("vregistry-callers", "callers"): callers,
            ("vregistry-tls", "tls.crt"): pki.server.cert,
            ("vregistry-tls", "tls.key"): pki.server.key,
            ("vregistry-tls", "ca.crt"): pki.ca.cert,
            ("vregistry-client-ca", "ca.crt"): pki.ca.cert,
            ("vregistry-probe-client", "tls.crt"): pki.client.cert,
            ("vregistry-probe-client", "tls.key"): pki.client.key,
            ("vregistry-redis", "password"): b"",
            ("vregistry-redis-ca", "ca.crt"): pki.ca.cert,
            ("registry-credentials", "dockerhub"): b"dockerhub-token",
            ("acr-credentials", "token"): b"acr-token",
        },
    )
    process = pod.start(redis_server.url)
    target = f"127.0.0.1:{pod.port}"
    env = pod.env(redis_server.url)
    # The test certificate names localhost, not the Service's DNS name (see the docstring).
    env["VREGISTRY_HEALTHCHECK_SERVER_NAME"] = "localhost"
    try:
        client = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert,
            private_key=pki.client.key,
            certificate_chain=pki.client.cert,
        )
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "pod" / "server.log").read_text()
            try:
                assert _health(target, "", client) == health_pb2.HealthCheckResponse.SERVING
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "not serving over mTLS within 30 s"
                time.sleep(0.2)
        # Each exec probe, with the pod's environment, passes over mTLS...
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            done = subprocess.run(
                pod.probe_command(probe), env=server_env(env), capture_output=True, timeout=30
            )
            assert done.returncode == 0, (probe, done.stdout, done.stderr)
            assert done.stdout.strip() == b"SERVING"
        # ... and needs the probe's client certificate: without it the handshake is refused.
        no_client = {
            k: v
            for k, v in env.items()
            if k not in {"VREGISTRY_HEALTHCHECK_CERT", "VREGISTRY_HEALTHCHECK_KEY"}
        }
        done = subprocess.run(
            pod.probe_command("readinessProbe"),
            env=server_env(no_client),
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 1 and done.stdout.strip() == b"NOT SERVING"
        code, _ = _stop(process, pod.grace_budget())
        assert code == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
