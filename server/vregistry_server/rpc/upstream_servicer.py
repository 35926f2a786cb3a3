"""The gRPC face of the resolver: vregistry.v1.UpstreamService.

Protobuf in, plain Python calls, protobuf out; no registry logic lives here, and
every failure is mapped by rpc/boundary.py (a google.rpc.Status with an
ErrorInfo and, for a failed ResolveUpstream, every attempt).

Every call first checks that the upstream or registry is in the caller's
groups (rpc/access.py), and every Authorization handed out (a Basic header is
the stored password itself, a bearer token is minted with it) is an audit line
on ``vregistry.audit`` and a count in the observer: caller, group, upstream,
scheme; never the value.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.admin.callers import Caller
from vregistry_server.model import AuthHeaders, RegistryUpstream, Resolution, Scheme, Upstream
from vregistry_server.resolver import Resolver
from vregistry_server.rpc import access
from vregistry_server.rpc.answer_memo import NEVER, AnswerMemo, Disclosure, Memo
from vregistry_server.rpc.audit import AuditLog, LoggerAudit
from vregistry_server.rpc.boundary import (
    NullRpcObserver,
    RpcObserver,
    attempts_to_pb,
    handle,
    timestamp,
)
from vregistry_server.rpc.interceptors import current_caller

T = TypeVar("T")
M = TypeVar("M", bound=Message)
_MEMBERS_KEPT = 1024
_ANSWERS_KEPT = 1024
# Responses given again from their Reuse (rpc/answer_memo.py): a few KB each at most.
URL_MEMO_ENTRIES = 4096
AUTH_MEMO_ENTRIES = 2048
RESOLVE_MEMO_ENTRIES = 4096


class UpstreamServicer(pb_grpc.UpstreamServiceServicer):
    def __init__(
        self,
        resolver: Resolver,
        observer: RpcObserver | None = None,
        *,
        audit_log: AuditLog | None = None,
    ) -> None:
        self._resolver = resolver
        self._observer = observer or NullRpcObserver()
        self._audit = audit_log or LoggerAudit()
        # id(member) -> (member, its pb.Upstream): built once per member of the configuration
        # in use, not per call; the member is kept so that a reused id cannot match.
        self._members: dict[int, tuple[RegistryUpstream, pb.Upstream]] = {}
        # id(cache entry) -> (entry, member, the response but headers and stale): see
        # _answer_pb; never mutated once stored (each response merges a copy of it).
        self._answers: dict[int, tuple[object, RegistryUpstream, pb.ResolveUpstreamResponse]] = {}
        self._url_memo: AnswerMemo[tuple[int, str, str], pb.UrlForResponse] = AnswerMemo(
            URL_MEMO_ENTRIES
        )
        self._auth_memo: AnswerMemo[
            tuple[int, str, str, tuple[str, ...]], pb.GetAuthHeadersResponse
        ] = AnswerMemo(AUTH_MEMO_ENTRIES)
        self._resolve_memo: AnswerMemo[tuple[int, str, str], pb.ResolveUpstreamResponse] = (
            AnswerMemo(RESOLVE_MEMO_ENTRIES)
        )

    def _handle(
        self, context: grpc.aio.ServicerContext, method: str, work: Awaitable[T]
    ) -> Awaitable[T]:
        return handle(context, method, work, self._observer)

    # Each method first looks for the same question from the same caller answered before
    # and still holding (rpc/answer_memo.py), and otherwise asks the resolver, reading
    # ``changes`` before asking so that a change during the call voids what it answers.

    async def UrlFor(
        self, request: pb.UrlForRequest, context: grpc.aio.ServicerContext
    ) -> pb.UrlForResponse:
        started = time.perf_counter()
        caller = current_caller()
        key = (id(caller), request.upstream_id, request.path)
        changes = self._resolver.configs_applied
        memo = self._url_memo.get(key, caller, changes, self._resolver.resolve_cache.now)
        if memo is not None:
            self._observer.rpc("UrlFor", "OK", time.perf_counter() - started)
            return memo.response
        url = await self._handle(context, "UrlFor", self._url_for(request))
        response = pb.UrlForResponse(url=url)
        self._url_memo.put(key, Memo(caller, changes, NEVER, response, None))
        return response

    async def _url_for(self, request: pb.UrlForRequest) -> str:
        self._require_upstream(request.upstream_id)
        return self._resolver.url_for(request.upstream_id, request.path)

    async def GetAuthHeaders(
        self, request: pb.GetAuthHeadersRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAuthHeadersResponse:
        started = time.perf_counter()
        caller = current_caller()
        key = (id(caller), request.upstream_id, request.path, tuple(request.actions))
        changes = self._resolver.changes
        memo = self._auth_memo.get(key, caller, changes, self._resolver.resolve_cache.now)
        if memo is not None and _deadline_open(context):
            return self._repeat("GetAuthHeaders", memo, started)
        result = await self._handle(context, "GetAuthHeaders", self._auth_headers(request, context))
        upstream = self._resolver.config.upstreams.get(request.upstream_id)
        disclosure = _disclosure(
            "GetAuthHeaders", caller, upstream, request.upstream_id, result.scheme
        )
        self._disclosed(disclosure)
        response = pb.GetAuthHeadersResponse(
            headers=result.headers, cache_hit=result.cache_hit, scheme=result.scheme.value
        )
        if result.expires_at is not None:
            response.expires_at.CopyFrom(timestamp(result.expires_at))
        if result.reuse is not None:
            self._auth_memo.put(key, Memo(caller, changes, result.reuse, response, disclosure))
        return response

    async def ResolveUpstream(
        self, request: pb.ResolveUpstreamRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveUpstreamResponse:
        started = time.perf_counter()
        caller = current_caller()
        key = (id(caller), request.registry_id, request.path)
        changes = self._resolver.changes
        if not request.refresh:
            cache_clock = self._resolver.resolve_cache.now
            memo = self._resolve_memo.get(key, caller, changes, cache_clock)
            if memo is not None and _deadline_open(context):
                return self._repeat("ResolveUpstream", memo, started)
        resolution = await self._handle(
            context, "ResolveUpstream", self._resolution(request, context)
        )
        hit = resolution.hit
        upstream = hit.member.upstream
        scheme = _scheme_of(hit.headers)
        disclosure = _disclosure("ResolveUpstream", caller, upstream, upstream.id, scheme)
        self._disclosed(disclosure)
        response = self._response(resolution)
        if resolution.reuse is not None and not request.refresh:
            memo = Memo(caller, changes, resolution.reuse, response, disclosure)
            self._resolve_memo.put(key, memo)
        return response

    def _repeat(self, method: str, memo: Memo[M], started: float) -> M:
        """A repeat answered from the memo: the counts and the audit line of any call."""
        reuse = memo.reuse
        if reuse.answer_layer:
            self._resolver.observer.resolve_cache(reuse.answer_layer, "hit")
        if reuse.token_layer:
            self._resolver.observer.token_cache(reuse.token_layer, "hit")
        self._disclosed(memo.disclosure)
        self._observer.rpc(method, "OK", time.perf_counter() - started)
        return memo.response

    def _response(self, resolution: Resolution) -> pb.ResolveUpstreamResponse:
        # The fresh headers, then everything else in one C-level merge of the answer's message.
        response = pb.ResolveUpstreamResponse(headers=resolution.hit.headers)
        response.MergeFrom(self._answer_pb(resolution))
        if resolution.stale:
            response.stale = True
        return response

    # The checks run inline in the work that rpc/boundary.handle awaits (as
    # access.checked would run them, without its extra coroutine and closures: these are
    # the hot calls): before any work, and again on what the work used.

    async def _auth_headers(
        self, request: pb.GetAuthHeadersRequest, context: grpc.aio.ServicerContext
    ) -> AuthHeaders:
        self._require_upstream(request.upstream_id)
        result = await self._resolver.get_auth_headers(
            request.upstream_id,
            request.path,
            list(request.actions),
            caller_remaining=context.time_remaining(),
        )
        # An id deleted and created in another group during the call: not handed out.
        self._require_upstream(request.upstream_id)
        return result

    async def _resolution(
        self, request: pb.ResolveUpstreamRequest, context: grpc.aio.ServicerContext
    ) -> Resolution:
        access.require_id("registry", request.registry_id, self._resolver.config.registries)
        found = await self._resolver.resolve_upstream(
            request.registry_id,
            request.path,
            caller_remaining=context.time_remaining(),
            refresh=request.refresh,
        )
        access.require_group("registry", request.registry_id, found.hit.member.upstream.group)
        return found

    def _answer_pb(self, resolution: Resolution) -> pb.ResolveUpstreamResponse:
        """The response but its headers and ``stale``: built once per cache entry (an
        immutable CachedAnswer, and the member it names) instead of per call, where its
        attempts, upstream and timestamp were three to five new messages on every hit."""
        entry = resolution.entry
        member = resolution.hit.member
        if entry is not None:
            known = self._answers.get(id(entry))
            # Both kept and identity-checked: a reused id cannot match, nor can an entry
            # answered again for a member of a replaced configuration.
            if known is not None and known[0] is entry and known[1] is member:
                return known[2]
        hit = resolution.hit
        built = pb.ResolveUpstreamResponse(
            upstream=self._member_pb(member),
            url=hit.url,
            digest=hit.digest,
            media_type=hit.media_type,
            size=hit.size,
            attempts=attempts_to_pb(resolution.attempts),
            cache_hit=resolution.cache_hit,
        )
        if resolution.checked_at:
            built.checked_at.CopyFrom(timestamp(resolution.checked_at))
        if entry is not None:
            if len(self._answers) >= _ANSWERS_KEPT:  # the cache's entries turned over
                self._answers.clear()
            self._answers[id(entry)] = (entry, member, built)
        return built

    def _member_pb(self, member: RegistryUpstream) -> pb.Upstream:
        known = self._members.get(id(member))
        if known is not None and known[0] is member:
            return known[1]
        upstream = member.upstream
        built = pb.Upstream(
            id=upstream.id,
            name=upstream.name,
            url=upstream.url,
            position=member.position,
            cache_validity_hours=upstream.cache_validity_hours,
        )
        if len(self._members) >= _MEMBERS_KEPT:  # configurations replaced many times over
            self._members.clear()
        self._members[id(member)] = (member, built)
        return built

    def _require_upstream(self, upstream_id: str) -> None:
        access.require_id("upstream", upstream_id, self._resolver.config.upstreams)

    def _disclosed(self, disclosure: Disclosure | None) -> None:
        if disclosure is None:
            return
        self._audit.info("credentials disclosed", disclosure.fields)
        self._observer.credentials_disclosed(disclosure.upstream_id, disclosure.scheme)


def _disclosure(
    method: str, caller: Caller, upstream: Upstream | None, upstream_id: str, scheme: Scheme
) -> Disclosure | None:
    """The audit line's fields of a credential handed out (kept with a memo for its repeats)."""
    if scheme is Scheme.NONE:
        return None
    fields = (
        ("audit", "credentials_disclosed"),
        ("method", method),
        ("caller", caller.name),
        ("group", upstream.group if upstream is not None else ""),
        ("upstream_id", upstream_id),
        ("scheme", scheme.value),
    )
    return Disclosure(fields, upstream_id, scheme.value)


def _deadline_open(context: grpc.aio.ServicerContext) -> bool:
    """Whether the caller's deadline, if any, has not passed (else the resolver's answer,
    DEADLINE_EXCEEDED, is the one to give)."""
    remaining = context.time_remaining()
    return remaining is None or remaining > 0


def _scheme_of(headers: Mapping[str, str]) -> Scheme:
    for key, value in headers.items():
        if key.lower() == "authorization":
            kind = value.split(" ", 1)[0].lower()
            return Scheme.BASIC if kind == "basic" else Scheme.BEARER
    return Scheme.NONE
