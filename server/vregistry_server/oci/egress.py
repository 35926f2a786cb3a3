"""The one egress policy: which addresses an outbound connection may reach.

Every connection the service opens (the discovery ping and its redirects, the
token realm and its redirects, probes and their redirects, TestUpstream) runs
under an ``EgressScope`` and is checked in the connection itself
(oci/wire.py, via realm_policy.guarded_addresses), against the address actually
connected to after DNS, so neither a redirect nor DNS rebinding slips past.

Who wrote the URL decides what it may reach:

- an upstream from the operator's YAML (``source == "operator"``) may connect to
  its own host wherever it is (loopback, private, link-local: the operator chose
  it); its realm and redirect targets may be public or in the same address
  classes as the upstream itself (a 127.0.0.1 registry may use a 127.0.0.1 token
  server, a public one may not send us to 10.x);
- an upstream created or changed through ConfigService (``source == "api"``) may
  reach public addresses only, for its own host, its realm and every redirect.

``settings.egress_allow_cidrs`` adds ranges to both. Cloud-metadata addresses are
reached only when listed exactly (the address, or its /32 or /128), never through
a broad range such as 169.254.0.0/16; unspecified, multicast and reserved
addresses likewise. Public addresses are always allowed.
"""

from __future__ import annotations

import contextvars
import enum
import functools
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from vregistry_server.errors import EgressRefused
from vregistry_server.model import Settings, Upstream
from vregistry_server.rules import IPNetwork, parse_allow_cidrs

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

EGRESS_REFUSED = "egress refused"

