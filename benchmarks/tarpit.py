"""Tarpit isolation: a slow upstream must cost its own budget, not another upstream's latency.

    python -m benchmarks.tarpit                 # 3 rounds of 200 calls per phase (about 30 s)
    python -m benchmarks.tarpit --rounds 1 --calls 50

One in-process vregistry server (the real Resolver, gRPC server and per-upstream pools)
with two upstreams, each the only upstream of its registry: a tarpit stand-in
(tests/support/hostile.py: answers ``/v2/`` and then trickles one byte every 0.5 s of every
other response) and a real docker-registry. Each round measures the second upstream's
ResolveUpstream latency, one call after another from a gRPC client in the same process:

* ``baseline``: nothing in flight to the tarpit;
* ``tarpit``: 20 ResolveUpstream calls into the tarpit held open (``max_in_flight_per_upstream``
  20, ``request_timeout_seconds`` 5: each is held until the hard deadline ends it); the phase
  checks the tarpit still holds all 20 connections when it ends.

Between rounds the tarpit's connections are waited out (closed by the hard deadline), so each
baseline is clean. The figures pool every round's samples; the ratios are tarpit over baseline
in the same process tree. Targets as data (``TARPIT_TARGETS``, checked with
``benchmarks.targets.evaluate``): exit 1 when one is missed. Printed as a table and written to
benchmarks/out/tarpit-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from benchmarks.environment import ROOT  # noqa: F401  (puts the repository root on sys.path)
from benchmarks.targets import Comparison, Target, evaluate
from tests.support.hostile import Tarpit
from tests.support.registry import start_registry
from tests.support.service import Service, make_config, start_service, upstream_entry
from tests.support.waiting import until

OUT = Path(__file__).parent / "out"
PATH = "library/alpine/manifests/latest"
HELD = 20
HARD_DEADLINE_SECONDS = 5.0
TRICKLE_SECONDS = 0.5

TARPIT_TARGETS: tuple[Target, ...] = (
    Target(
        "second upstream p99 <= 2x its no-tarpit baseline",
        ("tarpit",),
        "p99_ratio",
        Comparison.AT_MOST,
        2.0,
        why="a tarpit holding 20 calls costs its own pool and in-flight budget, not another "
        "upstream's (issue 10, attack 7)",
        unit="x{}",
    ),
    Target(
        "second upstream p50 <= 1.5x its no-tarpit baseline",
        ("tarpit",),
        "p50_ratio",
        Comparison.AT_MOST,
        1.5,
        why="the typical call must not notice the tarpit at all",
        unit="x{}",
    ),
    Target(
        "the tarpit held all 20 calls through every measurement",
        ("tarpit",),
        "min_held",
        Comparison.AT_LEAST,
        HELD,
        why="otherwise the tarpit phase measured less than the attack",
    ),
)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _summary(samples: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in samples]
    return {
        "calls": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(_percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
    }


async def _measure(service: Service, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        # refresh: each call asks the upstream (a cached answer would not touch its pool).
        await service.resolve("fast", PATH, timeout=10, refresh=True)
        samples.append(time.perf_counter() - started)
    return samples


async def _held_call(service: Service, number: int) -> None:
    # Each held call asks for its own tag: identical misses in flight share one check.
    path = f"library/alpine/manifests/held-{number}"
    with contextlib.suppress(grpc.aio.AioRpcError):  # the hard deadline ends it: expected
        await service.resolve("slow", path, timeout=HARD_DEADLINE_SECONDS + 2)


async def run(rounds: int, calls: int) -> dict[str, Any]:
    registry = start_registry("none")
    tarpit = Tarpit(interval=TRICKLE_SECONDS)
    try:
        registry.push_image("library/alpine", "latest", kind="docker")
        config = make_config(
            [upstream_entry("tarpit", tarpit.url), upstream_entry("fast", registry.url)],
            {"slow": ["tarpit"], "fast": ["fast"]},
            request_timeout_seconds=HARD_DEADLINE_SECONDS, probe_timeout_seconds=HARD_DEADLINE_SECONDS,
            probe_retries=0, circuit_failure_threshold=1000, max_in_flight_per_upstream=HELD,
            max_connections_per_upstream=HELD,
        )  # fmt: skip
        service = await start_service(config)
        try:
            await _measure(service, 20)  # warm: discovery, connections
            baseline: list[float] = []
            during: list[float] = []
            held_at_end: list[int] = []
            for _ in range(rounds):
                await until(
                    lambda: tarpit.open_connections == 0, 15, shown=lambda: tarpit.open_connections
                )
                baseline += await _measure(service, calls)
                held = [asyncio.create_task(_held_call(service, n)) for n in range(HELD)]
                await until(
                    lambda: tarpit.open_connections >= HELD,
                    5,
                    shown=lambda: tarpit.open_connections,
                )
                during += await _measure(service, calls)
                held_at_end.append(tarpit.open_connections)
                await asyncio.gather(*held)
            await until(
                lambda: tarpit.open_connections == 0, 15, shown=lambda: tarpit.open_connections
            )
        finally:
            await service.close()
    finally:
        tarpit.stop()
        registry.close()
    base, tar = _summary(baseline), _summary(during)
    tar.update(
        p50_ratio=round(tar["p50_ms"] / base["p50_ms"], 2),
        p99_ratio=round(tar["p99_ms"] / base["p99_ms"], 2),
        min_held=min(held_at_end),
        held_at_end=held_at_end,
    )
    return {"baseline": base, "tarpit": tar}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200, help="calls per phase and round")
    args = parser.parse_args(argv)
    measured = asyncio.run(run(args.rounds, args.calls))
    evaluation = evaluate(TARPIT_TARGETS, measured)
    print(
        f"{'phase':<10} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'ratio p50/p99':>14}"
    )
    for phase, row in measured.items():
        ratio = f"x{row['p50_ratio']} / x{row['p99_ratio']}" if "p50_ratio" in row else ""
        print(
            f"{phase:<10} {row['calls']:>6} {row['p50_ms']:>8} {row['p99_ms']:>8} "
            f"{row['max_ms']:>8} {ratio:>14}"
        )
    for outcome in evaluation.outcomes:
        print(f"{'met   ' if outcome.met else 'MISSED'} {outcome.name}: {outcome.detail}")
    OUT.mkdir(exist_ok=True)
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rounds": args.rounds,
        "calls_per_phase_and_round": args.calls,
        "held": HELD,
        "trickle_seconds": TRICKLE_SECONDS,
        "hard_deadline_seconds": HARD_DEADLINE_SECONDS,
        "measured": measured,
        "checks": [o.as_check() for o in evaluation.outcomes],
    }
    (OUT / "tarpit-latest.json").write_text(json.dumps(report, indent=2) + "\n")
    return 1 if evaluation.failures else 0


if __name__ == "__main__":
    sys.exit(main())
