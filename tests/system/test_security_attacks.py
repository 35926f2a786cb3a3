"""The security suite of issue 10: every attack of its "Why", against the real process.

One ``vregistry-server`` process per module (``fleet``) with a real SQLite store
(``--data-dir``), a keyring, a callers file of two tenants (team-a, team-b; roles
``resolver,admin``), metrics on a free loopback port, seeded from a YAML file with the real
htpasswd and token registries and the token server fixture. The Redis variant of attack 8
starts its own process with ``--store redis`` on the real Redis. Stand-ins
(tests/support/hostile.py) only where an attack needs a hostile upstream no real registry
plays: a Basic-asking host that records what it receives, a realm redirecting its POST with
307/308 to 127.0.0.2, an upstream redirecting its ping, a tarpit, sockets counting accepts.

Every test shows the attack refused AND each credential involved (password, its Basic value,
any token handed out, the callers' bearer tokens) absent from every gRPC answer (messages,
details, trailers), the process log, the Prometheus scrape and the store (the SQLite files'
bytes, or every Redis key): ``tests.support.secrets.assert_secret_absent``.

Traffic stays on 127.0.0.0/8: 127.0.0.2 and 127.0.0.3 stand for "another host". Private,
link-local and metadata forms are only ever given where the server refuses them before it
connects (at create time); the connect-level proof for those, and for ping redirects to
metadata addresses, is in-process with ``connect_log`` (tests/integration/test_egress_policy.py).

| # | attack (issue 10, "Why") | test |
|---|---|---|
| 1 | groups not a boundary: team-b asks for team-a's Basic upstream | ``test_1_groups_are_a_boundary`` |
| 2 | a password outliving its URL: UpdateUpstream ``[url, username]`` to 127.0.0.2 | ``test_2_password_does_not_outlive_its_url`` |
| 3 | everything open without a callers file | ``test_3_no_callers_file_no_start`` |
| 4 | OAuth2 password body following a 307/308 to another host | ``test_4_oauth2_form_never_follows_a_redirect_to_another_host`` |
| 5 | a resolver minting push/delete/``*`` tokens | ``test_5_resolver_cannot_mint_push_delete_or_star`` |
| 6 | SSRF: loopback/private/metadata literals and variants, ping redirects, TestUpstream as a scanner | ``test_6_ssrf_is_refused_before_connecting`` |
| 7 | a tarpit upstream starving the others | ``test_7_tarpit_does_not_starve_another_upstream`` |
| 8 | a store record edited without the key (url/group), SQLite | ``test_8_sqlite_record_edited_without_the_key`` |
| 8 | the same in Redis | ``test_8_redis_record_edited_without_the_key`` |
| 9 | smaller: trailing-newline ids, ALREADY_EXISTS naming another group, realm port, redaction | ``test_9_smaller_ones`` |

Attacks already covered in-process (tests/integration/test_caller_groups.py,
test_allowed_actions.py, test_sealed_credentials.py, test_egress_policy.py,
tests/unit/test_credentials_follow_url.py) keep those tests; these are the process-level proof.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis
import yaml
from google.protobuf import field_mask_pb2

from tests.support.hostile import (
    AcceptCounter,
    Answer,
    RecordingServer,
    Tarpit,
    start_recording,
    wait_until,
)
from tests.support.processes import RedisServer, free_port, port_answers
from tests.support.registry import RegistryServer
from tests.support.secrets import assert_secret_absent, basic_value, files_bytes, redis_dump
from tests.support.server_process import SERVER, ServerProcess, launch, server_env
from tests.support.service import error_details
from tests.support.token_server import TokenServer
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import config_service_pb2_grpc as cpb_grpc
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.admin.callers import hash_token
from vregistry_server.admin.crypto import generate_key_line
from vregistry_server.admin.stores.redis import PREFIX as STORE_PREFIX
from vregistry_server.admin.stores.redis import UPSTREAMS
from vregistry_server.admin.stores.sqlite import DB_FILE

TOKEN_A = "attack-suite-team-a-token-Qx71"
TOKEN_B = "attack-suite-team-b-token-Wv38"
OAUTH_PW = "attack-oauth-pw-never-replayed-6624"
MOVER_PW = "attack-mover-pw-stays-home-3107"
VICTIM_PW = "attack-victim-pw-sealed-8843"
SSRF_PW = "attack-ssrf-pw-4471"
REALM_PW = "attack-realm-port-pw-9902"
OTHER_HOST = "127.0.0.2"
THIRD_HOST = "127.0.0.3"
# The operator lets API upstreams reach exactly 127.0.0.2 (the stand-ins' "other host"):
# 127.0.0.1, where the fixtures and the server itself live, stays refused to the API.
EGRESS = ["127.0.0.2/32"]
ALPINE = "library/alpine/manifests/latest"


def _basic_asker(host: str = OTHER_HOST) -> RecordingServer:
    """A stand-in registry that asks for Basic on /v2/ and records every request it gets."""

    def script(method: str, path: str) -> Answer:
        if path.startswith("/v2/"):
            return Answer(401, {"WWW-Authenticate": 'Basic realm="stand-in"'})
        return Answer(200, body=b"{}")

    return start_recording(script, host=host)


@dataclass
class Fleet:
    server: ServerProcess
    metrics_port: int
    data_dir: Path
    stand_ins: dict[str, Any]
    #: every credential the seed and the tests hand the server (plain, Basic form, tokens)
    secrets: list[str] = field(default_factory=list)

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def assert_clean(self, responses: list[Any], *extra: str, store: bytes | None = None) -> None:
        log_text, metrics_text = self.server.logs(), self.metrics()
        store_bytes = files_bytes(self.data_dir) if store is None else store
        for secret in (*self.secrets, *extra):
            assert_secret_absent(
                secret,
                responses=responses,
                log_text=log_text,
                metrics_text=metrics_text,
                store_bytes=store_bytes,
            )


class Caller:
    """One tenant's stubs on the server, recording every answer for the absence check."""

    def __init__(self, target: str, token: str, responses: list[Any]) -> None:
        self._channel = grpc.insecure_channel(target)
        self.resolve = pb_grpc.UpstreamServiceStub(self._channel)
        self.admin = cpb_grpc.ConfigServiceStub(self._channel)
        self._md = (("authorization", f"Bearer {token}"),)
        self.responses = responses

    def call(self, method: Any, request: Any, timeout: float = 10) -> tuple[grpc.StatusCode, Any]:
        try:
            reply = method(request, metadata=self._md, timeout=timeout)
        except grpc.RpcError as error:
            self.responses.append(error)
            return error.code(), error  # type: ignore[attr-defined]
        self.responses.append(reply)
        return grpc.StatusCode.OK, reply

    def auth(self, upstream_id: str, actions: tuple[str, ...] = ()) -> tuple[grpc.StatusCode, Any]:
        request = pb.GetAuthHeadersRequest(
            upstream_id=upstream_id, path="team/app/manifests/v1", actions=list(actions)
        )
        return self.call(self.resolve.GetAuthHeaders, request)

    def create(
        self, group: str, upstream_id: str, url: str, **fields: Any
    ) -> tuple[grpc.StatusCode, Any]:
        fields.setdefault("display_name", f"Attack {upstream_id}")
        fields.setdefault("allow_http", url.startswith("http://"))
        request = cpb.CreateUpstreamRequest(
            parent=f"groups/{group}",
            upstream_id=upstream_id,
            upstream=cpb.UpstreamConfig(url=url, **fields),
        )
        return self.call(self.admin.CreateUpstream, request)

    def close(self) -> None:
        self._channel.close()


