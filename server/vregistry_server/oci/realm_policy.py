"""Where credentials may go: the rules a token realm must pass before we send it anything.

The registry chooses the realm, so a hostile or compromised registry could
point it at a host that collects credentials, or at an internal address
(cloud metadata on 169.254.169.254, a service on 10.x) to turn us into an SSRF
proxy. Three rules, after ggcr, distribution's proxy and regclient:

1. Host: the realm is on the upstream's own host, on the same registrable
   domain (public suffix list: ``auth.docker.io`` for ``registry-1.docker.io``),
   or on the upstream's ``realm_allow_hosts``.
2. Scheme: https, or http only for an upstream that is itself plain http and
   allowed to be (checked in ping.py; redirects never downgrade, see http.py).
3. Address: after DNS resolution, every address we connect to is public, or in
   the same class as the upstream's own address (a registry on 127.0.0.1 may
   use a token server on 127.0.0.1, a public one may not). The check runs in
   the connection itself, so a name that resolves differently the second
   time (DNS rebinding) still cannot reach a refused address.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx
from publicsuffixlist import PublicSuffixList

from vregistry_server.errors import RealmRefused
from vregistry_server.model import Upstream

_PSL = PublicSuffixList()
EGRESS_REFUSED = "egress refused"
_UPSTREAM_CLASS_TTL_SECONDS = 60.0

Resolve = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressClass(enum.Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    FORBIDDEN = "forbidden"  # unspecified, multicast, reserved: never a token server


def classify(address: str | IPAddress) -> AddressClass:
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return AddressClass.LOOPBACK
    if ip.is_link_local:
        return AddressClass.LINK_LOCAL
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return AddressClass.FORBIDDEN
    if ip.is_private or ip in _CGNAT:
        return AddressClass.PRIVATE
    return AddressClass.PUBLIC


_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def allowed_classes(upstream_classes: Iterable[AddressClass]) -> frozenset[AddressClass]:
    """Public addresses, plus the non-public classes the upstream itself lives in."""
    return frozenset({AddressClass.PUBLIC, *upstream_classes}) - {AddressClass.FORBIDDEN}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def registrable_domain(host: str) -> str | None:
    if _is_ip(host):
        return None
    suffix: str | None = _PSL.privatesuffix(host.lower().rstrip("."))
    return suffix


def host_allowed(upstream: Upstream, realm_host: str) -> bool:
    """Rule 1: same host, same registrable domain, or allow-listed."""
    upstream_host = (httpx.URL(upstream.url).host or "").lower()
    realm_host = realm_host.lower().rstrip(".")
    if realm_host == upstream_host:
        return True
    for pattern in upstream.realm_allow_hosts:
        pattern = pattern.lower()
        if realm_host == pattern or (pattern.startswith("*.") and realm_host.endswith(pattern[1:])):
            return True
    domain = registrable_domain(realm_host)
    return domain is not None and domain == registrable_domain(upstream_host)


def check_realm_host(upstream: Upstream, realm: httpx.URL) -> None:
    if not host_allowed(upstream, realm.host):
        raise RealmRefused(
            "host",
            f"upstream {upstream.name!r} sent a token realm on {realm.host!r}, which is neither its "
            "own host nor its registrable domain; no credentials were sent (add the host to the "
            "upstream's realm_allow_hosts if it is trusted)",
            metadata={"upstream_id": upstream.id},
        )


async def system_resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# The address classes the current realm request may connect to; None outside one.
_ALLOWED: contextvars.ContextVar[frozenset[AddressClass] | None] = contextvars.ContextVar(
    "vregistry_realm_allowed_classes", default=None
)


class AddressGuard:
    """Rule 3, both before a realm request (clear error) and inside its connections."""

    def __init__(self, resolve: Resolve = system_resolve) -> None:
        self._resolve = resolve
        self._upstream_classes: dict[str, tuple[frozenset[AddressClass], float]] = {}

    async def upstream_classes(self, upstream: Upstream) -> frozenset[AddressClass]:
        cached = self._upstream_classes.get(upstream.id)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        url = httpx.URL(upstream.url)
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = [host] if _is_ip(host) else await self._resolve(host, port)
        classes = frozenset(classify(a) for a in addresses)
        self._upstream_classes[upstream.id] = (
            classes,
            time.monotonic() + _UPSTREAM_CLASS_TTL_SECONDS,
        )
        return classes

    def forget(self, upstream_id: str) -> None:
        """Drop the upstream's cached address classes (its url may point elsewhere now)."""
        self._upstream_classes.pop(upstream_id, None)

    async def admit(self, upstream: Upstream, realm: httpx.URL) -> frozenset[AddressClass]:
        """Check the realm's addresses; returns the classes its connections may use."""
        allowed = allowed_classes(await self.upstream_classes(upstream))
        port = realm.port or (443 if realm.scheme == "https" else 80)
        try:
            addresses = (
                [realm.host] if _is_ip(realm.host) else await self._resolve(realm.host, port)
            )
        except OSError:
            return allowed  # unresolvable: the connection attempt reports it as unreachable
        refused = [a for a in addresses if classify(a) not in allowed]
        if refused:
            raise RealmRefused(
                "address",
                f"upstream {upstream.name!r} sent a token realm on {realm.host!r}, which resolves to "
                f"a {classify(refused[0]).value} address while the upstream is not there; "
                "no credentials were sent",
                metadata={"upstream_id": upstream.id},
            )
        return allowed


def restrict_connections(
    allowed: frozenset[AddressClass],
) -> contextvars.Token[frozenset[AddressClass] | None]:
    return _ALLOWED.set(allowed)


def lift_restriction(token: contextvars.Token[frozenset[AddressClass] | None]) -> None:
    _ALLOWED.reset(token)


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks and connects to the checked address when a realm request is active."""

    def __init__(
        self, inner: httpcore.AsyncNetworkBackend | None = None, resolve: Resolve = system_resolve
    ) -> None:
        self._inner = inner or httpcore.AnyIOBackend()
        self._resolve = resolve

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        allowed = _ALLOWED.get()
        if allowed is None:
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            addresses = [host] if _is_ip(host) else await self._resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        permitted = [a for a in addresses if classify(a) in allowed]
        if not permitted:
            raise httpcore.ConnectError(
                f"{EGRESS_REFUSED}: {host} resolves only to refused addresses"
            )
        last_error: Exception | None = None
        for address in permitted:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for upstreams")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
