"""The rules every upstream and registry obeys, wherever it comes from: one set, one wording.

The YAML loader (config.py) and the admin API (admin/manager.py) both build a
model object and pass it through ``validate_upstream`` / ``validate_registry``;
a broken rule raises ``FieldError`` naming the model field. Each caller only
adds where the value came from ("examples/config.yaml: upstreams[0] (id 'hub')"
or the request field, see ``admin.records.REQUEST_FIELD_NAMES``), so the two
never drift apart in what they accept or in what they say.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import get_args
from urllib.parse import urlsplit

from vregistry_server.model import (
    MAX_CACHE_VALIDITY_HOURS,
    Credentials,
    Registry,
    TokenFlow,
    Upstream,
)

# fullmatch, not match with "$": "$" also matches before a trailing newline.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_NAME = 255
MAX_DESCRIPTION = 1024
MAX_URL = 255
MAX_USERNAME = 255
MAX_PASSWORD = 4096
MAX_CLIENT_ID = 255
MAX_REALM_ALLOW_HOSTS = 32
TOKEN_FLOWS: tuple[str, ...] = get_args(TokenFlow)
# The token actions of the distribution spec ("*" is every action); oci/paths.py checks
# requests against the same four.
TOKEN_ACTIONS: tuple[str, ...] = ("pull", "push", "delete", "*")


class FieldError(ValueError):
    """A value breaks a rule; ``field`` is the model field's name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field '{field}': {message}")
        self.field = field
        self.message = message


def check_id(field: str, value: str) -> str:
    if not value:
        raise FieldError(field, "is required")
    if not ID_PATTERN.fullmatch(value):
        raise FieldError(
            field,
            f"{value[:80]!r} is not a valid id: 1 to 63 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit",
        )
    return value


def check_text(field: str, value: str, *, required: bool, limit: int) -> str:
    if required and not value.strip():
        raise FieldError(field, "is required")
    if len(value) > limit:
        raise FieldError(field, f"is {len(value)} characters, at most {limit} allowed")
    return value


def normalize_url(value: str, *, allow_http: bool) -> str:
    """Check an upstream URL and drop a trailing "/" and "/v2", as GitLab does."""
    check_text("url", value, required=True, limit=MAX_URL)
    parts = urlsplit(value.strip())
    if parts.scheme == "http" and not allow_http:
        raise FieldError(
            "url", "must use https (set allow_http only for a plain-http local registry)"
        )
    if parts.scheme not in {"http", "https"}:
        raise FieldError("url", "must be an http(s) URL such as https://registry-1.docker.io")
    if not parts.hostname:
        raise FieldError("url", "has no host")
    if non_canonical_numeric_host(parts.hostname):
        raise FieldError(
            "url",
            f"host {parts.hostname[:80]!r} is a numeric address in a non-canonical form; write "
            "an IPv4 address as four decimal numbers (127.0.0.1), or use a host name",
        )
    if parts.username is not None or parts.password is not None:
        raise FieldError("url", "must not carry credentials; give a username and password")
    if parts.query or parts.fragment:
        raise FieldError("url", "must not have a query string or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise FieldError("url", "has an invalid port") from None
    base = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
    if base.endswith("/v2"):
        base = base[: -len("/v2")].rstrip("/")
    return base


def non_canonical_numeric_host(host: str) -> bool:
    """A host the C resolver reads as an IPv4 address though it is not written as one:
    decimal ``2130706433``, octal ``0177.0.0.1``, hex ``0x7f000001``, short ``127.1``, a
    numeric last label, or an IPv4 address wrapped in IPv6 (``::ffff:127.0.0.1``)."""
    bare = host.strip("[]").rstrip(".").lower()
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv4Address):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        return ip.ipv4_mapped is not None or ip.sixtofour is not None
    last = bare.rsplit(".", 1)[-1]
    if last.isdigit() or (last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:])):
        return True
    try:
        socket.inet_aton(bare)
    except OSError:
        return False
    return True


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow_cidrs(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """settings.egress_allow_cidrs; a bare address is its /32 or /128. Raises ValueError."""
    networks: list[IPNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=True))
        except ValueError:
            raise ValueError(
                f"{value[:80]!r} is not a CIDR such as 10.0.0.0/8 or 127.0.0.1/32"
                " (host bits must be zero)"
            ) from None
    return tuple(networks)