def _reason(error: Any) -> tuple[grpc.StatusCode, str]:
    details = error_details(error)
    return details.code, details.reason


def _write_auth_files(workdir: Path) -> list[str]:
    """A keyring and a callers file of two tenants; the server args that name them."""
    (workdir / "keys").write_text(generate_key_line("k1") + "\n")
    (workdir / "callers").write_text(
        f"{hash_token(TOKEN_A)} alice-a resolver,admin team-a\n"
        f"{hash_token(TOKEN_B)} bob-b resolver,admin team-b\n"
    )
    return ["--encryption-key-file", str(workdir / "keys"),
            "--callers-file", str(workdir / "callers")]  # fmt: skip


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    basic_registry: RegistryServer,
    token_registry: RegistryServer,
    open_registry: RegistryServer,
) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("security-attacks")
    elsewhere = start_recording(
        lambda m, p: Answer(200, body=b'{"access_token": "t", "expires_in": 300}'),
        host=OTHER_HOST,
    )
    redirect = {"status": 307}

    def realm_script(method: str, path: str) -> Answer:
        if path.startswith("/v2/"):
            return Answer(
                401, {"WWW-Authenticate": f'Bearer realm="{realm.url}/token",service="r"'}
            )
        return Answer(redirect["status"], {"Location": f"{elsewhere.url}/token"})

    realm = start_recording(realm_script)
    tarpit = Tarpit(interval=0.5)
    assert basic_registry.credentials and token_registry.credentials
    (b_user, b_pw), (t_user, t_pw) = basic_registry.credentials, token_registry.credentials
    document = {
        "upstreams": [
            {"id": "a-basic", "name": "A basic", "url": basic_registry.url, "allow_http": True,
             "username": b_user, "password_env": "ATTACK_BASIC_PW", "group": "team-a"},
            {"id": "a-token", "name": "A token", "url": token_registry.url, "allow_http": True,
             "username": t_user, "password_env": "ATTACK_TOKEN_PW", "group": "team-a"},
            {"id": "a-oauth", "name": "A oauth", "url": realm.url, "allow_http": True,
             "username": "carol", "password_env": "ATTACK_OAUTH_PW", "token_flow": "oauth2",
             "realm_allow_hosts": [OTHER_HOST], "group": "team-a"},
            {"id": "b-open", "name": "B open", "url": open_registry.url, "allow_http": True,
             "group": "team-b"},
            {"id": "b-tarpit", "name": "B tarpit", "url": tarpit.url, "allow_http": True,
             "group": "team-b"},
        ],
        "registries": [
            {"id": "reg-a", "name": "A", "upstreams": ["a-basic"], "group": "team-a"},
            {"id": "reg-b", "name": "B", "upstreams": ["b-open"], "group": "team-b"},
            {"id": "slow", "name": "Slow", "upstreams": ["b-tarpit"], "group": "team-b"},
        ],
        "settings": {
            "egress_allow_cidrs": EGRESS, "request_timeout_seconds": 3,
            "probe_timeout_seconds": 3, "probe_retries": 0, "circuit_failure_threshold": 1000,
            "max_in_flight_per_upstream": 20, "max_connections_per_upstream": 20,
        },
    }  # fmt: skip
    metrics_port = free_port()
    args = [*_write_auth_files(workdir), "--data-dir", str(workdir / "data"),
            "--metrics-listen", f"127.0.0.1:{metrics_port}"]  # fmt: skip
    env = {"ATTACK_BASIC_PW": b_pw, "ATTACK_TOKEN_PW": t_pw, "ATTACK_OAUTH_PW": OAUTH_PW}
    server = launch(workdir, document, env=env, args=args)
    secrets = [TOKEN_A, TOKEN_B, b_pw, basic_value(b_user, b_pw), t_pw, basic_value(t_user, t_pw)]
    secrets += [OAUTH_PW, basic_value("carol", OAUTH_PW)]
    stand_ins = {"realm": realm, "elsewhere": elsewhere, "redirect": redirect, "tarpit": tarpit}
    try:
        yield Fleet(server, metrics_port, workdir / "data", stand_ins, secrets)
    finally:
        code = server.stop()
        realm.stop()
        elsewhere.stop()
        tarpit.stop()
        assert code == 0, server.logs()


