"""The pure logic of ``benchmarks/fleet.py``: ghz's per-call times, the failover windows,
merged bursts, and the target table's verdict (and exit status)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from benchmarks.fleet import (
    BASELINE_HOT,
    EXIT_TARGETS_MISSED,
    FAILOVER,
    FLEET_TARGETS,
    HOT_CLUSTER,
    MANY_KEYS,
    ONE_KEY,
    Call,
    calls_of,
    epoch_seconds,
    exit_status,
    merged,
    percentile,
    split_windows,
    summarize,
    window_report,
)
from benchmarks.loadgen import LoadResult
from benchmarks.targets import evaluate


def test_go_nanosecond_times_become_epoch_seconds() -> None:
    whole = datetime(2026, 12, 1, 9, 4, 0, tzinfo=UTC).timestamp()
    assert epoch_seconds("2026-12-01T09:04:00.12456501Z") == pytest.approx(whole + 0.12456501)
    assert epoch_seconds("2026-12-01T11:04:00+02:00") == whole
    with pytest.raises(ValueError, match="RFC 3339"):
        epoch_seconds("yesterday")


def test_a_ghz_detail_is_a_call_that_ended_at_its_timestamp() -> None:
    report = {
        "details": [
            {"timestamp": "2026-12-01T09:04:01Z", "latency": 250_000_000, "status": "OK"},
            {"timestamp": "2026-12-01T09:04:02Z", "latency": 1_000, "status": "Unavailable"},
        ]
    }
    ok, failed = calls_of(report)
    end = datetime(2026, 12, 1, 9, 4, 1, tzinfo=UTC).timestamp()
    assert ok.start == pytest.approx(end - 0.25)
    assert (ok.end, ok.ok) == (end, True)
    assert ok.latency_ms == pytest.approx(250)
    assert not failed.ok
    assert calls_of({}) == []


def test_percentiles_are_nearest_rank_and_no_calls_summarise_to_zeros() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0  # round(0.5 * 99) = 50 -> the 51st value
    assert percentile(values, 0.99) == 99.0
    assert summarize([]) == {"calls": 0, "errors": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    summary = summarize([Call(0.0, 0.010, True), Call(0.0, 0.030, False)])
    assert summary["calls"] == 2 and summary["errors"] == 1 and summary["max_ms"] == 30.0


def test_a_call_in_flight_at_the_kill_counts_against_the_failover_window() -> None:
    killed, promoted = 10.0, 12.0
    calls = {
        "ended before the kill": Call(9.0, 9.9, True),
        "in flight at the kill": Call(9.9, 10.5, True),
        "inside the window": Call(11.0, 11.1, True),
        "in flight at the promotion": Call(11.9, 12.3, True),
        "started after the promotion": Call(12.1, 12.2, True),
    }
    windows = split_windows(calls.values(), killed, promoted)
    assert windows["before"] == [calls["ended before the kill"]]
    assert windows["after"] == [calls["started after the promotion"]]
    assert windows["failover"] == [
        calls["in flight at the kill"],
        calls["inside the window"],
        calls["in flight at the promotion"],
    ]


def test_the_failover_window_is_compared_with_the_one_before() -> None:
    calls = [Call(0.0, 0.002, True), Call(5.0, 5.008, True), Call(9.0, 9.001, True)]
    report = window_report(calls, killed_at=4.0, promoted_at=6.0)
    assert report["failover"]["p50_vs_before"] == 4.0
    assert report["failover"]["p99_vs_before"] == 4.0
    assert report["after"]["calls"] == 1
    # Nothing before the kill: no ratio rather than a division by zero.
    assert window_report(calls[1:], 4.0, 6.0)["failover"]["p99_vs_before"] is None


def _result(count: int, errors: int, wall_s: float) -> LoadResult:
    status = {"OK": count - errors, **({"Unavailable": errors} if errors else {})}
    return LoadResult(count, 1.0, 0, 0, 0, 0, 0, errors, status=status, wall_s=wall_s)


def test_bursts_on_several_replicas_merge_into_one() -> None:
    reports: list[dict[str, Any]] = [
        {"details": [{"timestamp": "2026-12-01T09:04:01Z", "latency": 4_000_000, "status": "OK"}]},
        {"details": [{"timestamp": "2026-12-01T09:04:01Z", "latency": 8_000_000, "status": "OK"}]},
    ]
    burst = merged([_result(1, 0, 0.5), _result(3, 1, 0.7)], reports)
    assert burst["count"] == 4 and burst["errors"] == 1
    assert burst["status"] == {"OK": 3, "Unavailable": 1}
    assert burst["max_ms"] == 8.0 and burst["wall_s"] == 0.7


def _measured(**changes: Any) -> dict[str, dict[str, Any]]:
    no_errors = {"result": {"errors": 0}}
    measured: dict[str, dict[str, Any]] = {
        ONE_KEY: {"token_requests": 1, **no_errors},
        MANY_KEYS: {"token_requests": 300, **no_errors},
        BASELINE_HOT: {"scenario": BASELINE_HOT, **no_errors},
        HOT_CLUSTER: {"scenario": HOT_CLUSTER, "rps_ratio": 0.85, **no_errors},
        FAILOVER: {"windows": {"failover": {"calls": 120}}, **no_errors},
    }
    for subject, values in changes.items():
        measured[subject] = {**measured[subject], **values}
    return measured


def test_every_target_met_exits_0() -> None:
    evaluation = evaluate(FLEET_TARGETS, _measured())
    assert len(evaluation.outcomes) == len(FLEET_TARGETS)
    assert evaluation.failures == []
    assert exit_status(evaluation) == 0


@pytest.mark.parametrize(
    ("subject", "values", "missed"),
    [
        (ONE_KEY, {"token_requests": 3}, "exactly 1 token request"),
        (MANY_KEYS, {"token_requests": 301}, "exactly 300 token requests"),
        (HOT_CLUSTER, {"rps_ratio": 0.79}, ">= 0.8x baseline"),
        (HOT_CLUSTER, {"rps_ratio": None}, ">= 0.8x baseline"),  # no baseline measured
        (FAILOVER, {"result": {"errors": 2}}, "0 failed calls"),
        (FAILOVER, {"windows": {"failover": {"calls": 0}}}, "during the failover window"),
    ],
)
def test_a_missed_target_exits_3(subject: str, values: dict[str, Any], missed: str) -> None:
    evaluation = evaluate(FLEET_TARGETS, _measured(**{subject: values}))
    assert [o.name for o in evaluation.failures] == [
        t.name for t in FLEET_TARGETS if missed in t.name
    ]
    assert exit_status(evaluation) == EXIT_TARGETS_MISSED == 3


def test_a_phase_not_run_leaves_its_targets_out() -> None:
    only_failover = {FAILOVER: _measured()[FAILOVER]}
    evaluation = evaluate(FLEET_TARGETS, only_failover)
    assert {o.name for o in evaluation.outcomes} == {
        t.name for t in FLEET_TARGETS if t.subjects == (FAILOVER,)
    }
