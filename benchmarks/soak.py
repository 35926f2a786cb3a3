"""The soak and the leak check: one service process under long hot-path load, RSS watched.

Soak: hot GetAuthHeaders at 70 % of the capacity measured first, for ``seconds``, with a
ResolveUpstream stream at 10 req/s beside it (a second ghz, run from a thread), RSS sampled
every 5 s. Leak: RSS after 100,000 and after 1,000,000 hot calls at full speed.
Both return their figures and the evaluation of ``SOAK_TARGETS`` / ``LEAK_TARGETS``.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks.environment import Environment, ServerProcess, service_process
from benchmarks.loadgen import LoadResult, run_ghz
from benchmarks.measure import GHZ_OUT, MB, OUT
from benchmarks.procstat import RssSampler, cpu_seconds, rss_bytes
from benchmarks.scenarios import HOT, RESOLVE
from benchmarks.targets import (
    LEAK_TARGETS,
    LEAK_WITHIN_10_PCT,
    SOAK_FLAT_RSS,
    SOAK_TARGETS,
    Evaluation,
    evaluate,
)

# Below capacity so that the ResolveUpstream stream and GC pauses never push the hot path
# into queueing: the soak looks for errors and growth, not for the limit.
SOAK_LOAD = 0.7
CAPACITY_CALLS = 30_000  # about 10 s at the ~3,000 req/s one process does
RESOLVE_RPS = 10
RSS_SAMPLE_SECONDS = 5.0
# RSS before this is warm-up (caches, connection pools, allocator arenas) and not judged.
SETTLE_SECONDS = 60.0
# How long the ResolveUpstream stream may outlast the hot one before the soak gives up.
RESOLVE_GRACE_SECONDS = 120.0

LEAK_MARKS = (100_000, 1_000_000)
# Let the last calls' buffers be freed before RSS is read.
LEAK_SETTLE_SECONDS = 2.0


class InThread:
    """``work()`` in a daemon thread; ``result`` waits for it and re-raises its exception."""

    def __init__(self, name: str, work: Callable[[], LoadResult]) -> None:
        self._work = work
        self._result: LoadResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._work()
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc

    def result(self, timeout: float) -> LoadResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self._thread.name} still running after {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def start_service(env: Environment, name: str, workers: int = 1) -> ServerProcess:
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    GHZ_OUT.mkdir(parents=True, exist_ok=True)
    return service_process(env.config("main"), logs, name=name, workers=workers).start()


def hot_calls(service: ServerProcess, out: str, total: int, rps: float | None = None) -> LoadResult:
    return run_ghz(
        service.target, "GetAuthHeaders", dict(HOT), out=GHZ_OUT / out, total=total, rps=rps
    )


def resolve_stream(service: ServerProcess, seconds: float) -> InThread:
    """ResolveUpstream at RESOLVE_RPS for ``seconds``, through the 200 ms proxies, in a thread."""
    return InThread(
        "soak-resolve",
        lambda: run_ghz(
            service.target,
            "ResolveUpstream",
            dict(RESOLVE),
            out=GHZ_OUT / "soak-resolve.json",
            connections=1,
            concurrency=8,
            total=int(RESOLVE_RPS * seconds),
            rps=RESOLVE_RPS,
        ),
    )


def slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes): bytes per second."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [float(p[1]) for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def soak_figures(
    capacity: LoadResult,
    rate: float,
    hot: LoadResult,
    resolve: LoadResult,
    cpu: float,
    samples: list[tuple[float, int]],
) -> dict[str, Any]:
    # A soak shorter than the settling time is judged on all its samples.
    settled = [rss for t, rss in samples if t >= SETTLE_SECONDS] or [rss for _, rss in samples]
    first, last = settled[0], settled[-1]
    growth = (last - first) / first if first else 0.0
    return {
        "capacity_rps": capacity.rps,
        "target_rps": round(rate),
        "hot": hot.to_json(),
        "resolve": resolve.to_json(),
        "errors": hot.errors + resolve.errors,
        "cpu_s_per_1k": round(cpu / max(hot.count + resolve.count, 1) * 1000, 3),
        "rss_mb_after_60s": round(first / MB, 1),
        "rss_mb_end": round(last / MB, 1),
        "rss_mb_peak": round(max(rss for _, rss in samples) / MB, 1),
        "rss_growth_after_60s_pct": round(100 * growth, 1),
        "rss_slope_kb_per_min": round(
            slope([(t, rss) for t, rss in samples if t >= SETTLE_SECONDS]) * 60 / 1024, 1
        ),
        "rss_samples_mb": [(round(t), round(rss / MB, 1)) for t, rss in samples],
    }


def run_soak(
    env: Environment, seconds: float, workers: int = 1
) -> tuple[dict[str, Any], Evaluation]:
    """``seconds`` at SOAK_LOAD of the measured capacity; the figures and their verdict."""
    service = start_service(env, "soak", workers)
    try:
        capacity = hot_calls(service, "soak-capacity.json", CAPACITY_CALLS)
        rate = SOAK_LOAD * capacity.rps
        print(
            f"capacity {capacity.rps:,.0f} req/s; soaking {seconds:.0f} s at {rate:,.0f} req/s "
            f"(+ ResolveUpstream at {RESOLVE_RPS} req/s)",
            flush=True,
        )
        sampler = RssSampler(service.pid, interval=RSS_SAMPLE_SECONDS).start()
        try:
            cpu_before = cpu_seconds(service.pids())
            resolve_run = resolve_stream(service, seconds)
            hot = hot_calls(service, "soak-hot.json", int(rate * seconds), rps=rate)
            resolve = resolve_run.result(timeout=seconds + RESOLVE_GRACE_SECONDS)
            cpu = cpu_seconds(service.pids()) - cpu_before
        finally:
            sampler.stop()
    finally:
        service.stop()
    figures = soak_figures(capacity, rate, hot, resolve, cpu, sampler.samples)
    evaluation = evaluate(SOAK_TARGETS, {"soak": figures})
    figures["flat"] = evaluation.met(SOAK_FLAT_RSS)
    printed = {k: v for k, v in figures.items() if k != "rss_samples_mb"}
    print(json.dumps(printed, indent=2), flush=True)
    return figures, evaluation


def run_leak(env: Environment) -> tuple[dict[str, Any], Evaluation]:
    """RSS after each of LEAK_MARKS hot calls at full speed; the figures and their verdict."""
    service = start_service(env, "leak")
    figures: dict[str, Any] = {}
    try:
        done = 0
        for mark in LEAK_MARKS:
            result = hot_calls(service, f"leak-{mark}.json", mark - done)
            done = mark
            time.sleep(LEAK_SETTLE_SECONDS)
            rss = rss_bytes(service.pids())
            figures[str(mark)] = {
                "rss_mb": round(rss / MB, 1),
                "errors": result.errors,
                "rps": result.rps,
            }
            print(
                f"after {mark:,} calls: RSS {rss / MB:.1f} MB, errors {result.errors}, "
                f"{result.rps:,.0f} req/s",
                flush=True,
            )
    finally:
        service.stop()
    first, last = (figures[str(mark)]["rss_mb"] for mark in (LEAK_MARKS[0], LEAK_MARKS[-1]))
    ratio = last / first
    figures["ratio"] = round(ratio, 3)
    evaluation = evaluate(LEAK_TARGETS, {"leak": figures})
    figures["within_10_pct"] = evaluation.met(LEAK_WITHIN_10_PCT)
    verdict = "within" if figures["within_10_pct"] else "OUTSIDE"
    print(f"RSS ratio 1M/100k = {ratio:.3f} ({verdict} 10 %)")
    return figures, evaluation
