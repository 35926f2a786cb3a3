"""A/B of package variants: the baseline and copies of ``vregistry_server`` under one load.

Each variant is a directory holding a ``vregistry_server`` package (a copy of the tree with
one change, e.g. ``git archive <commit> server/vregistry_server``), or ``-`` for the
installed tree; each runs as its own ``vregistry-server`` process with that directory first
on ``PYTHONPATH``, beside the bare baseline, in the benchmark's environment (real Redis,
registries, token server, delaying proxies: ``benchmarks/environment.py``). Rounds are
interleaved and their order reversed every other round; each round warms up, then measures
the **server CPU per call** (utime + stime of the process tree, from /proc) and req/s. On a
shared VM the same code moves by tens of percent between rounds at saturation, so read
many-round medians, and prefer ``--rps`` (a fixed offered rate) for small differences. A
process also keeps its own luck (hash seed, memory layout) through every round: three
processes of one tree gave x0.95, x1.12 and x1.05; ``--fresh`` starts a new process of every
variant and of the baseline for each round (benchmarks/RESULTS.md, "Saturated, one process is
not one sample").

    .venv/bin/python -m benchmarks.ab --scenario hot --rounds 12 --calls 4000 \\
        --variant now=- --variant before=/tmp/before [--variant uv=-@uvloop] [--rps 1500]

Results: the medians on stdout, every round in ``benchmarks/out/ab-<scenario>-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.environment import (  # noqa: E402
    ServerProcess,
    baseline_process,
    environment,
    response_sizes,
    service_process,
)
from benchmarks.loadgen import run_ghz  # noqa: E402
from benchmarks.procstat import cpu_seconds  # noqa: E402
from benchmarks.scenarios import (  # noqa: E402
    HOT,
    HOT_IN_FLIGHT,
    RESOLVE,
    RESOLVE_FROM_CACHE,
    RESOLVE_IN_FLIGHT,
    URL_FOR,
)

OUT = ROOT / "benchmarks" / "out"
# name: (method, request, calls in flight)
SCENARIOS: dict[str, tuple[str, Any, int]] = {
    "hot": ("GetAuthHeaders", HOT, HOT_IN_FLIGHT),
    "url": ("UrlFor", URL_FOR, HOT_IN_FLIGHT),
    "from-cache": ("ResolveUpstream", RESOLVE_FROM_CACHE, HOT_IN_FLIGHT),
    "cold": ("ResolveUpstream", RESOLVE, RESOLVE_IN_FLIGHT),
}


def variant_starters(
    args: argparse.Namespace, config: Path, logs: Path
) -> dict[str, Callable[[], ServerProcess]]:
    """How to start each variant's process (``--variant NAME=DIR[@LOOP]``)."""

    def variant(name: str, directory: str, loop: str) -> Callable[[], ServerProcess]:
        def start() -> ServerProcess:
            server = service_process(config, logs, name=f"ab-{name}", loop=loop or "asyncio")
            if directory not in ("", "-"):
                server.env["PYTHONPATH"] = str(Path(directory).resolve())
            return server.start()

        return start

    variants = {}
    for spec in args.variant:
        name, _, target = spec.partition("=")
        directory, _, loop = target.partition("@")
        variants[name] = variant(name, directory, loop)
    return variants


def _sizes_of(start: Callable[[], ServerProcess]) -> dict[str, int]:
    """The response sizes of a process started only to ask them (with --fresh)."""
    sizing = start()
    try:
        return response_sizes(sizing.target)
    finally:
        sizing.stop()


def measure_round(server: ServerProcess, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """One round of ``args.scenario`` on ``server``: warm-up, then CPU per call and req/s."""
    method, request, in_flight = SCENARIOS[args.scenario]
    common: dict[str, Any] = {"connections": 4, "concurrency": args.in_flight or in_flight}
    run_ghz(server.target, method, dict(request), out=out / "warmup.json",
            total=max(args.calls // 5, 500), **common)  # fmt: skip
    before = cpu_seconds(server.pids())
    result = run_ghz(server.target, method, dict(request), out=out / "run.json",
                     total=args.calls, rps=args.rps, **common)  # fmt: skip
    cpu = cpu_seconds(server.pids()) - before
    calls = max(result.count, 1)
    return {"us_per_call": cpu / calls * 1e6, "rps": result.rps, "p99_ms": result.p99_ms,
            "errors": result.errors}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="hot")
    parser.add_argument(
        "--variant", action="append", required=True,
        help="NAME=DIR or NAME=- (the installed tree), optionally @uvloop: NAME=-@uvloop",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=4000, help="measured calls per round")
    parser.add_argument("--rps", type=float, default=None, help="a fixed offered rate")
    parser.add_argument(
        "--fresh", action="store_true",
        help="a new process of the baseline and of each variant for every round",
    )  # fmt: skip
    parser.add_argument(
        "--in-flight", type=int, default=None,
        help="calls in flight (the scenario's own by default: 64, or 16 for cold)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    work = OUT / "ab"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rounds: dict[str, list[dict[str, float]]] = {}
    with environment(work) as env:
        variants = variant_starters(args, env.config("ab"), logs)
        # --fresh: a new process for every round, so that no process's own luck (its hash
        # seed, its memory layout) weighs on every round of its variant.
        servers: dict[str, ServerProcess] = {}
        try:
            if args.fresh:
                sizes = _sizes_of(next(iter(variants.values())))
            else:
                for name, start in variants.items():
                    servers[name] = start()  # inside the try: a failed start stops the others
                sizes = response_sizes(next(iter(servers.values())).target)
            # The baseline answers with the service's response sizes, so it starts after them.
            starters = {"baseline": lambda: baseline_process(logs, sizes).start(), **variants}
            if not args.fresh:
                servers = {"baseline": starters["baseline"](), **servers}
            for number in range(args.rounds):
                order = list(starters)
                if number % 2:
                    order.reverse()
                for name in order:
                    server = servers[name] if not args.fresh else starters[name]()
                    try:
                        row = measure_round(server, args, work)
                    finally:
                        if args.fresh:
                            server.stop()
                    rounds.setdefault(name, []).append(row)
                    print(f"round {number + 1} {name}: {row['us_per_call']:.0f} µs/call, "
                          f"{row['rps']:.0f} req/s, p99 {row['p99_ms']:.1f} ms", flush=True)  # fmt: skip
        finally:
            for server in servers.values():
                server.stop()
    _report(rounds)
    path = OUT / f"ab-{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "rounds": rounds}, indent=1))
    print(f"wrote {path}")
    return 0


def _report(rounds: dict[str, list[dict[str, float]]]) -> None:
    baseline = rounds["baseline"]
    for name, rows in rounds.items():
        cpu = statistics.median(r["us_per_call"] for r in rows)
        line = f"{name}: median {cpu:.0f} µs/call, {statistics.median(r['rps'] for r in rows):.0f} req/s"
        if name != "baseline":
            ratio = statistics.median(
                r["rps"] / b["rps"] for r, b in zip(rows, baseline, strict=True)
            )
            line += f", req/s vs baseline x{ratio:.2f} (median of the rounds' ratios)"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
