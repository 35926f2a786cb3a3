"""Where credentials may go: the rules a token realm must pass before we send it anything.

The registry chooses the realm, so a hostile or compromised registry could
point it at a host that collects credentials, or at an internal address
(cloud metadata on 169.254.169.254, a service on 10.x) to turn us into an SSRF
proxy. Three rules, after ggcr, distribution's proxy and regclient:

1. Host: the realm is on the upstream's own host, on the same registrable
   domain (public suffix list: ``auth.docker.io`` for ``registry-1.docker.io``),
   or on the upstream's ``realm_allow_hosts``. For an upstream written through
   the API the port counts too (``host:port`` entries allow-list one port).
   Every redirect hop of a token request is judged by the same rule.
2. Scheme: https, or http only for an upstream that is itself plain http and
   allowed to be (checked in ping.py; redirects never downgrade, see http.py).
3. Address: the egress policy (oci/egress.py) of the upstream, checked here
   before the first byte (``AddressGuard.admit``) and again in every connection
   (``guarded_addresses``, from oci/wire.py), so a name that resolves differently the second
   time (DNS rebinding) still cannot reach a refused address.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import time
from collections.abc import Awaitable, Callable, Iterable

import httpx
from publicsuffixlist import PublicSuffixList

from vregistry_server.errors import RealmRefused
from vregistry_server.model import Settings, Upstream
from vregistry_server.oci.egress import (
    EGRESS_REFUSED,
    OPERATOR_ORIGIN_CLASSES,
    PUBLIC_ONLY,
    AddressClass,
    EgressPolicy,
    EgressScope,
    classify,
    current_scope,
    default_port,
    enter_scope,
    is_ip,
    leave_scope,
    literal_addresses,
)
from vregistry_server.rules import parse_allow_cidrs

__all__ = ["EGRESS_REFUSED", "AddressClass", "classify"]  # re-exported for callers and tests

_PSL = PublicSuffixList()
_UPSTREAM_CLASS_TTL_SECONDS = 60.0

Resolve = Callable[[str, int], Awaitable[list[str]]]


def allowed_classes(upstream_classes: Iterable[AddressClass]) -> frozenset[AddressClass]:
    """Public addresses, plus the non-public classes the upstream itself lives in."""
    return frozenset({AddressClass.PUBLIC, *upstream_classes}) - {AddressClass.FORBIDDEN}


_is_ip = is_ip


def registrable_domain(host: str) -> str | None:
    if _is_ip(host):
        return None
    suffix: str | None = _PSL.privatesuffix(host.lower().rstrip("."))
    return suffix


def host_allowed(upstream: Upstream, realm_host: str, realm_port: int | None = None) -> bool:
    """Rule 1: the upstream's own host, its registrable domain, or allow-listed.

    For an upstream created or changed through the API the port counts too: a realm on
    its host (or registrable domain) but another port is another service, admitted only
    by an allow-list entry (``auth.example.com`` admits any port of that host,
    ``127.0.0.1:5001`` that port only). An operator's upstream keeps the host rule of
    old (a self-hosted registry on :5000 with its token server on :5001): the operator
    chose that host. ``realm_port`` None means the upstream's own port.
    """
    url = httpx.URL(upstream.url)
    upstream_host = (url.host or "").lower()
    upstream_port = url.port or default_port(url.scheme)
    realm_host = realm_host.lower().rstrip(".")
    port = realm_port or upstream_port
    if any(_matches(pattern, realm_host, port) for pattern in upstream.realm_allow_hosts):
        return True
    if upstream.source == "api" and port != upstream_port:
        return False
    if realm_host == upstream_host:
        return True
    domain = registrable_domain(realm_host)
    return domain is not None and domain == registrable_domain(upstream_host)


def _matches(pattern: str, host: str, port: int) -> bool:
    pattern = pattern.lower()
    name, _, wanted = pattern.rpartition(":") if _has_port(pattern) else (pattern, "", "")
    if wanted and int(wanted) != port:
        return False
    return host == name or (name.startswith("*.") and host.endswith(name[1:]))


def _has_port(pattern: str) -> bool:
    head, sep, tail = pattern.rpartition(":")
    return bool(sep) and bool(head) and tail.isdigit()


def check_realm_host(upstream: Upstream, realm: httpx.URL) -> None:
    if not host_allowed(upstream, realm.host, realm.port or default_port(realm.scheme)):
        where = f"{realm.host}:{realm.port or default_port(realm.scheme)}"
        raise RealmRefused(
            "host",
            f"upstream {upstream.name!r} sent a token realm on {where!r}, which is neither its "
            "own host and port nor its registrable domain; no credentials were sent (add the "
            "host, or host:port, to the upstream's realm_allow_hosts if it is trusted)",
            metadata={"upstream_id": upstream.id},
        )


async def system_resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_SCOPES_KEPT = 4096  # upstream ids; far more than any configuration holds


class AddressGuard:
    """Rule 3 and the egress scope of an upstream: which addresses its connections may reach.

    ``scope_for`` builds the EgressScope every request of an operation on the upstream
    runs under (oci/egress.py); ``admit`` checks a realm against it before any byte is
    sent, so a refused realm gets a clear UPSTREAM_REALM_REFUSED.
    """

    def __init__(self, resolve: Resolve = system_resolve, settings: Settings | None = None) -> None:
        self._resolve = resolve
        self._settings = settings or Settings()
        self.policy = EgressPolicy(parse_allow_cidrs(self._settings.egress_allow_cidrs))
        # Per upstream id: its address classes, until when, and for which url.
        self._upstream_classes: dict[str, tuple[frozenset[AddressClass], float, str]] = {}
        self._scopes: dict[str, tuple[Upstream, EgressScope]] = {}

    async def upstream_classes(self, upstream: Upstream) -> frozenset[AddressClass]:
        cached = self._upstream_classes.get(upstream.id)
        if cached is not None and time.monotonic() < cached[1] and cached[2] == upstream.url:
            return cached[0]
        url = httpx.URL(upstream.url)
        host = url.host
        port = url.port or default_port(url.scheme)
        addresses = literal_addresses(host) or await self._resolve(host, port)
        classes = frozenset(classify(a) for a in addresses)
        self._upstream_classes[upstream.id] = (
            classes,
            time.monotonic() + _UPSTREAM_CLASS_TTL_SECONDS,
            upstream.url,
        )
        return classes

    def forget(self, upstream_id: str) -> None:
        """Drop the upstream's cached address classes (its url may point elsewhere now)."""
        self._upstream_classes.pop(upstream_id, None)

    async def scope_for(self, upstream: Upstream) -> EgressScope:
        """Operator upstreams reach their own host wherever it is, and realms and redirects
        in their own address classes; API upstreams reach public addresses only.

        One scope per upstream object (every probe asks; a changed upstream is a new
        object): it depends on nothing else that changes, and holds no state of its own."""
        known = self._scopes.get(upstream.id)
        if known is not None and known[0] is upstream:
            return known[1]
        if len(self._scopes) >= _SCOPES_KEPT:
            self._scopes.clear()
        scope = self._scope(upstream)
        self._scopes[upstream.id] = (upstream, scope)
        return scope

    def _scope(self, upstream: Upstream) -> EgressScope:
        url = httpx.URL(upstream.url)
        settings = self._settings
        operator = upstream.source == "operator"

        async def own_classes() -> frozenset[AddressClass]:
            return await self.upstream_classes(upstream)

        return EgressScope(
            key=f"{upstream.source}:{upstream.id}",
            policy=self.policy,
            origin=(url.host.lower(), url.port or default_port(url.scheme)),
            origin_classes=OPERATOR_ORIGIN_CLASSES if operator else PUBLIC_ONLY,
            elsewhere_classes=PUBLIC_ONLY,
            max_in_flight=settings.max_in_flight_per_upstream,
            max_connections=settings.max_connections_per_upstream,
            hard_deadline_seconds=settings.request_timeout_seconds,
            own_classes=own_classes if operator else None,
        )

    async def admit(self, upstream: Upstream, realm: httpx.URL) -> EgressScope:
        """Check the realm's addresses; returns the scope its connections run under."""
        scope = await self.scope_for(upstream)
        port = realm.port or default_port(realm.scheme)
        try:
            addresses = literal_addresses(realm.host) or await self._resolve(realm.host, port)
        except OSError:
            return scope  # unresolvable: the connection attempt reports it as unreachable
        classes = await scope.classes_for(realm.host, port)
        refused = [a for a in addresses if not scope.permits(a, classes)]
        if refused:
            raise RealmRefused(
                "address",
                f"upstream {upstream.name!r} sent a token realm on {realm.host!r}, which resolves to "
                f"a {classify(refused[0]).value} address this upstream may not reach; "
                "no credentials were sent",
                metadata={"upstream_id": upstream.id},
            )
        return scope


def restrict_connections(allowed: frozenset[AddressClass]) -> contextvars.Token[EgressScope]:
    """Hold the current task's connections to ``allowed`` classes (any host)."""
    return enter_scope(
        EgressScope(key="restricted", origin_classes=allowed, elsewhere_classes=allowed)
    )


def lift_restriction(token: contextvars.Token[EgressScope]) -> None:
    leave_scope(token)


class EgressRefusedError(OSError):
    """A connection the egress policy refused before any socket was opened.

    An OSError, as a refused connection is; oci/http.py turns it into EgressRefused.
    """


async def guarded_addresses(host: str, port: int, resolve: Resolve = system_resolve) -> list[str]:
    """The addresses of ``host`` the current egress scope lets a connection reach.

    Resolved once here and only these are connected to (never a second DNS answer, so
    DNS rebinding cannot slip past); none permitted raises EgressRefusedError.
    """
    scope = current_scope()
    addresses = literal_addresses(host) or await resolve(host, port)
    classes = await scope.classes_for(host, port)
    permitted = [a for a in addresses if scope.permits(a, classes)]
    if not permitted:
        raise EgressRefusedError(scope.refusal(host, port, addresses, classes) or EGRESS_REFUSED)
    return permitted