@pytest.fixture
def responses() -> list[Any]:
    return []


@pytest.fixture
def team_a(fleet: Fleet, responses: list[Any]) -> Iterator[Caller]:
    caller = Caller(fleet.server.target, TOKEN_A, responses)
    yield caller
    caller.close()


@pytest.fixture
def team_b(fleet: Fleet, responses: list[Any]) -> Iterator[Caller]:
    caller = Caller(fleet.server.target, TOKEN_B, responses)
    yield caller
    caller.close()


# --------------------------------------------------------------------------- 1


def test_1_groups_are_a_boundary(fleet: Fleet, team_b: Caller, responses: list[Any]) -> None:
    """team-b (resolver and admin) asks for team-a's Basic upstream every way it can."""
    refusals = []
    for upstream_id in ("a-basic", "nowhere-at-all"):
        code, error = team_b.auth(upstream_id)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        refusals.append(error.details().replace(upstream_id, "ID"))
    assert refusals[0] == refusals[1], "no existence oracle"
    code, _ = team_b.call(
        team_b.resolve.ResolveUpstream, pb.ResolveUpstreamRequest(registry_id="reg-a", path=ALPINE)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, listed = team_b.call(
        team_b.admin.ListUpstreams, cpb.ListUpstreamsRequest(parent="groups/-")
    )
    assert code == grpc.StatusCode.OK
    assert {u.name.split("/")[1] for u in listed.upstreams} == {"team-b"}
    name = "groups/team-a/upstreams/a-basic"
    code, _ = team_b.call(team_b.admin.GetUpstream, cpb.GetUpstreamRequest(name=name))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = team_b.call(
        team_b.admin.UpdateUpstream,
        cpb.UpdateUpstreamRequest(
            upstream=cpb.UpstreamConfig(name=name, url=f"http://{OTHER_HOST}:9"),
            update_mask=field_mask_pb2.FieldMask(paths=["url"]),
        ),
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert not any('"credentials_disclosed"' in line and '"caller": "bob-b"' in line
                   for line in fleet.server.logs().splitlines())  # fmt: skip
    fleet.assert_clean(responses)


# --------------------------------------------------------------------------- 2


def test_2_password_does_not_outlive_its_url(
    fleet: Fleet, team_a: Caller, responses: list[Any]
) -> None:
    """Stand-ins: two Basic-asking hosts on 127.0.0.2 (home, and the new host that records)."""
    home, new_host = _basic_asker(), _basic_asker()
    try:
        code, _ = team_a.create("team-a", "mover", home.url, username="m", password=MOVER_PW)
        assert code == grpc.StatusCode.OK
        code, moved = team_a.call(
            team_a.admin.UpdateUpstream,
            cpb.UpdateUpstreamRequest(
                upstream=cpb.UpstreamConfig(
                    name="groups/team-a/upstreams/mover", url=new_host.url, username="m2"
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["url", "username"]),
            ),
        )
        assert code == grpc.StatusCode.OK
        assert not moved.upstream.has_credentials, "the url change cleared the password"
        code, reply = team_a.auth("mover")
        if code == grpc.StatusCode.OK:
            assert "Authorization" not in reply.headers and reply.scheme != "basic"
        assert all("Authorization" not in seen.headers for seen in new_host.seen)
    finally:
        home.stop()
        new_host.stop()
    fleet.assert_clean(responses, MOVER_PW, basic_value("m", MOVER_PW), basic_value("m2", MOVER_PW))


# --------------------------------------------------------------------------- 3


def test_3_no_callers_file_no_start(tmp_path: Path, basic_registry: RegistryServer) -> None:
    """ConfigService (--data-dir) or a wildcard listen address without callers: exit 2."""
    assert basic_registry.credentials
    user, password = basic_registry.credentials
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"upstreams": [
        {"id": "a", "name": "A", "url": basic_registry.url, "allow_http": True,
         "username": user, "password_env": "OPEN_PW"}], "registries": []}))  # fmt: skip
    data = tmp_path / "data"
    for listen, extra in ((f"127.0.0.1:{free_port()}", ["--data-dir", str(data)]),
                          (f"0.0.0.0:{free_port()}", [])):  # fmt: skip
        result = subprocess.run(
            [SERVER, "--config", str(config), "--listen", listen, *extra],
            env=server_env({"OPEN_PW": password}),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, result.stderr
        assert "refusing to start without caller authentication" in result.stderr
        assert "--callers-file" in result.stderr
        assert not port_answers(int(listen.rsplit(":", 1)[1])), "no port was bound"
        store = files_bytes(data) if data.exists() else b""
        for secret in (password, basic_value(user, password)):
            assert_secret_absent(secret, log_text=result.stdout + result.stderr, store_bytes=store)
    assert not (data / DB_FILE).exists(), "no store was opened"


# --------------------------------------------------------------------------- 4


@pytest.mark.parametrize("status", [307, 308])
def test_4_oauth2_form_never_follows_a_redirect_to_another_host(
    fleet: Fleet, team_a: Caller, responses: list[Any], status: int
) -> None:
    """Stand-ins: a realm answering the OAuth2 POST with a 307/308 to 127.0.0.2, which records."""
    fleet.stand_ins["redirect"]["status"] = status
    code, error = team_a.auth("a-oauth")
    assert (code, _reason(error)[1]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UPSTREAM_REALM_REFUSED",
    )
    assert fleet.stand_ins["elsewhere"].seen == [], "127.0.0.2 received nothing"
    fleet.assert_clean(responses)


# --------------------------------------------------------------------------- 5


def test_5_resolver_cannot_mint_push_delete_or_star(
    fleet: Fleet, team_a: Caller, responses: list[Any], token_server: TokenServer
) -> None:
    """The owning tenant's own resolver, on a pull-only upstream of the real token registry."""
    for actions in (("push",), ("delete",), ("*",), ("pull", "push"), ("push", "delete")):
        code, error = team_a.auth("a-token", actions)
        assert (code, _reason(error)[1]) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ACTION_NOT_ALLOWED",
        )
    assert token_server.records == [], "checked before any network call"
    # The pull the owner may have (its answer is the token, so it is not among ``responses``):
    # the token it carries must then be nowhere else.
    reply = team_a.resolve.GetAuthHeaders(
        pb.GetAuthHeadersRequest(upstream_id="a-token", path="private/app", actions=["pull"]),
        metadata=(("authorization", f"Bearer {TOKEN_A}"),),
        timeout=10,
    )
    token = reply.headers["Authorization"].removeprefix("Bearer ")
    scopes = [scope for record in token_server.records for scope in record.scopes]
    assert scopes and all(scope.endswith(":pull") for scope in scopes), scopes
    fleet.assert_clean(responses, token)


