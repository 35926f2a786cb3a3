"""Where credentials may go: realm host, scheme and address rules (issue: realm safety)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.support.service import Service
from vregistry_server.errors import UpstreamProtocolError
from vregistry_server.model import Upstream
from vregistry_server.oci.challenge import parse_challenges
from vregistry_server.oci.egress import EgressScope
from vregistry_server.oci.http import make_client
from vregistry_server.oci.ping import discovery_from_challenges
from vregistry_server.oci.realm_policy import (
    AddressClass,
    AddressGuard,
    RealmRefused,
    classify,
    host_allowed,
)

StartService = Callable[..., Awaitable[Service]]


def _upstream(url: str, *allow: str) -> Upstream:
    return Upstream(
        id="u", name="U", url=url, realm_allow_hosts=allow, allow_http=url.startswith("http:")
    )


@pytest.mark.parametrize(
    ("upstream", "realm_host", "allowed"),
    [
        (
            "https://registry-1.docker.io",
            "auth.docker.io",
            True,
        ),  # Docker Hub: same registrable domain
        ("https://ghcr.io", "ghcr.io", True),
        ("https://quay.io", "quay.io", True),
        ("https://myregistry.azurecr.io", "myregistry.azurecr.io", True),
        ("https://harbor.corp.example.com", "harbor.corp.example.com", True),
        ("https://registry-1.docker.io", "auth.docker.io.evil.com", False),
        ("https://registry-1.docker.io", "evil.com", False),
        ("https://alice.github.io", "mallory.github.io", False),  # github.io is a public suffix
        ("https://registry.example.co.uk", "auth.example.co.uk", True),
        ("https://registry.example.co.uk", "other.co.uk", False),
        ("http://127.0.0.1:5000", "127.0.0.1", True),
        ("http://127.0.0.1:5000", "127.0.0.2", False),  # IP literals have no registrable domain
        ("http://127.0.0.1:5000", "localhost", False),
        ("https://REGISTRY.Example.com", "auth.example.com.", True),
    ],
)
def test_realm_host_rule(upstream: str, realm_host: str, allowed: bool) -> None:
    assert host_allowed(_upstream(upstream), realm_host) is allowed


def test_allow_list_exact_and_wildcard() -> None:
    upstream = _upstream(
        "https://registry.example.com", "login.partner.net", "*.tokens.example.org"
    )
    assert host_allowed(upstream, "login.partner.net")
    assert host_allowed(upstream, "eu.tokens.example.org")
    assert not host_allowed(upstream, "tokens.example.org.evil.net")
    assert not host_allowed(upstream, "partner.net")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("8.8.8.8", AddressClass.PUBLIC),
        ("2606:4700:4700::1111", AddressClass.PUBLIC),
        ("10.1.2.3", AddressClass.PRIVATE),
        ("172.16.0.1", AddressClass.PRIVATE),
        ("192.168.1.1", AddressClass.PRIVATE),
        ("100.64.0.1", AddressClass.PRIVATE),
        ("fd00::1", AddressClass.PRIVATE),
        ("127.0.0.1", AddressClass.LOOPBACK),
        ("::1", AddressClass.LOOPBACK),
        ("::ffff:127.0.0.1", AddressClass.LOOPBACK),
        ("169.254.169.254", AddressClass.LINK_LOCAL),
        ("fe80::1", AddressClass.LINK_LOCAL),
        ("0.0.0.0", AddressClass.FORBIDDEN),
        ("224.0.0.1", AddressClass.FORBIDDEN),
    ],
)
def test_address_classes(address: str, expected: AddressClass) -> None:
    assert classify(address) is expected


def _resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"unknown host {host}")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("upstream_addresses", "realm_addresses", "allowed"),
    [
        (["93.184.216.34"], ["93.184.216.35"], True),
        (["93.184.216.34"], ["10.0.0.5"], False),  # DNS-based SSRF into the private network
        (["93.184.216.34"], ["169.254.169.254"], False),  # cloud metadata
        (["93.184.216.34"], ["127.0.0.1"], False),
        (["93.184.216.34"], ["93.184.216.35", "10.0.0.5"], False),  # any refused address refuses
        (["10.0.0.4"], ["10.0.0.5"], True),  # a private registry may use a private token server
        (["127.0.0.1"], ["169.254.169.254"], False),  # but not a link-local one
        (["127.0.0.1"], ["127.0.0.1"], True),
    ],
)
async def test_address_rule_after_dns_resolution(
    upstream_addresses: list[str], realm_addresses: list[str], allowed: bool
) -> None:
    guard = AddressGuard(
        _resolver({"registry.test": upstream_addresses, "auth.registry.test": realm_addresses})
    )
    upstream = _upstream("https://registry.test")
    realm = httpx.URL("https://auth.registry.test/token")
    if allowed:
        assert AddressClass.PUBLIC in (await guard.admit(upstream, realm)).elsewhere_classes
    else:
        with pytest.raises(RealmRefused, match="no credentials were sent"):
            await guard.admit(upstream, realm)


async def test_every_upstream_has_its_own_pool() -> None:
    # One pool per upstream (oci/http.py UpstreamClient, oci/wire.py Pool), every new
    # connection of each judged by guarded_addresses (tests/unit/test_egress_rules.py);
    # the wire has no cookie jar and reads nothing from the environment.
    async with make_client(connect_timeout=1, request_timeout=1) as client:
        operator = client.wire.pool_for(EgressScope(key="operator:a"))
        api = client.wire.pool_for(EgressScope(key="api:b"))
        assert operator is not api
        assert client.wire.pool_for(EgressScope(key="operator:a")) is operator


def test_plain_http_realm_refused_for_https_upstream() -> None:
    upstream = Upstream(id="u", name="U", url="https://registry.example.com")
    challenges = parse_challenges(['Bearer realm="http://registry.example.com/token",service="s"'])
    with pytest.raises(UpstreamProtocolError, match="plain-http realm"):
        discovery_from_challenges(upstream, challenges)
    with pytest.raises(UpstreamProtocolError, match="not an absolute http"):
        discovery_from_challenges(upstream, parse_challenges(['Bearer realm="file:///etc/passwd"']))


# --------------------------------------------------------------------------- through gRPC
# The upstream below is a stand-in server: no real registry advertises a hostile realm.


def test_redirect_rules() -> None:
    from vregistry_server.oci.http import _check_redirect

    with pytest.raises(UpstreamProtocolError, match="downgrades https to http"):
        _check_redirect(
            httpx.URL("https://auth.example.com/token"), httpx.URL("http://auth.example.com/token")
        )
    with pytest.raises(UpstreamProtocolError, match="non-http"):
        _check_redirect(
            httpx.URL("https://auth.example.com/token"), httpx.URL("file:///etc/passwd")
        )
    _check_redirect(httpx.URL("http://127.0.0.1/token"), httpx.URL("https://127.0.0.1/token"))
