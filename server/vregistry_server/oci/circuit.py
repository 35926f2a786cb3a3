"""A per-upstream circuit breaker for ResolveUpstream probes.

An upstream that keeps failing (connection refused, timeouts, 5xx) costs every
resolution a full timeout and gets hammered while it is down. After
``failure_threshold`` consecutive failures its circuit opens: probes answer
"unavailable" at once, without network, for ``reset_after`` seconds; then one
trial probe is let through (half-open), and its result closes or re-opens it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from vregistry_server.oci.observer import NULL_OBSERVER, Observer


class State(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(slots=True)
class _Circuit:
    state: State = State.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = False


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_after_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        self._observer = observer
        self._threshold = failure_threshold
        self._reset_after = reset_after_seconds
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def state(self, upstream_id: str) -> State:
        return self._circuits.get(upstream_id, _Circuit()).state

    def retry_in(self, upstream_id: str) -> float:
        circuit = self._circuits.get(upstream_id)
        if circuit is None or circuit.state is not State.OPEN:
            return 0.0
        return max(0.0, circuit.opened_at + self._reset_after - self._clock())

    def allow(self, upstream_id: str) -> bool:
        """May we send a probe now? In half-open state only one trial at a time."""
        circuit = self._circuits.get(upstream_id)
        if circuit is None or circuit.state is State.CLOSED:
            return True
        if circuit.state is State.OPEN:
            if self._clock() - circuit.opened_at < self._reset_after:
                return False
            self._set(upstream_id, circuit, State.HALF_OPEN)
        if circuit.trial_in_flight:
            return False
        circuit.trial_in_flight = True
        return True

    def record_success(self, upstream_id: str) -> None:
        circuit = self._circuits.get(upstream_id)
        if circuit is None:
            return
        circuit.failures = 0
        circuit.trial_in_flight = False
        if circuit.state is not State.CLOSED:
            self._set(upstream_id, circuit, State.CLOSED)

    def record_failure(self, upstream_id: str) -> None:
        circuit = self._circuits.setdefault(upstream_id, _Circuit())
        circuit.failures += 1
        circuit.trial_in_flight = False
        if circuit.state is State.HALF_OPEN or circuit.failures >= self._threshold:
            circuit.opened_at = self._clock()
            self._set(upstream_id, circuit, State.OPEN)

    def release(self, upstream_id: str) -> None:
        """A trial that ended without a verdict (cancelled) frees the half-open slot."""
        circuit = self._circuits.get(upstream_id)
        if circuit is not None:
            circuit.trial_in_flight = False

    def forget(self, upstream_id: str) -> None:
        """Start the upstream over: closed, no failures counted (its configuration changed)."""
        if self._circuits.pop(upstream_id, None) is not None:
            self._observer.circuit_state(upstream_id, State.CLOSED)

    def _set(self, upstream_id: str, circuit: _Circuit, state: State) -> None:
        circuit.state = state
        self._observer.circuit_state(upstream_id, state)