# --------------------------------------------------------------------------- 6

REFUSED_AT_CREATE = [
    "[::1]:5000", "10.0.0.5:5000", "172.16.0.9:5000", "192.168.1.1:5000", "100.64.0.1:5000",
    "169.254.169.254", "169.254.170.2", "[fd00:ec2::254]", "100.100.100.200", "0.0.0.0:5000",
    "[fe80::1]:5000", "[64:ff9b::a9fe:a9fe]",
]  # fmt: skip
NON_CANONICAL = [
    "2130706433", "0177.0.0.1", "0x7f000001", "127.1", "[::ffff:127.0.0.1]", "[::ffff:a9fe:a9fe]",
]  # fmt: skip


def _only_the_refusal(reply: cpb.TestUpstreamResponse) -> None:
    assert not reply.ok and reply.scheme == ""
    assert [(s.http_status, s.latency_ms) for s in reply.steps] == [(0, 0.0)] * len(reply.steps)
    assert "egress refused" in reply.steps[0].message


def test_6_ssrf_is_refused_before_connecting(
    fleet: Fleet, team_a: Caller, responses: list[Any]
) -> None:
    """Stand-ins: sockets on 127.0.0.1 and 127.0.0.3 counting accepts; an upstream on 127.0.0.2
    (the one address the operator allowed) redirecting its ping to 127.0.0.3."""
    here, third = AcceptCounter(), AcceptCounter(THIRD_HOST)
    pinger = start_recording(
        lambda m, p: Answer(302, {"Location": f"{third.url()}/v2/"}), OTHER_HOST
    )
    try:
        for host in [f"127.0.0.1:{here.port}", f"{THIRD_HOST}:{third.port}", *REFUSED_AT_CREATE]:
            code, error = team_a.create("team-a", "lit", f"http://{host}")
            assert (code, _reason(error)[1]) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "EGRESS_REFUSED",
            ), host
        for host in NON_CANONICAL:
            code, error = team_a.create("team-a", "odd", f"http://{host}:{here.port}")
            assert code == grpc.StatusCode.INVALID_ARGUMENT, host
        # TestUpstream as a scanner, only ever aimed at the counting sockets.
        for url in (here.url(), third.url(), here.url("localhost")):
            code, reply = team_a.call(
                team_a.admin.TestUpstream,
                cpb.TestUpstreamRequest(
                    upstream=cpb.UpstreamConfig(display_name="Scan", url=url, allow_http=True)
                ),
            )
            assert code == grpc.StatusCode.OK, url
            _only_the_refusal(reply)
        # A host name is judged at connect time: created, then refused with nothing sent.
        code, _ = team_a.create(
            "team-a", "named", here.url("localhost"), username="s", password=SSRF_PW
        )
        assert code == grpc.StatusCode.OK
        code, error = team_a.auth("named")
        assert (code, _reason(error)[1]) == (grpc.StatusCode.FAILED_PRECONDITION, "EGRESS_REFUSED")
        code, reply = team_a.call(
            team_a.admin.TestUpstream, cpb.TestUpstreamRequest(name="groups/team-a/upstreams/named")
        )
        _only_the_refusal(reply)
        # The ping's redirect passes the same policy.
        assert team_a.create("team-a", "pinger", pinger.url)[0] == grpc.StatusCode.OK
        code, error = team_a.auth("pinger")
        assert (code, _reason(error)[1]) == (grpc.StatusCode.FAILED_PRECONDITION, "EGRESS_REFUSED")
        assert pinger.seen, "the allowed host was pinged"
    finally:
        pinger.stop()
        here.stop()
        third.stop()
    assert (here.accepts, third.accepts) == (0, 0), "no refused address was connected to"
    fleet.assert_clean(responses, SSRF_PW, basic_value("s", SSRF_PW))


