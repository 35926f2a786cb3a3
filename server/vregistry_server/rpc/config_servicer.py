"""The gRPC face of the admin API: vregistry.v1.ConfigService.

Protobuf in, ConfigManager calls, protobuf or a google.rpc.Status out. No
response is ever built with a username or password: UpstreamConfig carries
only ``has_credentials``. Every call is checked against the caller's groups
first (rpc/access.py): a name or parent of another group is PERMISSION_DENIED
whether it exists or not, and ``groups/-`` lists only the caller's groups.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc

from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import config_service_pb2_grpc as cpb_grpc
from vregistry_server.admin.checks import StepKind, StepOutcome, check_upstream
from vregistry_server.admin.manager import (
    ConfigManager,
    RegistryInput,
    UpstreamInput,
    build_unsaved_upstream,
)
from vregistry_server.admin.records import (
    REQUEST_FIELD_NAMES,
    RegistryRecord,
    UpstreamRecord,
    upstream_name,
)
from vregistry_server.errors import InvalidArgument
from vregistry_server.model import Upstream
from vregistry_server.resolver import ensure_usable
from vregistry_server.rpc import access
from vregistry_server.rpc.access import checked
from vregistry_server.rpc.boundary import NullRpcObserver, RpcObserver, handle, timestamp

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE_NAME = cpb.DESCRIPTOR.services_by_name["ConfigService"].full_name

_FLOW_TO_PB = {
    "auto": cpb.TOKEN_FLOW_AUTO,
    "get": cpb.TOKEN_FLOW_GET,
    "oauth2": cpb.TOKEN_FLOW_OAUTH2,
}
_FLOW_FROM_PB = {value: key for key, value in _FLOW_TO_PB.items()}
_STEP_KINDS = {
    StepKind.PING: cpb.TEST_STEP_KIND_PING,
    StepKind.TOKEN_EXCHANGE: cpb.TEST_STEP_KIND_TOKEN_EXCHANGE,
    StepKind.HEAD: cpb.TEST_STEP_KIND_HEAD,
}
_STEP_OUTCOMES = {
    StepOutcome.SUCCEEDED: cpb.TEST_STEP_OUTCOME_SUCCEEDED,
    StepOutcome.FAILED: cpb.TEST_STEP_OUTCOME_FAILED,
    StepOutcome.SKIPPED: cpb.TEST_STEP_OUTCOME_SKIPPED,
}


class ConfigServicer(cpb_grpc.ConfigServiceServicer):  # type: ignore[misc]
    def __init__(self, manager: ConfigManager, observer: RpcObserver | None = None) -> None:
        self._manager = manager
        self._observer = observer or NullRpcObserver()

    def _handle(
        self, context: grpc.aio.ServicerContext, method: str, work: Awaitable[T]
    ) -> Awaitable[T]:
        return handle(context, method, work, self._observer)

    # ------------------------------------------------------------------ upstreams

    async def CreateUpstream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.CreateUpstreamResponse:
        record = await self._handle(
            context,
            "CreateUpstream",
            checked(
                lambda: access.require_parent("parent", request.parent),
                lambda: self._manager.create_upstream(
                    request.parent, request.upstream_id, _upstream_input(request.upstream)
                ),
            ),
        )
        return cpb.CreateUpstreamResponse(upstream=upstream_to_pb(record))

    async def GetUpstream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.GetUpstreamResponse:
        record = await self._handle(
            context,
            "GetUpstream",
            checked(
                lambda: access.require_name("name", request.name, "upstreams"),
                lambda: self._manager.get_upstream(request.name),
            ),
        )
        return cpb.GetUpstreamResponse(upstream=upstream_to_pb(record))

    async def ListUpstreams(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.ListUpstreamsResponse:
        records, token = await self._handle(
            context,
            "ListUpstreams",
            checked(
                lambda: access.require_parent("parent", request.parent, allow_wildcard=True),
                lambda: self._manager.list_upstreams(
                    request.parent, request.page_size, request.page_token, access.may_use
                ),
            ),
        )
        return cpb.ListUpstreamsResponse(
            upstreams=[upstream_to_pb(r) for r in records], next_page_token=token
        )

    async def UpdateUpstream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.UpdateUpstreamResponse:
        given = request.upstream
        record = await self._handle(
            context,
            "UpdateUpstream",
            checked(
                lambda: access.require_name("upstream.name", given.name, "upstreams"),
                lambda: self._manager.update_upstream(
                    given.name, given.etag, list(request.update_mask.paths), _upstream_input(given)
                ),
            ),
        )
        return cpb.UpdateUpstreamResponse(upstream=upstream_to_pb(record))

    async def DeleteUpstream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.DeleteUpstreamResponse:
        removed = await self._handle(
            context,
            "DeleteUpstream",
            checked(
                lambda: access.require_name("name", request.name, "upstreams"),
                lambda: self._manager.delete_upstream(request.name, request.etag, request.force),
            ),
        )
        return cpb.DeleteUpstreamResponse(removed_from=removed)

    async def TestUpstream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.TestUpstreamResponse:
        async def run() -> cpb.TestUpstreamResponse:
            target = request.WhichOneof("target")
            if target == "name":
                access.require_name("name", request.name, "upstreams")
                upstream = (await self._manager.get_upstream(request.name)).upstream
            elif target == "upstream":
                upstream = build_unsaved_upstream(
                    "test", "unsaved", _upstream_input(request.upstream)
                ).upstream
            else:
                raise InvalidArgument("field 'target': give name or upstream")
            ensure_usable(upstream)  # unreadable stored credentials: nothing is sent
            result = await check_upstream(self._manager.resolver, upstream, request.path)
            return cpb.TestUpstreamResponse(
                ok=result.ok,
                scheme=result.scheme,
                steps=[
                    cpb.TestStep(
                        kind=_STEP_KINDS[s.kind],
                        outcome=_STEP_OUTCOMES[s.outcome],
                        http_status=s.http_status,
                        latency_ms=s.latency_ms,
                        message=s.message,
                    )
                    for s in result.steps
                ],
            )

        return await self._handle(context, "TestUpstream", run())

    # ------------------------------------------------------------------ registries

    async def CreateRegistry(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.CreateRegistryResponse:
        record = await self._handle(
            context,
            "CreateRegistry",
            checked(
                lambda: access.require_parent("parent", request.parent),
                lambda: self._manager.create_registry(
                    request.parent, request.registry_id, _registry_input(request.registry)
                ),
            ),
        )
        return cpb.CreateRegistryResponse(registry=registry_to_pb(record))

    async def GetRegistry(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.GetRegistryResponse:
        record = await self._handle(
            context,
            "GetRegistry",
            checked(
                lambda: access.require_name("name", request.name, "registries"),
                lambda: self._manager.get_registry(request.name),
            ),
        )
        return cpb.GetRegistryResponse(registry=registry_to_pb(record))

    async def ListRegistries(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.ListRegistriesResponse:
        records, token = await self._handle(
            context,
            "ListRegistries",
            checked(
                lambda: access.require_parent("parent", request.parent, allow_wildcard=True),
                lambda: self._manager.list_registries(
                    request.parent, request.page_size, request.page_token, access.may_use
                ),
            ),
        )
        return cpb.ListRegistriesResponse(
            registries=[registry_to_pb(r) for r in records], next_page_token=token
        )

    async def UpdateRegistry(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.UpdateRegistryResponse:
        given = request.registry
        record = await self._handle(
            context,
            "UpdateRegistry",
            checked(
                lambda: access.require_name("registry.name", given.name, "registries"),
                lambda: self._manager.update_registry(
                    given.name, given.etag, list(request.update_mask.paths), _registry_input(given)
                ),
            ),
        )
        return cpb.UpdateRegistryResponse(registry=registry_to_pb(record))

    async def DeleteRegistry(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.DeleteRegistryResponse:
        await self._handle(
            context,
            "DeleteRegistry",
            checked(
                lambda: access.require_name("name", request.name, "registries"),
                lambda: self._manager.delete_registry(request.name, request.etag),
            ),
        )
        return cpb.DeleteRegistryResponse()

    async def AddUpstream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.AddUpstreamResponse:
        record = await self._handle(
            context,
            "AddUpstream",
            checked(
                lambda: _require_member(request.registry, [request.upstream]),
                lambda: self._manager.add_upstream(
                    request.registry, request.upstream, request.position, request.etag
                ),
            ),
        )
        return cpb.AddUpstreamResponse(registry=registry_to_pb(record))

    async def RemoveUpstream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.RemoveUpstreamResponse:
        record = await self._handle(
            context,
            "RemoveUpstream",
            checked(
                lambda: _require_member(request.registry, [request.upstream]),
                lambda: self._manager.remove_upstream(
                    request.registry, request.upstream, request.etag
                ),
            ),
        )
        return cpb.RemoveUpstreamResponse(registry=registry_to_pb(record))

    async def ReorderUpstreams(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> cpb.ReorderUpstreamsResponse:
        order = [(m.upstream, m.position) for m in request.upstreams]
        record = await self._handle(
            context,
            "ReorderUpstreams",
            checked(
                lambda: _require_member(request.registry, [name for name, _ in order]),
                lambda: self._manager.reorder_upstreams(request.registry, order, request.etag),
            ),
        )
        return cpb.ReorderUpstreamsResponse(registry=registry_to_pb(record))


def _require_member(registry: str, upstreams: list[str]) -> None:
    """A registry and the upstreams a membership change names: all in the caller's groups."""
    access.require_name("registry", registry, "registries")
    for index, name in enumerate(upstreams):
        field_name = "upstream" if len(upstreams) == 1 else f"upstreams[{index}].upstream"
        access.require_name(field_name, name, "upstreams")


