"""What the registry protocol layer reports, without knowing who listens.

go-containerregistry keeps metrics libraries out of its transport for the same
reason: a protocol client should be usable without a monitoring stack. The
runtime passes a subclass that turns these events into Prometheus series
(runtime/metrics.py); tests and embedders may pass their own or none.
Labels are ids, outcomes and rules only: never a path, a user name or a token.
"""

from __future__ import annotations


class Observer:
    """Every event of the OCI layer, as a no-op; override what you want to see."""

    def ping(self, upstream_id: str, outcome: str) -> None:
        """An auth discovery ping of ``/v2/``: the scheme found, or the failure reason."""

    def token_fetch(self, upstream_id: str, flow: str, outcome: str) -> None:
        """A token exchange with the upstream's token server (``ok``, ``refused``, a reason)."""

    def token_cache(self, layer: str, result: str) -> None:
        """A token cache lookup: layer ``near``/``memory``/``redis``, result ``hit``/``miss``/``error``."""

    def token_cache_degraded(self, degraded: bool) -> None:
        """Redis became unreachable (tokens held in process memory only), or came back."""

    def token_lease(self, outcome: str) -> None:
        """A process's fleet-wide claim on a missing token (``acquired``, ``taken_over``,
        ``shared``, ``unshared``, ``wait_timeout``): see Authenticator._claim_fetch."""

    def resolve_cache(self, layer: str, result: str) -> None:
        """A resolution cache lookup: layer ``memory``/``redis``, result ``hit`` (fresh answer),
        ``negative`` (a cached miss), ``expired`` (re-checked), ``stale`` (served expired while
        the upstreams are down), ``miss`` or ``error`` (Redis unreachable)."""

    def resolve_check(self, outcome: str) -> None:
        """A ResolveUpstream call not answered from the cache: ``checked`` (it asked the
        upstreams) or ``joined`` (it waited for an identical call's check instead)."""

    def probe(self, upstream_id: str, outcome: str, seconds: float) -> None:
        """One upstream checked for ResolveUpstream, with its outcome and duration."""

    def circuit_state(self, upstream_id: str, state: int) -> None:
        """An upstream's circuit breaker changed state (0 closed, 1 half-open, 2 open)."""

    def realm_refusal(self, upstream_id: str, rule: str) -> None:
        """A token realm was refused by the realm policy (rule ``host`` or ``address``)."""


NULL_OBSERVER = Observer()
