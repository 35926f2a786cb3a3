"""The circuit breaker's state machine on a fake clock (the breaker under real upstream
faults is in tests/integration/test_faults.py)."""

from __future__ import annotations

from vregistry_server.oci.circuit import CircuitBreaker, State


def test_circuit_half_open_allows_one_trial_and_reopens_on_failure() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, reset_after_seconds=10, clock=lambda: now[0])
    breaker.record_failure("u")
    assert breaker.state("u") is State.OPEN and not breaker.allow("u")
    assert breaker.retry_in("u") == 10
    now[0] = 10.0
    assert breaker.allow("u") and breaker.state("u") is State.HALF_OPEN
    assert not breaker.allow("u"), "only one trial at a time"
    breaker.record_failure("u")
    assert breaker.state("u") is State.OPEN and not breaker.allow("u")
    now[0] = 20.0
    assert breaker.allow("u")
    breaker.release("u")  # a cancelled trial frees the slot
    assert breaker.allow("u")
    breaker.record_success("u")
    assert breaker.state("u") is State.CLOSED
