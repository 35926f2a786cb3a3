"""Groups as a security boundary: what the caller of the call in progress may reach.

The interceptor (rpc/interceptors.py) puts the caller in a context variable;
the servicers ask here before any work. A caller limited to some groups gets
the same PERMISSION_DENIED, with the same message, for a resource of another
group and for one that exists nowhere, so the answer is no existence oracle
(AIP-211); a ``*`` caller (and every caller when auth is off) is not checked
here and gets NOT_FOUND for unknown ids as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from vregistry_server.admin.records import parse_name, parse_parent
from vregistry_server.errors import PermissionDenied
from vregistry_server.rpc.interceptors import current_caller
from vregistry_server.rules import ID_PATTERN

T = TypeVar("T")


class _Grouped(Protocol):
    @property
    def group(self) -> str: ...


def may_use(group: str) -> bool:
    return current_caller().may_use(group)


def _denied(what: str) -> PermissionDenied:
    caller = current_caller()
    # One shape for "of another group" and "does not exist": nothing tells them apart.
    return PermissionDenied(
        f"caller {caller.name!r} has no access to {what} (not in its groups, or it does not exist)"
    )


def require_id(kind: str, resource_id: str, known: Mapping[str, _Grouped]) -> None:
    """An upstream or registry by id (UpstreamService): in the caller's groups, or denied."""
    caller = current_caller()
    if caller.all_groups or not ID_PATTERN.fullmatch(resource_id):
        return  # a malformed id is INVALID_ARGUMENT from the resolver, the same for everyone
    found = known.get(resource_id)
    if found is None or not caller.may_use(found.group):
        raise _denied(f"{kind} {resource_id!r}")


def require_group(kind: str, resource_id: str, group: str) -> None:
    """The group of what a call actually used (checked again after the work: the
    configuration may have changed while it ran)."""
    if not may_use(group):
        raise _denied(f"{kind} {resource_id!r}")


def require_name(field_name: str, name: str, collection: str) -> None:
    """``groups/{group}/{collection}/{id}`` (ConfigService): the group must be the caller's."""
    group, _ = parse_name(field_name, name, collection)
    if not may_use(group):
        raise _denied(name)


def require_parent(field_name: str, parent: str, *, allow_wildcard: bool = False) -> None:
    """``groups/{group}``; ``groups/-`` passes (the listing is filtered to the caller's groups)."""
    group = parse_parent(field_name, parent, allow_wildcard=allow_wildcard)
    if group != "-" and not may_use(group):
        raise _denied(parent)


async def checked(
    check: Callable[[], None],
    work: Callable[[], Awaitable[T]],
    after: Callable[[T], None] | None = None,
) -> T:
    """Run ``check`` and only then start ``work``; ``after`` sees the result before the caller
    does (all inside rpc/boundary.handle, so a refusal becomes a status like every other error)."""
    check()
    result = await work()
    if after is not None:
        after(result)
    return result