# --------------------------------------------------------------------------- 7


def test_7_tarpit_does_not_starve_another_upstream(
    fleet: Fleet, team_b: Caller, responses: list[Any]
) -> None:
    """Stand-in: the tarpit (a byte every 0.5 s) holding 20 abandoned calls; the real
    docker-registry behind team-b's other registry stays fast (generous bounds: the figure
    is in benchmarks/tarpit.py)."""
    tarpit: Tarpit = fleet.stand_ins["tarpit"]
    # refresh: each call asks the upstream (a cached answer would not touch its pool).
    fast = pb.ResolveUpstreamRequest(registry_id="reg-b", path=ALPINE, refresh=True)
    # Each held call asks for its own tag: identical misses in flight share one check.
    slow = [
        pb.ResolveUpstreamRequest(registry_id="slow", path=f"library/alpine/manifests/held-{n}")
        for n in range(20)
    ]

    def timed() -> float:
        started = time.perf_counter()
        assert team_b.call(team_b.resolve.ResolveUpstream, fast)[0] == grpc.StatusCode.OK
        return time.perf_counter() - started

    timed()
    baseline = [timed() for _ in range(10)]
    with ThreadPoolExecutor(20) as pool:
        held = [
            pool.submit(team_b.call, team_b.resolve.ResolveUpstream, request, 1.0)
            for request in slow
        ]
        assert wait_until(lambda: tarpit.open_connections >= 20, 5), tarpit.open_connections
        during = [timed() for _ in range(10)]
        assert all(f.result()[0] != grpc.StatusCode.OK for f in held)
    assert statistics.median(during) < max(0.25, 5 * statistics.median(baseline)), (
        baseline,
        during,
    )
    assert max(during) < 2.0, during
    assert wait_until(lambda: tarpit.open_connections == 0, 6), "the hard deadline closed them"
    fleet.assert_clean(responses)


