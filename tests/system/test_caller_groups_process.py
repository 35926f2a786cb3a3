"""Callers and groups as the real ``vregistry-server`` runs them: a callers file with groups and
mTLS identities, ``--data-dir`` (SQLite) seeded from a YAML file with groups, TLS with a client
CA, Prometheus metrics. Tokens and SPIFFE/DNS client certificates (made by the fixtures) each
reach only their groups; a Basic upstream of team-a never reaches team-b, in any response or
log line; every disclosure is an audit line and a count; an old callers file is refused."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from tests.support.certs import Pem, Pki, make_pki
from tests.support.processes import free_port
from tests.support.registry import RegistryServer
from tests.support.server_process import SERVER, ServerProcess, server_env
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import config_service_pb2_grpc as cpb_grpc
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.admin.callers import hash_token

TOKEN_A = "proc-team-a-token-Ka81"
TOKEN_B = "proc-team-b-token-Lb92"
SPIFFE_A = "spiffe://mesh.local/ns/team-a/sa/puller"
DNS_B = "builder.team-b.test"


@dataclass
class Running:
    server: ServerProcess
    pki: Pki
    metrics_port: int
    password: str
    encoded: str  # base64(user:password), the Basic header's value

    def channel(self, client: Pem) -> grpc.Channel:
        return grpc.secure_channel(self.server.target, _credentials(self.pki, client))


def _credentials(pki: Pki, client: Pem) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert, private_key=client.key, certificate_chain=client.cert
    )


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory,
    basic_registry: RegistryServer,
    open_registry: RegistryServer,
) -> Iterator[Running]:
    workdir = tmp_path_factory.mktemp("caller-groups-process")
    pki = make_pki(workdir / "pki")
    assert basic_registry.credentials is not None
    user, password = basic_registry.credentials
    seed = {
        "upstreams": [
            {"id": "a-basic", "name": "A", "url": basic_registry.url, "allow_http": True,
             "username": user, "password_env": "PROC_BASIC_PW", "group": "team-a"},
            {"id": "b-open", "name": "B", "url": open_registry.url, "allow_http": True,
             "group": "team-b"},
        ],
        "registries": [
            {"id": "reg-a", "name": "A", "upstreams": ["a-basic"], "group": "team-a"},
            {"id": "reg-b", "name": "B", "upstreams": ["b-open"], "group": "team-b"},
        ],
    }  # fmt: skip
    (workdir / "seed.yaml").write_text(yaml.safe_dump(seed))
    (workdir / "callers").write_text(
        f"{hash_token(TOKEN_A)} alice-a resolver,admin team-a\n"
        f"{hash_token(TOKEN_B)} bob-b resolver,admin team-b\n"
        f"id:{SPIFFE_A} puller-a resolver team-a\n"
        f"id:dns:{DNS_B} builder-b resolver team-b\n"
    )
    port, metrics_port = free_port(), free_port()
    args = [
        "--config", str(workdir / "seed.yaml"),
        "--listen", f"127.0.0.1:{port}",
        "--data-dir", str(workdir / "data"),
        "--callers-file", str(workdir / "callers"),
        "--tls-cert", str(pki.server.cert_path),
        "--tls-key", str(pki.server.key_path),
        "--tls-client-ca", str(pki.ca.cert_path),
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    ]  # fmt: skip
    server = ServerProcess(
        args, server_env({"PROC_BASIC_PW": password}), port, workdir / "server.log"
    )
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    state = Running(server, pki, metrics_port, password, encoded)
    try:
        server.wait_serving(credentials=_credentials(pki, pki.client))
        yield state
    finally:
        assert server.stop() == 0, server.logs()
        logs = server.logs()
        assert password not in logs and encoded not in logs
        assert TOKEN_A not in logs and TOKEN_B not in logs


def _md(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _call(method: Any, request: Any, token: str | None = None) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, method(request, metadata=_md(token), timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), exc


def _auth(upstream_id: str) -> pb.GetAuthHeadersRequest:
    return pb.GetAuthHeadersRequest(upstream_id=upstream_id, path="team/app/manifests/v1")


def test_tokens_reach_only_their_groups(running: Running) -> None:
    with running.channel(running.pki.client) as channel:  # a certificate no line names
        resolve = pb_grpc.UpstreamServiceStub(channel)
        admin = cpb_grpc.ConfigServiceStub(channel)
        refusals = []
        for upstream_id in ("a-basic", "nowhere-1"):
            code, error = _call(resolve.GetAuthHeaders, _auth(upstream_id), TOKEN_B)
            assert code == grpc.StatusCode.PERMISSION_DENIED
            refusals.append(error.details().replace(upstream_id, "ID"))
            assert running.encoded not in str(error) and running.password not in str(error)
        assert refusals[0] == refusals[1]
        code, error = _call(
            resolve.ResolveUpstream,
            pb.ResolveUpstreamRequest(registry_id="reg-a", path="team/app/manifests/v1"),
            TOKEN_B,
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, reply = _call(resolve.GetAuthHeaders, _auth("a-basic"), TOKEN_A)
        assert code == grpc.StatusCode.OK
        assert dict(reply.headers) == {"Authorization": f"Basic {running.encoded}"}
        code, listed = _call(
            admin.ListUpstreams, cpb.ListUpstreamsRequest(parent="groups/-"), TOKEN_B
        )
        assert [u.name for u in listed.upstreams] == ["groups/team-b/upstreams/b-open"]
        code, _ = _call(
            admin.GetUpstream,
            cpb.GetUpstreamRequest(name="groups/team-a/upstreams/a-basic"),
            TOKEN_B,
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        # No token and a certificate no line names: UNAUTHENTICATED.
        code, _ = _call(resolve.GetAuthHeaders, _auth("b-open"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    logs = running.server.logs()
    audit = [line for line in logs.splitlines() if '"credentials_disclosed"' in line]
    assert any('"caller": "alice-a"' in line and '"scheme": "basic"' in line for line in audit)
    assert not any('"caller": "bob-b"' in line for line in audit)
    assert running.password not in logs and running.encoded not in logs


def test_spiffe_and_dns_certificates_select_their_callers(running: Running) -> None:
    puller = running.pki.client_with("proc-puller", uris=[SPIFFE_A])
    builder = running.pki.client_with("proc-builder", dns_names=[DNS_B])
    unnamed = running.pki.client_with("proc-unnamed", uris=["spiffe://mesh.local/ns/c/sa/x"])
    with running.channel(puller) as channel:
        resolve = pb_grpc.UpstreamServiceStub(channel)
        code, reply = _call(resolve.GetAuthHeaders, _auth("a-basic"))
        assert code == grpc.StatusCode.OK and reply.scheme == "basic"
        assert _call(resolve.GetAuthHeaders, _auth("b-open"))[0] == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    with running.channel(builder) as channel:
        resolve = pb_grpc.UpstreamServiceStub(channel)
        assert _call(resolve.GetAuthHeaders, _auth("b-open"))[0] == grpc.StatusCode.OK
        code, error = _call(resolve.GetAuthHeaders, _auth("a-basic"))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert running.encoded not in str(error)
    with running.channel(unnamed) as channel:
        resolve = pb_grpc.UpstreamServiceStub(channel)
        assert _call(resolve.GetAuthHeaders, _auth("b-open"))[0] == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    logs = running.server.logs()
    assert '"why": "unknown_certificate"' in logs
    assert any(
        '"credentials_disclosed"' in line and '"caller": "puller-a"' in line
        for line in logs.splitlines()
    )


def test_disclosures_are_counted(running: Running) -> None:
    with running.channel(running.pki.client) as channel:
        resolve = pb_grpc.UpstreamServiceStub(channel)
        for _ in range(3):
            assert _call(resolve.GetAuthHeaders, _auth("a-basic"), TOKEN_A)[0] == (
                grpc.StatusCode.OK
            )
    scrape = httpx.get(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5).text
    (line,) = [
        row
        for row in scrape.splitlines()
        if row.startswith("vregistry_credentials_disclosed_total{")
        and 'upstream="a-basic"' in row
        and 'scheme="basic"' in row
    ]
    assert float(line.rsplit(" ", 1)[1]) >= 3
    assert running.password not in scrape and running.encoded not in scrape


def test_callers_file_without_groups_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"upstreams": [], "registries": []}))
    callers = tmp_path / "callers"
    callers.write_text(f"# before groups\n{hash_token(TOKEN_A)} alice-a resolver\n")
    result = subprocess.run(
        [SERVER, "--config", str(config), "--listen", f"127.0.0.1:{free_port()}",
         "--callers-file", str(callers)],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{callers}: line 2: no groups column" in result.stderr
    assert "append ' *'" in result.stderr and "Traceback" not in result.stderr
    assert '"serving"' not in result.stderr


def test_identity_lines_need_a_client_ca(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"upstreams": [], "registries": []}))
    callers = tmp_path / "callers"
    callers.write_text(f"id:{SPIFFE_A} puller-a resolver team-a\n")
    result = subprocess.run(
        [SERVER, "--config", str(config), "--listen", f"127.0.0.1:{free_port()}",
         "--callers-file", str(callers)],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "'id:' lines name client certificates; they need --tls-client-ca" in result.stderr
