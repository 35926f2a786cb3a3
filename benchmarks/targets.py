"""What the measurements must show, as data, and the one function that checks them.

A ``Target`` names a metric of one or more measured subjects (a scenario's row, a probe's
result, the soak or leak figures), a comparison and a limit, and says why the limit is what
it is. ``evaluate`` reads the measurements (plain JSON-shaped mappings, as written to
benchmarks/out/) and returns every outcome, with the failures apart.

Values are compared as reported (ratios rounded to 2 places, and so on), so a verdict always
agrees with the figures printed next to it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from benchmarks.environment import RESOLVE_DELAY_SECONDS
from benchmarks.scenarios import Phase, ProbeKind

# A subject that stands for every measured scenario row (the subjects with a "scenario").
EVERY_SCENARIO = "*"


class Comparison(Enum):
    AT_LEAST = ">="
    AT_MOST = "<="
    BELOW = "<"
    EQUALS = "=="
    WITHIN = "within"  # |value - centre| <= limit

    def holds(self, value: Any, limit: Any, centre: float) -> bool:
        if self is Comparison.WITHIN:
            return bool(abs(value - centre) <= limit)
        return bool(_OPERATORS[self](value, limit))


_OPERATORS: dict[Comparison, Callable[[Any, Any], Any]] = {
    Comparison.AT_LEAST: operator.ge,
    Comparison.AT_MOST: operator.le,
    Comparison.BELOW: operator.lt,
    Comparison.EQUALS: operator.eq,
}


@dataclass(frozen=True)
class Target:
    name: str
    subjects: tuple[str, ...]  # scenario names, probe names, "soak", "leak", EVERY_SCENARIO
    metric: str  # dotted path into a subject: "rps_ratio", "result.p99_ms", "notes.pings"
    comparison: Comparison
    limit: float
    why: str
    # The limit is ``limit`` times this metric of the same subject (e.g. a round trip).
    scale_by: str | None = None
    centre: float = 0.0  # Comparison.WITHIN only
    unit: str = "{}"  # how a value prints: "x{}", "{:,.0f} req/s"
    explain: str | None = None  # a metric printed instead of the value, for context


@dataclass(frozen=True)
class Outcome:
    name: str
    met: bool
    detail: str

    def as_check(self) -> tuple[str, bool, str]:
        """The shape of the JSON report's ``checks`` entries: [name, met, detail]."""
        return (self.name, self.met, self.detail)


@dataclass(frozen=True)
class Evaluation:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.met]

    def met(self, target: Target) -> bool:
        """Whether ``target`` was evaluated and met."""
        return any(o.met for o in self.outcomes if o.name == target.name)


# --------------------------------------------------------------------------- the targets

RESOLVE_LIMIT_MS = 1.3 * RESOLVE_DELAY_SECONDS * 1000
HOT = "GetAuthHeaders-hot"

HOT_PATH_TARGETS: tuple[Target, ...] = (
    Target(
        "UrlFor >= 0.9x baseline req/s",
        ("UrlFor",),
        "rps_ratio",
        Comparison.AT_LEAST,
        0.9,
        why="UrlFor does no I/O: the service's own work may cost at most 10 % of a bare "
        "gRPC server's throughput (issue 5)",
        unit="x{}",
    ),
    Target(
        "hot GetAuthHeaders >= 0.9x baseline req/s",
        (HOT,),
        "rps_ratio",
        Comparison.AT_LEAST,
        0.9,
        why="a cached token is a near-cache lookup: at most 10 % below a bare server "
        "answering with the same bytes (issue 11; 0.8 in issue 5)",
        unit="x{}",
    ),
    Target(
        "hot GetAuthHeaders p99 <= 1.5x baseline",
        (HOT,),
        "p99_ratio",
        Comparison.AT_MOST,
        1.5,
        why="the hot path must not add a tail under load (issue 5)",
        unit="x{}",
    ),
    Target(
        "hot GetAuthHeaders >= 2,600 req/s",
        (HOT,),
        "result.rps",
        Comparison.AT_LEAST,
        2600,
        why="the issue's absolute figure for one process (issue 5)",
        unit="{:,.0f} req/s",
    ),
    Target(
        "at most one Redis round trip per hot call",
        (HOT, "GetAuthHeaders-hot-no-near-cache"),
        "redis_cmds_per_call",
        Comparison.AT_MOST,
        1.05,
        why="one GET per call without the near cache, none with it; the 0.05 is redis-py's "
        "periodic health-check PINGs",
    ),
)