# --------------------------------------------------------------------------- 8

VICTIM_SECRETS = (VICTIM_PW, *(basic_value(v, VICTIM_PW) for v in ("victim-url", "victim-group")))
Edit = Callable[[dict[str, dict[str, Any]]], None]


def _tamper_and_check(
    caller: Caller, other: Caller, edit: Callable[[Edit], None], attacker: RecordingServer
) -> None:
    """Create two victims, edit their records (url to the attacker, group to team-b) without the
    key, make the server reload (any write), and show both unusable and nothing sent."""
    home = _basic_asker()
    try:
        for victim in ("victim-url", "victim-group"):
            # its own username: the same url and credentials twice in a group are refused
            code, _ = caller.create("team-a", victim, home.url, username=victim, password=VICTIM_PW)
            assert code == grpc.StatusCode.OK

        def change(docs: dict[str, dict[str, Any]]) -> None:
            docs["victim-url"]["url"] = attacker.url
            docs["victim-group"]["group"] = "team-b"

        edit(change)
        # Any write makes the server reload the store, edited records included.
        assert caller.create("team-a", "bump", "https://bump.invalid")[0] == grpc.StatusCode.OK
        for who, victim in ((caller, "victim-url"), (other, "victim-group")):
            code, error = who.auth(victim)
            assert (code, _reason(error)[1]) == (
                grpc.StatusCode.FAILED_PRECONDITION, "CREDENTIALS_UNREADABLE"), victim  # fmt: skip
        assert attacker.seen == [], "nothing reached the edited url"
    finally:
        home.stop()


