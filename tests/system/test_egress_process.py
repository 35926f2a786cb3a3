"""The egress policy against the real ``vregistry-server`` process with ``--data-dir``.

An upstream created through ConfigService on loopback, without settings.egress_allow_cidrs,
is refused before any connection (a listening socket that counts accepts shows zero) while
the same host from the operator's YAML works; TestUpstream of it reports only the refusal;
an OAuth2 realm that answers with a 307 to 127.0.0.2 (a stand-in: no real token server
does that) never gets the password replayed there. The password is absent from every
response and from the process's log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.hostile import AcceptCounter, Answer, start_recording
from tests.support.registry import RegistryServer
from tests.support.server_process import ServerProcess, launch
from tests.support.service import error_details
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import config_service_pb2_grpc as cpb_grpc
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc

PASSWORD = "process-egress-pw-7731"
OTHER_HOST = "127.0.0.2"


@pytest.fixture
def counter() -> Iterator[AcceptCounter]:
    sock = AcceptCounter()
    try:
        yield sock
    finally:
        sock.stop()


def _start(tmp_path: Path, document: dict[str, object], env: dict[str, str]) -> ServerProcess:
    return launch(
        tmp_path,
        document,
        env=env,
        # this test is about egress, not caller auth
        args=["--data-dir", str(tmp_path / "data"), "--allow-unauthenticated"],
    )


def test_api_upstream_on_loopback_is_refused_by_the_process(
    tmp_path: Path, counter: AcceptCounter, open_registry: RegistryServer
) -> None:
    registry_url = open_registry.url.replace("127.0.0.1", "localhost")
    document = {
        "upstreams": [{"id": "yaml", "name": "YAML", "url": registry_url, "allow_http": True}],
        "registries": [],
    }
    server = _start(tmp_path, document, {})
    try:
        with grpc.insecure_channel(server.target) as channel:
            admin = cpb_grpc.ConfigServiceStub(channel)
            resolve = pb_grpc.UpstreamServiceStub(channel)
            # The operator's upstream on loopback works.
            reply = resolve.GetAuthHeaders(
                pb.GetAuthHeadersRequest(upstream_id="yaml", path="library/alpine"), timeout=10
            )
            assert reply.scheme == "none"
            # The same kind of url through the API, without the allow-list: refused.
            admin.CreateUpstream(
                cpb.CreateUpstreamRequest(
                    parent="groups/g1",
                    upstream_id="api",
                    upstream=cpb.UpstreamConfig(
                        display_name="API",
                        url=counter.url("localhost"),
                        allow_http=True,
                        username="u",
                        password=PASSWORD,
                    ),
                ),
                timeout=10,
            )
            with pytest.raises(grpc.RpcError) as info:
                resolve.GetAuthHeaders(
                    pb.GetAuthHeadersRequest(upstream_id="api", path="library/alpine"), timeout=10
                )
            details = error_details(info.value)  # type: ignore[arg-type]
            assert (details.code, details.reason) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "EGRESS_REFUSED",
            )
            test = admin.TestUpstream(
                cpb.TestUpstreamRequest(name="groups/g1/upstreams/api"), timeout=10
            )
            assert not test.ok and test.scheme == ""
            assert [(s.http_status, s.latency_ms) for s in test.steps] == [(0, 0.0)] * 3
            assert "egress refused" in test.steps[0].message
            # Literal forms: refused at create, canonical or not.
            for url, code in (
                (counter.url(), grpc.StatusCode.FAILED_PRECONDITION),
                (f"http://2130706433:{counter.port}", grpc.StatusCode.INVALID_ARGUMENT),
                (f"http://[::ffff:127.0.0.1]:{counter.port}", grpc.StatusCode.INVALID_ARGUMENT),
            ):
                with pytest.raises(grpc.RpcError) as created:
                    admin.CreateUpstream(
                        cpb.CreateUpstreamRequest(
                            parent="groups/g1",
                            upstream_id="lit",
                            upstream=cpb.UpstreamConfig(
                                display_name="Lit", url=url, allow_http=True
                            ),
                        ),
                        timeout=10,
                    )
                assert created.value.code() == code, url  # type: ignore[attr-defined]
            for text in (details.message, test.SerializeToString().decode("latin-1")):
                assert PASSWORD not in text
    finally:
        server.stop()
    assert counter.accepts == 0, "nothing connected to the refused upstream"
    assert PASSWORD not in server.logs()


def test_oauth2_password_is_not_replayed_to_another_host_by_the_process(tmp_path: Path) -> None:
    elsewhere = start_recording(
        lambda m, p: Answer(200, body=b'{"access_token": "t", "expires_in": 300}'),
        host=OTHER_HOST,
    )
    holder: dict[str, str] = {}

    def realm_script(method: str, path: str) -> Answer:
        if path.startswith("/v2/"):
            realm = f'Bearer realm="{holder["url"]}/token",service="reg"'
            return Answer(401, {"WWW-Authenticate": realm})
        return Answer(307, {"Location": f"{elsewhere.url}/token"})

    realm = start_recording(realm_script)
    holder["url"] = realm.url
    document = {
        "upstreams": [
            {"id": "up", "name": "Up", "url": realm.url, "allow_http": True,
             "username": "carol", "password_env": "UP_PW", "token_flow": "oauth2",
             "realm_allow_hosts": [OTHER_HOST]},
        ],
        "registries": [],
    }  # fmt: skip
    server = _start(tmp_path, document, {"UP_PW": PASSWORD})
    try:
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as info:
            pb_grpc.UpstreamServiceStub(channel).GetAuthHeaders(
                pb.GetAuthHeadersRequest(upstream_id="up", path="library/alpine"), timeout=10
            )
        details = error_details(info.value)  # type: ignore[arg-type]
        assert details.reason == "UPSTREAM_REALM_REFUSED"
        assert PASSWORD not in details.message
    finally:
        server.stop()
        realm.stop()
        elsewhere.stop()
    assert elsewhere.seen == [], "127.0.0.2 received no request, so no form and no password"
    assert PASSWORD not in server.logs()