RESOLVE_COLD = "ResolveUpstream-cold"
RESOLVE_TARGETS: tuple[Target, ...] = (
    Target(
        "cold ResolveUpstream p99 <= 1.3 x 200 ms",
        (RESOLVE_COLD,),
        "result.p99_ms",
        Comparison.AT_MOST,
        RESOLVE_LIMIT_MS,
        why="the upstreams are probed concurrently: an answer takes about one upstream "
        "round trip (200 ms here), not the sum of them",
        unit="{} ms",
    ),
    Target(
        "cold ResolveUpstream: server CPU <= 2 ms per call",
        (RESOLVE_COLD,),
        "cpu_s_per_1k",  # CPU seconds per 1,000 calls: milliseconds per call
        Comparison.AT_MOST,
        2.0,
        why="three HEAD requests and an answer; at 4.7 ms per call the CPU, not the "
        "upstreams, made the tail (issue 11)",
        unit="{} ms",
    ),
    Target(
        "ResolveUpstream keeps the priority order",
        (ProbeKind.PRIORITY_ORDER.value,),
        "kept",
        Comparison.EQUALS,
        True,
        why="probing concurrently must not change the answer: the first upstream in the "
        "registry's order that has the manifest wins",
        explain="detail",
    ),
)

RESOLVE_CACHE = "ResolveUpstream-from-cache"
RESOLVE_CACHE_TARGETS: tuple[Target, ...] = (
    Target(
        "ResolveUpstream from the cache >= 0.8x baseline req/s",
        (RESOLVE_CACHE,),
        "rps_ratio",
        Comparison.AT_LEAST,
        0.8,
        why="a cached answer is a memory lookup plus cached headers: at most 20 % below a "
        "bare server answering with the same bytes (issue 11)",
        unit="x{}",
    ),
    Target(
        "ResolveUpstream from the cache p99 <= 1.5x baseline",
        (RESOLVE_CACHE,),
        "p99_ratio",
        Comparison.AT_MOST,
        1.5,
        why="answering from the cache must not add a tail under load (issue 11)",
        unit="x{}",
    ),
    Target(
        "ResolveUpstream from the cache: at most one Redis round trip per call",
        (RESOLVE_CACHE,),
        "redis_cmds_per_call",
        Comparison.AT_MOST,
        1.05,
        why="the memory layer answers without Redis; a replica that has not seen the answer "
        "makes one GET (issue 11); the 0.05 is redis-py's periodic health-check PINGs",
    ),
)

NO_ERRORS = Target(
    "no errors in any scenario",
    (EVERY_SCENARIO,),
    "result.errors",
    Comparison.EQUALS,
    0,
    why="a run with errors measures the errors, not the service",
)


def cold_targets(name: str, expected_token_requests: int) -> tuple[Target, ...]:
    """A cold burst: one ping and one token exchange per distinct key, shared by the callers."""
    shared = (
        Target(
            f"{name}: exactly 1 ping",
            (name,),
            "notes.pings",
            Comparison.EQUALS,
            1,
            why="the callers of a cold upstream share one ping (single flight)",
        ),
        Target(
            f"{name}: exactly {expected_token_requests} token request(s)",
            (name,),
            "notes.token_requests",
            Comparison.EQUALS,
            expected_token_requests,
            why="one token exchange per distinct repository, however many callers wait for it",
        ),
    )
    if expected_token_requests != 1:
        return shared
    return (
        *shared,
        Target(
            f"{name}: p99 < 3x one token round trip",
            (name,),
            "result.p99_ms",
            Comparison.BELOW,
            3,
            why="every caller waits for the one shared token exchange, not for a queue of them",
            scale_by="notes.token_round_trip_ms",
            unit="{} ms",
        ),
    )


def bench_targets(phases: Sequence[Phase]) -> tuple[Target, ...]:
    """The targets of issue 5, the cold-cache ones derived from the cold scenarios."""
    cold = tuple(
        target
        for phase in phases
        for scenario in phase.scenarios
        if scenario.expected_token_requests is not None
        for target in cold_targets(scenario.name, scenario.expected_token_requests)
    )
    return (*HOT_PATH_TARGETS, *cold, *RESOLVE_TARGETS, *RESOLVE_CACHE_TARGETS, NO_ERRORS)