def test_8_sqlite_record_edited_without_the_key(
    fleet: Fleet, team_a: Caller, team_b: Caller, responses: list[Any]
) -> None:
    """Stand-ins: a Basic-asking home host and the attacker's host, both on 127.0.0.2."""
    db = fleet.data_dir / DB_FILE

    def edit(change: Edit) -> None:
        with sqlite3.connect(db) as conn:
            docs = {r[0]: json.loads(r[1]) for r in conn.execute("SELECT id, doc FROM upstreams")}
            change(docs)
            for upstream_id, doc in docs.items():
                conn.execute(
                    "UPDATE upstreams SET doc = ?, grp = ? WHERE id = ?",
                    (json.dumps(doc), doc["group"], upstream_id),
                )
        conn.close()

    attacker = _basic_asker()
    try:
        _tamper_and_check(team_a, team_b, edit, attacker)
    finally:
        attacker.stop()
    fleet.assert_clean(responses, *VICTIM_SECRETS)


def test_8_redis_record_edited_without_the_key(
    tmp_path: Path, clean_redis: RedisServer, responses: list[Any]
) -> None:
    """The real Redis store (--store redis) in its own process; stand-ins as for SQLite."""
    metrics_port = free_port()
    args = [*_write_auth_files(tmp_path), "--store", "redis", "--store-redis-url", clean_redis.url,
            "--metrics-listen", f"127.0.0.1:{metrics_port}"]  # fmt: skip
    document = {"upstreams": [], "registries": [], "settings": {"egress_allow_cidrs": EGRESS}}
    server = launch(tmp_path, document, args=args)
    client = redis.Redis.from_url(clean_redis.url)

    def edit(change: Edit) -> None:
        docs = {k.decode(): json.loads(v) for k, v in client.hgetall(UPSTREAMS).items()}
        change(docs)
        client.hset(UPSTREAMS, mapping={k: json.dumps(v) for k, v in docs.items()})

    attacker = _basic_asker()
    team_a = Caller(server.target, TOKEN_A, responses)
    team_b = Caller(server.target, TOKEN_B, responses)
    try:
        _tamper_and_check(team_a, team_b, edit, attacker)
        running = Fleet(server, metrics_port, tmp_path, {}, [TOKEN_A, TOKEN_B])
        running.assert_clean(
            responses,
            *VICTIM_SECRETS,
            store=redis_dump(clean_redis.url, STORE_PREFIX + "*"),
        )
    finally:
        team_a.close()
        team_b.close()
        client.close()
        attacker.stop()
        assert server.stop() == 0, server.logs()


# --------------------------------------------------------------------------- 9


def test_9_smaller_ones(fleet: Fleet, team_a: Caller, team_b: Caller, responses: list[Any]) -> None:
    """Ids with a trailing newline; ALREADY_EXISTS naming another group; the realm port rule
    (stand-ins: an upstream on 127.0.0.2 whose realm is another port of 127.0.0.2, recording);
    redaction of ordinary words in the log."""
    assert (
        team_a.create("team-a", "evil\n", "https://evil.invalid")[0]
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    # "a-basic\n" is not "a-basic": no credential, and the same answer for the owner and the
    # other tenant (the resolver says INVALID_ARGUMENT for a malformed id, whoever asks).
    answers = [who.auth("a-basic\n") for who in (team_a, team_b)]
    assert {code for code, _ in answers} == {grpc.StatusCode.INVALID_ARGUMENT}, answers
    assert answers[0][1].details() == answers[1][1].details()
    code, error = team_b.create("team-b", "a-basic", "https://dup.invalid")
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "team-a" not in error.details() and "already" in error.details()

    realm = start_recording(lambda m, p: Answer(200, body=b'{"token": "t"}'), OTHER_HOST)
    bearer = f'Bearer realm="{realm.url}/token",service="r"'
    upstream = start_recording(lambda m, p: Answer(401, {"WWW-Authenticate": bearer}), OTHER_HOST)
    try:
        code, _ = team_a.create("team-a", "port", upstream.url, username="p", password=REALM_PW)
        assert code == grpc.StatusCode.OK
        code, error = team_a.auth("port")
        assert (code, _reason(error)[1]) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "UPSTREAM_REALM_REFUSED",
        )
        assert upstream.seen and realm.seen == [], "another port of the same host got nothing"
    finally:
        realm.stop()
        upstream.stop()
    logs = fleet.server.logs()
    assert "already exists" in logs and "[REDACTED] exists" not in logs
    fleet.assert_clean(responses, REALM_PW, basic_value("p", REALM_PW))
