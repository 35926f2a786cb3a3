"""The egress policy as pure rules (oci/egress.py, rules.py) and in the guarded backend.

The connection tests give the wire (oci/wire.py) an opener that only counts: a refused
address must never reach it, so no socket is ever opened for a private, link-local or
metadata address.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx
import pytest
from yarl import URL

from tests.support.mock_http import MockClient
from vregistry_server.admin.records import UpstreamRecord, upstream_from_doc, upstream_to_doc
from vregistry_server.config import ConfigError, build_config
from vregistry_server.model import Scheme, Settings, Upstream
from vregistry_server.oci import http, wire
from vregistry_server.oci.auth import Authenticator
from vregistry_server.oci.egress import (
    EGRESS_REFUSED,
    OPERATOR_ORIGIN_CLASSES,
    PUBLIC_ONLY,
    AddressClass,
    EgressPolicy,
    EgressScope,
    canonical,
    classify,
    current_scope,
    enter_scope,
    is_metadata,
    leave_scope,
)
from vregistry_server.oci.http import Budget, UpstreamClient
from vregistry_server.oci.realm_policy import AddressGuard, EgressRefusedError, host_allowed
from vregistry_server.oci.token_cache import MemoryTokenCache
from vregistry_server.rules import (
    FieldError,
    check_realm_allow_hosts,
    normalize_url,
    parse_allow_cidrs,
)

# --------------------------------------------------------------------------- literals


@pytest.mark.parametrize(
    ("written", "canonical_form", "expected"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1", AddressClass.LOOPBACK),  # IPv4-mapped
        ("::ffff:169.254.169.254", "169.254.169.254", AddressClass.LINK_LOCAL),
        ("64:ff9b::a00:5", "10.0.0.5", AddressClass.PRIVATE),  # NAT64
        ("2002:7f00:1::", "127.0.0.1", AddressClass.LOOPBACK),  # 6to4
        ("[::1]", "::1", AddressClass.LOOPBACK),
        ("0.0.0.0", "0.0.0.0", AddressClass.FORBIDDEN),
        ("::", "::", AddressClass.FORBIDDEN),
    ],
)
def test_embedded_ipv4_is_unwrapped_before_classifying(
    written: str, canonical_form: str, expected: AddressClass
) -> None:
    assert str(canonical(written)) == canonical_form
    assert classify(written) is expected


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",  # decimal 127.0.0.1
        "0177.0.0.1",  # octal
        "0x7f000001",  # hex
        "0x7f.0.0.1",
        "127.1",  # short form
        "017700000001",
        "[::ffff:127.0.0.1]",
        "[::ffff:a9fe:a9fe]",  # 169.254.169.254, mapped
        "[2002:a9fe:a9fe::]",  # 6to4 of 169.254.169.254
        "registry.123",  # a numeric last label is an IPv4 address to a URL parser
    ],
)
def test_non_canonical_numeric_hosts_are_refused_at_validation(host: str) -> None:
    with pytest.raises(FieldError, match="non-canonical"):
        normalize_url(f"http://{host}:5000", allow_http=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5000",
        "http://[::1]:5000",
        "https://registry-1.docker.io",
        "http://localhost",
    ],
)
def test_canonical_hosts_still_validate(url: str) -> None:
    assert normalize_url(url, allow_http=True) == url


# --------------------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16"],
)
def test_metadata_addresses_only_when_listed_exactly(address: str) -> None:
    assert is_metadata(address)
    broad = EgressPolicy(
        parse_allow_cidrs(["169.254.0.0/16", "100.64.0.0/10", "fd00::/8", "168.63.0.0/16"])
    )
    everything = frozenset(AddressClass)
    assert not broad.permits(address, everything), "a broad range never opens metadata"
    exact = EgressPolicy(parse_allow_cidrs([address]))
    assert exact.permits(address, PUBLIC_ONLY)
    single = "/128" if ":" in address else "/32"
    assert EgressPolicy(parse_allow_cidrs([address + single])).permits(address, PUBLIC_ONLY)


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.0.0.2", "::1", "10.0.0.5", "192.168.1.1", "172.16.0.1",
                "100.64.0.1", "fd12::1", "169.254.1.1", "fe80::1", "0.0.0.0", "224.0.0.1"],
)  # fmt: skip
def test_api_scope_refuses_every_non_public_class(address: str) -> None:
    policy = EgressPolicy()
    assert not policy.permits(address, PUBLIC_ONLY)
    assert policy.permits("93.184.216.34", PUBLIC_ONLY)
    assert policy.permits("2606:4700:4700::1111", PUBLIC_ONLY)


def test_allow_cidrs_open_their_range_only() -> None:
    policy = EgressPolicy(parse_allow_cidrs(["127.0.0.0/8", "10.1.0.0/16"]))
    assert policy.permits("127.0.0.2", PUBLIC_ONLY)
    assert policy.permits("::ffff:127.0.0.1", PUBLIC_ONLY)
    assert policy.permits("10.1.2.3", PUBLIC_ONLY)
    assert not policy.permits("10.2.0.1", PUBLIC_ONLY)
    assert not policy.permits("::1", PUBLIC_ONLY), "an IPv4 range does not open IPv6 loopback"
    assert not policy.permits("0.0.0.0", frozenset(AddressClass)), "unspecified: exact only"


def test_settings_egress_allow_cidrs_are_validated() -> None:
    config = build_config({"settings": {"egress_allow_cidrs": ["127.0.0.0/8", "::1"]}})
    assert config.settings.egress_allow_cidrs == ("127.0.0.0/8", "::1")
    for bad in (["10.0.0.1/8"], ["not-a-range"], ["10.0.0.0/33"]):
        with pytest.raises(ConfigError, match="egress_allow_cidrs"):
            build_config({"settings": {"egress_allow_cidrs": bad}})
    assert Settings().max_in_flight_per_upstream == 100


async def test_operator_and_api_scopes_differ() -> None:
    guard = AddressGuard(settings=Settings())
    operator = Upstream(id="u", name="U", url="http://127.0.0.1:5000", allow_http=True)
    api = Upstream(id="u", name="U", url="http://127.0.0.1:5000", allow_http=True, source="api")
    op_scope, api_scope = await guard.scope_for(operator), await guard.scope_for(api)
    assert op_scope.key != api_scope.key, "never one pool for both"
    assert await op_scope.classes_for("127.0.0.1", 5000) == OPERATOR_ORIGIN_CLASSES
    # Its realm on another loopback port: the upstream's own class (loopback) and public.
    assert await op_scope.classes_for("127.0.0.1", 6000) == {
        AddressClass.PUBLIC,
        AddressClass.LOOPBACK,
    }
    assert await api_scope.classes_for("127.0.0.1", 5000) == PUBLIC_ONLY
    assert await api_scope.classes_for("127.0.0.1", 6000) == PUBLIC_ONLY


# --------------------------------------------------------------------------- in the connection


class CountingOpener:
    """In place of ``wire.open_connection``: records the addresses the wire dialled (after
    the guard's ``guarded_addresses``) and opens nothing."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    async def __call__(self, factory: Any, address: str, port: int, **kwargs: Any) -> Any:
        self.connects.append((address, port))
        raise OSError("counting opener: no socket opened")


@pytest.fixture
def opener(monkeypatch: pytest.MonkeyPatch) -> CountingOpener:
    counting = CountingOpener()
    monkeypatch.setattr(wire, "open_connection", counting)
    return counting


async def _connect(host: str, port: int, resolve: Any = None) -> None:
    """A request through the wire's own connection path (literals and names alike)."""
    netloc = f"[{host}]" if ":" in host else host
    kwargs = {"resolve": resolve} if resolve is not None else {}
    client = wire.Wire(connect_timeout=1, tls=http.tls_context(), max_pools=4, **kwargs)
    request = wire.Request("GET", URL(f"http://{netloc}:{port}/"), {}, None, True, 1024)
    try:
        await client.request(request, seconds=1, scope=current_scope())
    finally:
        client.close()


def _resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


REFUSED_TARGETS = [
    "127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.5", "192.168.0.10", "169.254.169.254",
    "::ffff:169.254.169.254", "fd00:ec2::254", "100.100.100.200", "0.0.0.0", "64:ff9b::a9fe:a9fe",
    "meta.test", "private.test", "rebind.test",
]  # fmt: skip


@pytest.mark.parametrize("host", REFUSED_TARGETS)
async def test_the_wire_opens_no_socket_for_a_refused_address(
    host: str, opener: CountingOpener
) -> None:
    resolve = _resolver(
        {
            "meta.test": ["169.254.169.254"],
            "private.test": ["10.0.0.7"],
            "rebind.test": ["127.0.0.1", "::1"],
        }
    )
    token = enter_scope(EgressScope(key="api:x", origin=("registry.example.com", 443)))
    try:
        with pytest.raises(EgressRefusedError) as caught:
            await _connect(host, 80, resolve)
    finally:
        leave_scope(token)
    assert EGRESS_REFUSED in str(caught.value)
    assert opener.connects == []


async def test_the_wire_connects_to_the_checked_public_address_only(
    opener: CountingOpener,
) -> None:
    resolve = _resolver({"mixed.test": ["10.0.0.5", "93.184.216.34"]})
    token = enter_scope(EgressScope(key="api:x"))
    try:
        with pytest.raises(wire.ConnectFailed) as caught:
            await _connect("mixed.test", 443, resolve)
    finally:
        leave_scope(token)
    assert "counting opener" in str(caught.value.os_error)
    assert opener.connects == [("93.184.216.34", 443)]


async def test_outside_any_operation_the_strict_scope_applies(opener: CountingOpener) -> None:
    with pytest.raises(EgressRefusedError):
        await _connect("127.0.0.1", 80)
    assert opener.connects == []


# --------------------------------------------------------------------------- the realm rule's port


def test_realm_rule_compares_the_port_for_api_upstreams() -> None:
    api = Upstream(id="u", name="U", url="https://registry.example.com", source="api")
    assert host_allowed(api, "registry.example.com", 443)
    assert not host_allowed(api, "registry.example.com", 8443), "another port: another service"
    assert host_allowed(api, "auth.example.com", 443)  # the registrable domain, same port
    assert not host_allowed(api, "auth.example.com", 8443)
    with_port = dataclasses.replace(api, realm_allow_hosts=("registry.example.com:8443",))
    assert host_allowed(with_port, "registry.example.com", 8443)
    assert not host_allowed(with_port, "registry.example.com", 9443)
    any_port = dataclasses.replace(api, realm_allow_hosts=("auth.partner.net", "*.tokens.net"))
    assert host_allowed(any_port, "auth.partner.net", 5001)
    assert host_allowed(any_port, "eu.tokens.net", 8443)
    # The operator's own host keeps any port (a registry on :5000, its token server on :5001).
    assert host_allowed(dataclasses.replace(api, source="operator"), "registry.example.com", 8443)


def test_realm_allow_hosts_accept_a_port() -> None:
    assert check_realm_allow_hosts(("auth.example.com:5001", "127.0.0.1:5001", "*.a.net:443"))
    for bad in ("auth.example.com:0", "auth.example.com:70000", "a:b:c", "auth:", ":5001"):
        with pytest.raises(FieldError, match="realm_allow_hosts"):
            check_realm_allow_hosts((bad,))


# --------------------------------------------------------------------------- discovery identity


async def test_a_ping_in_flight_during_a_url_change_is_not_stored_for_the_new_url() -> None:
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "old.example":
            await release.wait()
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="old"'})
        return httpx.Response(200)

    async with MockClient(handler) as client:
        auth = Authenticator(client, MemoryTokenCache(), Settings())
        old = Upstream(id="u", name="U", url="https://old.example")
        new = dataclasses.replace(old, url="https://new.example")
        first = asyncio.create_task(auth.discover(old, Budget.start(5)))
        await asyncio.sleep(0.05)
        # The new url does not join the old url's flight, nor wait for it.
        assert (await auth.discover(new, Budget.start(5))).scheme is Scheme.NONE
        release.set()
        assert (await first).scheme is Scheme.BASIC
        # The old url's answer, stored when it came, is not the new url's.
        assert (await auth.discover(new, Budget.start(5))).scheme is Scheme.NONE
        assert (await auth.discover(old, Budget.start(5))).scheme is Scheme.BASIC


async def test_connection_pools_are_one_per_upstream_and_bounded() -> None:
    client = UpstreamClient(connect_timeout=1, request_timeout=1, max_pools=2)
    first = client.wire.pool_for(EgressScope(key="api:a", max_connections=3))
    assert first.scope.max_connections == 3  # settings.max_connections_per_upstream
    client.wire.pool_for(EgressScope(key="api:b"))
    client.wire.pool_for(EgressScope(key="api:c"))
    assert client.wire.pool_for(EgressScope(key="api:b")) is not first
    assert list(client.wire.pools) == ["api:c", "api:b"], "the least recently used idle pool went"
    await client.aclose()
    assert not client.wire.pools


def test_a_stored_document_without_source_reads_fail_closed() -> None:
    record = UpstreamRecord(upstream=Upstream(id="old", name="Old", url="http://10.0.0.5:5000"))
    doc = upstream_to_doc(record, None)
    assert doc["source"] == "operator"
    del doc["source"]  # written before the field existed
    assert upstream_from_doc(doc, None).upstream.source == "api"