# Instance metadata and platform services of the clouds: AWS/GCP/Azure/OpenStack,
# AWS ECS task metadata, AWS IPv6 IMDS, Alibaba, Azure's wire server, Oracle.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "169.254.169.253",
        "fd00:ec2::254",
        "fd00:ec2::253",
        "100.100.100.200",
        "168.63.129.16",
        "192.0.0.192",
    )
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressClass(enum.Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    FORBIDDEN = "forbidden"  # unspecified, multicast, reserved


def canonical(address: str | IPAddress) -> IPAddress:
    """The address a connection really reaches: IPv4 embedded in IPv6 is unwrapped
    (IPv4-mapped ``::ffff:127.0.0.1``, NAT64 ``64:ff9b::7f00:1``, 6to4)."""
    ip = ipaddress.ip_address(address.strip("[]")) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def classify(address: str | IPAddress) -> AddressClass:
    ip = canonical(address)
    if ip.is_loopback:
        return AddressClass.LOOPBACK
    if ip.is_link_local:
        return AddressClass.LINK_LOCAL
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return AddressClass.FORBIDDEN
    if ip.is_private or ip in _CGNAT:
        return AddressClass.PRIVATE
    return AddressClass.PUBLIC


def is_metadata(address: str | IPAddress) -> bool:
    return canonical(address) in METADATA_ADDRESSES


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """The service-wide part: the operator's allow-list of ranges."""

    allow: tuple[IPNetwork, ...] = ()

    def listed(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allow)

    def listed_exactly(self, ip: IPAddress) -> bool:
        return any(
            ip.version == net.version and net.prefixlen == net.max_prefixlen and ip in net
            for net in self.allow
        )

    def permits(self, address: str | IPAddress, classes: frozenset[AddressClass]) -> bool:
        """May a connection reach ``address``, given the non-public ``classes`` it may use?"""
        ip = canonical(address)
        cls = classify(ip)
        if is_metadata(ip) or cls is AddressClass.FORBIDDEN:
            return self.listed_exactly(ip)
        return cls is AddressClass.PUBLIC or cls in classes or self.listed(ip)


@functools.lru_cache(maxsize=4096)
def _permitted(policy: EgressPolicy, address: str, classes: frozenset[AddressClass]) -> bool:
    """``policy.permits`` memoised: every request to an IP-literal upstream asks it again
    (http._check_literal), and parsing and classifying the address was ~5 % of a pooled
    HEAD's CPU (benchmarks/http_clients.py under py-spy). The answer never changes."""
    return policy.permits(address, classes)


OPERATOR_ORIGIN_CLASSES = frozenset(
    {AddressClass.PUBLIC, AddressClass.PRIVATE, AddressClass.LOOPBACK, AddressClass.LINK_LOCAL}
)
PUBLIC_ONLY = frozenset({AddressClass.PUBLIC})


@dataclass(frozen=True, slots=True)
class EgressScope:
    """What the connections of one operation on one upstream may reach, and its budget.

    ``origin`` is the upstream's own (host, port); connections there may use
    ``origin_classes``, every other host (realm, redirect target) ``elsewhere_classes``.
    ``key`` names the upstream's own connection pool and in-flight count.
    """

    key: str
    policy: EgressPolicy = field(default_factory=EgressPolicy)
    origin: tuple[str, int] | None = None
    origin_classes: frozenset[AddressClass] = PUBLIC_ONLY
    elsewhere_classes: frozenset[AddressClass] = PUBLIC_ONLY
    max_in_flight: int = 100
    max_connections: int = 50
    hard_deadline_seconds: float = 10.0
    # For an operator upstream on a host name: its own address classes, resolved only
    # when a realm or redirect elsewhere needs them (the hot path never pays for DNS).
    own_classes: Callable[[], Awaitable[frozenset[AddressClass]]] | None = field(
        default=None, compare=False, repr=False
    )

    def is_origin(self, host: str, port: int) -> bool:
        return self.origin is not None and (host.strip("[]").lower(), port) == self.origin

    async def classes_for(self, host: str, port: int) -> frozenset[AddressClass]:
        if self.is_origin(host, port):
            return self.origin_classes
        if self.own_classes is not None:
            try:
                own = await self.own_classes()
            except OSError:
                return self.elsewhere_classes  # the upstream does not resolve now
            return self.elsewhere_classes | (own - {AddressClass.FORBIDDEN})
        return self.elsewhere_classes

    def permits(self, address: str, classes: frozenset[AddressClass]) -> bool:
        return _permitted(self.policy, address, classes)

    def refusal(
        self, host: str, port: int, addresses: list[str], classes: frozenset[AddressClass]
    ) -> str | None:
        """Why no address of ``host`` may be reached, or None when one may."""
        if any(self.permits(a, classes) for a in addresses):
            return None
        first = addresses[0] if addresses else "?"
        kind = "metadata" if addresses and is_metadata(first) else classify(first).value
        return (
            f"{EGRESS_REFUSED}: {host}:{port} is a {kind} address, which this upstream may not "
            "reach (settings.egress_allow_cidrs lists the ranges it may)"
        )


# Outside any operation (no scope set) a connection gets the strictest rule.
STRICT_SCOPE = EgressScope(key="-")
_SCOPE: contextvars.ContextVar[EgressScope] = contextvars.ContextVar(
    "vregistry_egress_scope", default=STRICT_SCOPE
)


def current_scope() -> EgressScope:
    return _SCOPE.get()


def enter_scope(scope: EgressScope) -> contextvars.Token[EgressScope]:
    return _SCOPE.set(scope)


def leave_scope(token: contextvars.Token[EgressScope]) -> None:
    _SCOPE.reset(token)


def default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def literal_addresses(host: str) -> list[str] | None:
    """The address of an IP-literal host (canonical text), or None for a name."""
    if not is_ip(host):
        return None
    return [str(canonical(host))]


def check_egress_literal(upstream: Upstream, settings: Settings) -> None:
    """At create/update through ConfigService: an upstream whose host is an IP literal the
    egress policy refuses is refused at once (FAILED_PRECONDITION, EGRESS_REFUSED: it
    depends on settings.egress_allow_cidrs, not on the request alone). Host names are
    judged after DNS, at connect time."""
    if upstream.source != "api":
        return
    url = httpx.URL(upstream.url)
    addresses = literal_addresses(url.host)
    if addresses is None:
        return
    policy = EgressPolicy(parse_allow_cidrs(settings.egress_allow_cidrs))
    scope = EgressScope(key="check", policy=policy)
    refusal = scope.refusal(url.host, url.port or default_port(url.scheme), addresses, PUBLIC_ONLY)
    if refusal is not None:
        raise EgressRefused(
            f"field 'url': {refusal}; nothing was sent", metadata={"upstream_id": upstream.id}
        )