# --------------------------------------------------------------------------- conversions


# Model fields that the proto carries as they are, under their request names; the
# others are mapped by hand below (tests/unit/test_model_drift.py checks the split).
PB_PLAIN_FIELDS: tuple[str, ...] = tuple(
    f.name
    for f in dataclasses.fields(Upstream)
    # the group is in the resource name (groups/{group}/upstreams/{id}), like the id;
    # the source is the service's own record of who wrote the url (oci/egress.py)
    if f.name not in {"id", "credentials", "token_flow", "group", "source"}
)


def _upstream_input(message: Any) -> UpstreamInput:
    flow = _FLOW_FROM_PB.get(message.token_flow, "")
    if message.token_flow and not flow:
        raise InvalidArgument(f"field 'token_flow': unknown value {message.token_flow}")
    values: dict[str, Any] = {
        REQUEST_FIELD_NAMES.get(name, name): getattr(message, REQUEST_FIELD_NAMES.get(name, name))
        for name in PB_PLAIN_FIELDS
    }
    values["realm_allow_hosts"] = tuple(message.realm_allow_hosts)
    values["allowed_actions"] = tuple(message.allowed_actions)
    if not message.HasField("cache_validity_hours"):
        values["cache_validity_hours"] = None
    return UpstreamInput(
        **values, username=message.username, password=message.password, token_flow=flow
    )


def _registry_input(message: Any) -> RegistryInput:
    return RegistryInput(display_name=message.display_name, description=message.description)


def upstream_to_pb(record: UpstreamRecord) -> cpb.UpstreamConfig:
    upstream = record.upstream
    # Deliberately no username and no password: credentials are write-only.
    return cpb.UpstreamConfig(
        name=record.resource_name,
        **{
            REQUEST_FIELD_NAMES.get(name, name): getattr(upstream, name) for name in PB_PLAIN_FIELDS
        },
        has_credentials=upstream.credentials is not None,
        credentials_unreadable=bool(upstream.credentials and upstream.credentials.unreadable),
        token_flow=_FLOW_TO_PB[upstream.token_flow],
        etag=record.etag,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
    )


def registry_to_pb(record: RegistryRecord) -> cpb.RegistryConfig:
    return cpb.RegistryConfig(
        name=record.resource_name,
        display_name=record.name,
        description=record.description,
        upstreams=[
            cpb.RegistryMember(upstream=upstream_name(record.group, uid), position=index)
            for index, uid in enumerate(record.members, start=1)
        ],
        etag=record.etag,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
    )