SOAK_ERRORS = Target(
    "no errors during the soak",
    ("soak",),
    "errors",
    Comparison.EQUALS,
    0,
    why="minutes at 70 % of capacity, with cached tokens expiring under load, must not "
    "fail a single call",
)
SOAK_FLAT_RSS = Target(
    "RSS flat after the first minute",
    ("soak",),
    "rss_growth_after_60s_pct",
    Comparison.WITHIN,
    5.0,
    why="after a minute the caches and pools are full: RSS that keeps growing is a leak",
    unit="{} %",
)
SOAK_TARGETS: tuple[Target, ...] = (SOAK_ERRORS, SOAK_FLAT_RSS)

LEAK_WITHIN_10_PCT = Target(
    "RSS after 1M hot calls within 10 % of RSS after 100k",
    ("leak",),
    "ratio",
    Comparison.WITHIN,
    0.10,
    centre=1.0,
    why="the hot path keeps nothing per call: 900,000 more calls must not grow the process",
    unit="x{}",
)
LEAK_TARGETS: tuple[Target, ...] = (LEAK_WITHIN_10_PCT,)


# --------------------------------------------------------------------------- evaluation


def evaluate(targets: Iterable[Target], measured: Mapping[str, Mapping[str, Any]]) -> Evaluation:
    """Every target against ``measured`` (subject name -> its JSON), in the targets' order.

    A target none of whose subjects was measured (``--only``, a probe that did not run) is
    left out rather than failed; a measured subject without the metric (None: no baseline
    ratio, say) fails.
    """
    outcomes = []
    for target in targets:
        subjects = _subjects(target, measured)
        if subjects:
            outcomes.append(_outcome(target, subjects, measured))
    return Evaluation(outcomes)


def _subjects(target: Target, measured: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if target.subjects == (EVERY_SCENARIO,):
        return [name for name, subject in measured.items() if "scenario" in subject]
    return [name for name in target.subjects if name in measured]


def _outcome(
    target: Target, subjects: list[str], measured: Mapping[str, Mapping[str, Any]]
) -> Outcome:
    readings = [_reading(target, measured[name]) for name in subjects]
    met = all(reading.met for reading in readings)
    if target.explain is not None:
        detail = str(_lookup(measured[subjects[0]], target.explain))
    elif len(readings) == 1:
        detail = f"{readings[0].value_text} ({readings[0].limit_text})"
    else:
        detail = _several(subjects, readings)
    return Outcome(target.name, met, detail)


@dataclass(frozen=True)
class _Reading:
    met: bool
    value_text: str
    limit_text: str


def _reading(target: Target, subject: Mapping[str, Any]) -> _Reading:
    value = _lookup(subject, target.metric)
    limit, limit_text = _limit(target, subject)
    if value is None:
        return _Reading(False, "not measured", limit_text)
    met = target.comparison.holds(value, limit, target.centre)
    return _Reading(met, _format(target.unit, value), limit_text)


def _limit(target: Target, subject: Mapping[str, Any]) -> tuple[float, str]:
    """The limit for this subject (``scale_by`` makes it the subject's own), and its text."""
    if target.comparison is Comparison.WITHIN:
        return target.limit, f"within {target.centre} ± {target.limit}"
    if target.scale_by is None:
        return target.limit, f"{target.comparison.value} {_format(target.unit, target.limit)}"
    scale = _lookup(subject, target.scale_by)
    limit = target.limit * scale if scale is not None else math.nan  # nan: never met
    scale_name = target.scale_by.rsplit(".", 1)[-1]
    return limit, (
        f"{target.comparison.value} {target.limit} x {scale_name} "
        f"({_format(target.unit, scale)}) = {_format(target.unit, round(limit, 2))}"
    )


def _several(subjects: list[str], readings: list[_Reading]) -> str:
    """One subject's value each; for many subjects only the misses (or one line if none)."""
    shown = [
        (name, reading)
        for name, reading in zip(subjects, readings, strict=True)
        if len(subjects) <= 3 or not reading.met
    ]
    if not shown:
        values = {reading.value_text for reading in readings}
        value = values.pop() if len(values) == 1 else "met"
        return f"{value} in all {len(subjects)} ({readings[0].limit_text})"
    listed = ", ".join(f"{name}: {reading.value_text}" for name, reading in shown)
    return f"{listed} ({shown[0][1].limit_text})"


def _lookup(subject: Mapping[str, Any], path: str) -> Any:
    value: Any = subject
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _format(unit: str, value: Any) -> str:
    try:
        return unit.format(value)
    except (TypeError, ValueError):
        return str(value)
