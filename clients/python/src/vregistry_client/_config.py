"""ConfigClient: every ConfigService RPC, with async-iterator paging, etags passed through and
field masks from plain field names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from vregistry_client._calls import DEFAULT, Calls, Timeout, Token
from vregistry_client.v1 import config_service_pb2 as cpb
from vregistry_client.v1 import config_service_pb2_grpc as cpb_grpc

DEFAULT_PAGE_SIZE = 100
_Item = TypeVar("_Item")
# Bounds a listing whose server kept handing out page tokens (a bug, not a big group).
_MAX_PAGES = 10_000


def group_name(group: str) -> str:
    """``groups/{group}``, the parent of upstreams and registries (``-``: every group)."""
    return f"groups/{group}"


def upstream_name(group: str, upstream_id: str) -> str:
    return f"{group_name(group)}/upstreams/{upstream_id}"


def registry_name(group: str, registry_id: str) -> str:
    return f"{group_name(group)}/registries/{registry_id}"


def field_mask(message: type[Message], fields: Iterable[str]) -> field_mask_pb2.FieldMask:
    """A mask of plain field names of ``message`` (``["display_name", "url"]``); ``["*"]``
    means every field; no names means the fields set in the request. Raises ValueError for a
    name the message does not have, before any call."""
    paths = list(fields)
    if paths != ["*"]:
        known = message.DESCRIPTOR.fields_by_name
        unknown = [path for path in paths if path not in known]
        if unknown:
            raise ValueError(f"{message.DESCRIPTOR.name} has no field(s) {', '.join(unknown)}")
    return field_mask_pb2.FieldMask(paths=paths)


class ConfigClient:
    """The ConfigService (role admin): upstreams, registries and their members.

    Get it as ``VRegistryClient.config``; it shares the channel, the default deadline, the
    caller token and the retry policy. Each method takes ``timeout=`` and ``token=`` for that
    call. A write that sends a stale ``etag`` raises VRegistryError with code ABORTED and
    ``reason_code == ErrorReason.ETAG_MISMATCH``.
    """

    def __init__(self, channel: grpc.aio.Channel, calls: Calls) -> None:
        self._calls = calls
        self._stub = cpb_grpc.ConfigServiceStub(channel)

    @property
    def stub(self) -> cpb_grpc.ConfigServiceAsyncStub:
        """The generated stub, for calls with options this wrapper does not expose."""
        return self._stub

    # --- upstreams ---------------------------------------------------------------------

    async def create_upstream(
        self,
        group: str,
        upstream_id: str,
        upstream: cpb.UpstreamConfig,
        *,
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> cpb.UpstreamConfig:
        """Create ``groups/{group}/upstreams/{upstream_id}``. ``username``/``password`` are
        write-only: the reply has ``has_credentials`` instead."""
        request = cpb.CreateUpstreamRequest(
            parent=group_name(group), upstream_id=upstream_id, upstream=upstream
        )
        reply = await self._calls.unary(self.stub.CreateUpstream, request, timeout, token)
        return reply.upstream

    async def get_upstream(
        self, name: str, *, timeout: Timeout = DEFAULT, token: Token = DEFAULT
    ) -> cpb.UpstreamConfig:
        request = cpb.GetUpstreamRequest(name=name)
        reply = await self._calls.unary(self.stub.GetUpstream, request, timeout, token)
        return reply.upstream

    async def list_upstreams(
        self,
        group: str,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> AsyncIterator[cpb.UpstreamConfig]:
        """Every upstream of ``group`` (``-``: every group the caller may see), fetched
        ``page_size`` at a time as the iteration goes (``async for``)."""

        async def page(page_token: str) -> tuple[Sequence[cpb.UpstreamConfig], str]:
            request = cpb.ListUpstreamsRequest(
                parent=group_name(group), page_size=page_size, page_token=page_token
            )
            reply = await self._calls.unary(self.stub.ListUpstreams, request, timeout, token)
            return reply.upstreams, reply.next_page_token

        async for upstream in _pages(page):
            yield upstream

    async def update_upstream(
        self,
        upstream: cpb.UpstreamConfig,
        fields: Iterable[str] = (),
        *,
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> cpb.UpstreamConfig:
        """Change ``fields`` (plain names; none: the fields set; ``["*"]``: all) of
        ``upstream.name``, conditional on ``upstream.etag`` when set."""
        request = cpb.UpdateUpstreamRequest(
            upstream=upstream, update_mask=field_mask(cpb.UpstreamConfig, fields)
        )
        reply = await self._calls.unary(self.stub.UpdateUpstream, request, timeout, token)
        return reply.upstream

    async def delete_upstream(
        self,
        name: str,
        *,
        etag: str = "",
        force: bool = False,
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> list[str]:
        """Delete an upstream; one that registries use needs ``force``. Returns the registries
        it was removed from."""
        request = cpb.DeleteUpstreamRequest(name=name, etag=etag, force=force)
        reply = await self._calls.unary(self.stub.DeleteUpstream, request, timeout, token)
        return list(reply.removed_from)

    async def test_upstream(
        self,
        name_or_upstream: str | cpb.UpstreamConfig,
        path: str = "",
        *,
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> cpb.TestUpstreamResponse:
        """Check a stored upstream (its name) or an unsaved one (an UpstreamConfig): ping,
        token exchange and a HEAD of ``path``. Stores nothing."""
        if isinstance(name_or_upstream, str):
            request = cpb.TestUpstreamRequest(name=name_or_upstream, path=path)
        else:
            request = cpb.TestUpstreamRequest(upstream=name_or_upstream, path=path)
        return await self._calls.unary(self.stub.TestUpstream, request, timeout, token)

    # --- registries --------------------------------------------------------------------

    async def create_registry(
        self,
        group: str,
        registry_id: str,
        registry: cpb.RegistryConfig,
        *,
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> cpb.RegistryConfig:
        request = cpb.CreateRegistryRequest(
            parent=group_name(group), registry_id=registry_id, registry=registry
        )
        reply = await self._calls.unary(self.stub.CreateRegistry, request, timeout, token)
        return reply.registry

    async def get_registry(
        self, name: str, *, timeout: Timeout = DEFAULT, token: Token = DEFAULT
    ) -> cpb.RegistryConfig:
        request = cpb.GetRegistryRequest(name=name)
        reply = await self._calls.unary(self.stub.GetRegistry, request, timeout, token)
        return reply.registry

    async def list_registries(
        self,
        group: str,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> AsyncIterator[cpb.RegistryConfig]:
        """Every registry of ``group``, like :meth:`list_upstreams`."""

        async def page(page_token: str) -> tuple[Sequence[cpb.RegistryConfig], str]:
            request = cpb.ListRegistriesRequest(
                parent=group_name(group), page_size=page_size, page_token=page_token
            )
            reply = await self._calls.unary(self.stub.ListRegistries, request, timeout, token)
            return reply.registries, reply.next_page_token

        async for registry in _pages(page):
            yield registry

    async def update_registry(
        self,
        registry: cpb.RegistryConfig,
        fields: Iterable[str] = (),
        *,
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> cpb.RegistryConfig:
        request = cpb.UpdateRegistryRequest(
            registry=registry, update_mask=field_mask(cpb.RegistryConfig, fields)
        )
        reply = await self._calls.unary(self.stub.UpdateRegistry, request, timeout, token)
        return reply.registry

    async def delete_registry(
        self, name: str, *, etag: str = "", timeout: Timeout = DEFAULT, token: Token = DEFAULT
    ) -> None:
        request = cpb.DeleteRegistryRequest(name=name, etag=etag)
        await self._calls.unary(self.stub.DeleteRegistry, request, timeout, token)

    # --- members -----------------------------------------------------------------------

    async def add_upstream(
        self,
        registry: str,
        upstream: str,
        position: int = 0,
        *,
        etag: str = "",
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> cpb.RegistryConfig:
        """Insert ``upstream`` (a name) into ``registry`` at ``position`` (1 is tried first;
        0 appends)."""
        request = cpb.AddUpstreamRequest(
            registry=registry, upstream=upstream, position=position, etag=etag
        )
        reply = await self._calls.unary(self.stub.AddUpstream, request, timeout, token)
        return reply.registry

    async def remove_upstream(
        self,
        registry: str,
        upstream: str,
        *,
        etag: str = "",
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> cpb.RegistryConfig:
        request = cpb.RemoveUpstreamRequest(registry=registry, upstream=upstream, etag=etag)
        reply = await self._calls.unary(self.stub.RemoveUpstream, request, timeout, token)
        return reply.registry

    async def reorder_upstreams(
        self,
        registry: str,
        order: Sequence[str],
        *,
        etag: str = "",
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> cpb.RegistryConfig:
        """Give the members the positions 1..n in the order of ``order`` (every member's name)."""
        members = [
            cpb.RegistryMember(upstream=name, position=index)
            for index, name in enumerate(order, start=1)
        ]
        request = cpb.ReorderUpstreamsRequest(registry=registry, upstreams=members, etag=etag)
        reply = await self._calls.unary(self.stub.ReorderUpstreams, request, timeout, token)
        return reply.registry


async def _pages(
    fetch: Callable[[str], Awaitable[tuple[Sequence[_Item], str]]],
) -> AsyncIterator[_Item]:
    """Yield the items of every page, following next_page_token."""
    page_token = ""
    for _ in range(_MAX_PAGES):
        items, page_token = await fetch(page_token)
        for item in items:
            yield item
        if not page_token:
            return
