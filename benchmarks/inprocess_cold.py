"""The cold ResolveUpstream's own CPU, without gRPC: the servicer awaited in this process.

The benchmark's environment (``benchmarks.environment``: real Redis, registries and the three
delaying proxies, 200 ms each) with ``refresh`` set, so every call checks the three upstreams
and writes the answer to the resolution cache, as the ``cold`` scenario does. Two arrival
patterns, in alternating rounds:

* ``lockstep``: 16 calls at a time, the next 16 once they have all answered;
* ``spread``: 16 callers, each calling again as soon as it is answered, started 12.5 ms apart,
  as ghz's callers are once their first wave has passed.

For each: the process's CPU per call (``time.process_time``) and, per call, the event loop's
iterations (selector calls), the blocking ones among them (a timeout other than 0: the loop had
nothing to do and slept) and the socket events they returned. The difference between the two
patterns is what calls arriving apart cost (benchmarks/RESULTS.md, "Hot-path CPU at a fixed
rate", "Cold CPU, two more questions answered").

    .venv/bin/python -m benchmarks.inprocess_cold [--rounds 3 --calls-per-caller 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.environment import PASSWORD, PASSWORD_ENV, environment  # noqa: E402
from benchmarks.scenarios import RESOLVE, RESOLVE_IN_FLIGHT  # noqa: E402
from vregistry.v1 import upstream_service_pb2 as pb  # noqa: E402
from vregistry_server.config import load_config  # noqa: E402
from vregistry_server.resolver import Resolver  # noqa: E402
from vregistry_server.rpc.upstream_servicer import UpstreamServicer  # noqa: E402
from vregistry_server.runtime.logs import AuditLines, configure_logging  # noqa: E402
from vregistry_server.runtime.metrics import PROMETHEUS  # noqa: E402

DELAY_SECONDS = 0.2  # the delaying proxies' (benchmarks.environment)


class _Context:
    """What the servicer asks of a gRPC context on this path."""

    def time_remaining(self) -> float:
        return 20.0


class LoopCounter:
    """Counts the selector's calls on the running loop (asyncio's selector event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.selects = self.blocking = self.events = 0
        selector = loop._selector  # type: ignore[attr-defined]
        inner: Callable[..., list[Any]] = selector.select

        def select(timeout: float | None = None) -> list[Any]:
            self.selects += 1
            self.blocking += timeout is None or timeout > 0
            ready = inner(timeout)
            self.events += len(ready)
            return ready

        selector.select = select

    def reset(self) -> None:
        self.selects = self.blocking = self.events = 0


async def _measure(
    calls: int, work: Callable[[], Awaitable[None]], counter: LoopCounter
) -> dict[str, float]:
    counter.reset()
    started = time.process_time()
    await work()
    cpu = time.process_time() - started
    return {
        "cpu_ms_per_call": cpu / calls * 1000,
        "selects_per_call": counter.selects / calls,
        "blocking_per_call": counter.blocking / calls,
        "events_per_call": counter.events / calls,
    }


async def run(config: Path, rounds: int, per_caller: int) -> dict[str, list[dict[str, float]]]:
    resolver = Resolver(load_config(config), observer=PROMETHEUS)
    servicer = UpstreamServicer(resolver, PROMETHEUS, audit_log=AuditLines())
    context, request = _Context(), pb.ResolveUpstreamRequest(**RESOLVE)
    counter = LoopCounter(asyncio.get_running_loop())

    async def call() -> None:
        await servicer.ResolveUpstream(request, context)  # type: ignore[arg-type]

    async def lockstep() -> None:
        for _ in range(per_caller):
            await asyncio.gather(*(call() for _ in range(RESOLVE_IN_FLIGHT)))

    async def caller(index: int) -> None:
        await asyncio.sleep(index * DELAY_SECONDS / RESOLVE_IN_FLIGHT)
        for _ in range(per_caller):
            await call()

    async def spread() -> None:
        await asyncio.gather(*(caller(i) for i in range(RESOLVE_IN_FLIGHT)))

    patterns = {"lockstep": lockstep, "spread": spread}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in patterns}
    try:
        await lockstep()  # warm: connections, tokens, the answer's message
        calls = per_caller * RESOLVE_IN_FLIGHT
        for index in range(rounds):
            order = list(patterns) if index % 2 == 0 else list(reversed(patterns))
            for name in order:
                row = await _measure(calls, patterns[name], counter)
                results[name].append(row)
                print(f"round {index + 1} {name}: {_format(row)}", flush=True)
    finally:
        await resolver.aclose()
    return results


def _format(row: dict[str, float]) -> str:
    return (
        f"{row['cpu_ms_per_call']:.3f} ms CPU per call, per call {row['selects_per_call']:.1f} "
        f"loop iterations, {row['blocking_per_call']:.1f} blocking, "
        f"{row['events_per_call']:.1f} events"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each pattern")
    parser.add_argument("--calls-per-caller", type=int, default=20, help="calls per caller")
    args = parser.parse_args(argv)
    os.environ[PASSWORD_ENV] = PASSWORD
    configure_logging("info")
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vregistry-cold-")))
        # The audit lines go to a file, as a server's stderr would, not to this terminal.
        audit = stack.enter_context(open(work / "audit.log", "w"))
        logging.getLogger().handlers[0].setStream(audit)  # type: ignore[attr-defined]
        env = stack.enter_context(environment(work / "env"))
        results = asyncio.run(run(env.config("inprocess"), args.rounds, args.calls_per_caller))
    for name, rows in results.items():
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(f"{name}: median {_format(median)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