def check_cache_validity(value: int) -> int:
    if not 0 <= value <= MAX_CACHE_VALIDITY_HOURS:
        raise FieldError(
            "cache_validity_hours",
            f"{value} is out of range: 0 to {MAX_CACHE_VALIDITY_HOURS} (0 means never re-check)",
        )
    return value


def check_token_flow(value: str) -> TokenFlow:
    if value not in TOKEN_FLOWS:
        raise FieldError("token_flow", f"must be one of {', '.join(TOKEN_FLOWS)}")
    return value  # type: ignore[return-value]


def check_realm_allow_hosts(hosts: tuple[str, ...]) -> tuple[str, ...]:
    if len(hosts) > MAX_REALM_ALLOW_HOSTS:
        raise FieldError(
            "realm_allow_hosts", f"{len(hosts)} hosts, at most {MAX_REALM_ALLOW_HOSTS} allowed"
        )
    for host in hosts:
        bare = host.removeprefix("*.")
        name, sep, port = bare.rpartition(":")
        if sep and port.isdigit() and 0 < int(port) < 65536:
            bare = name  # host:port admits that port only (the realm rule compares ports)
        if not bare or any(c in bare for c in "/:@?# *") or bare != bare.strip("."):
            raise FieldError(
                "realm_allow_hosts",
                f"{host[:80]!r} must be a host name such as auth.example.com, *.example.com"
                " or auth.example.com:5001",
            )
    return hosts


def check_allowed_actions(actions: tuple[str, ...]) -> tuple[str, ...]:
    """At least one action, each one of pull, push, delete or "*", none twice."""
    if not actions:
        raise FieldError("allowed_actions", "give at least one action (default: pull)")
    for action in actions:
        if action not in TOKEN_ACTIONS:
            raise FieldError(
                "allowed_actions",
                f"{action[:40]!r} is not an action; allowed: {', '.join(TOKEN_ACTIONS)}",
            )
    if len(set(actions)) != len(actions):
        raise FieldError("allowed_actions", "an action is listed twice")
    return actions


def check_credentials(username: str, password: str) -> Credentials | None:
    """Both or neither; both empty means no credentials."""
    if not username and not password:
        return None
    if not username:
        raise FieldError(
            "username", "a password is given without a username (give both or neither)"
        )
    if not password:
        raise FieldError(
            "password", "a username is given without a password (give both or neither)"
        )
    check_text("username", username, required=True, limit=MAX_USERNAME)
    if len(password) > MAX_PASSWORD:
        raise FieldError("password", f"is longer than {MAX_PASSWORD} characters")
    if any(ch in username for ch in ":\r\n"):
        raise FieldError("username", "must not contain ':' or line breaks")
    return Credentials(username=username, password=password)


def validate_upstream(upstream: Upstream) -> Upstream:
    """Check every field; returns the upstream with its URL normalized."""
    check_id("id", upstream.id)
    check_id("group", upstream.group)
    check_text("name", upstream.name, required=True, limit=MAX_NAME)
    check_text("description", upstream.description, required=False, limit=MAX_DESCRIPTION)
    check_text("client_id", upstream.client_id, required=True, limit=MAX_CLIENT_ID)
    check_cache_validity(upstream.cache_validity_hours)
    check_token_flow(upstream.token_flow)
    check_realm_allow_hosts(upstream.realm_allow_hosts)
    check_allowed_actions(upstream.allowed_actions)
    if upstream.credentials is not None:
        check_credentials(upstream.credentials.username, upstream.credentials.password)
    url = normalize_url(upstream.url, allow_http=upstream.allow_http)
    return upstream if url == upstream.url else dataclasses.replace(upstream, url=url)


def validate_registry_fields(registry_id: str, name: str, description: str) -> None:
    """The rules of a registry's own fields (its members are checked where they are set)."""
    check_id("id", registry_id)
    check_text("name", name, required=True, limit=MAX_NAME)
    check_text("description", description, required=False, limit=MAX_DESCRIPTION)


def validate_registry(registry: Registry) -> Registry:
    validate_registry_fields(registry.id, registry.name, registry.description)
    return registry
