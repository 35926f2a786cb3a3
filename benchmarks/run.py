"""Benchmark vregistry-server against a bare grpc.aio baseline, with ghz, on loopback.

    python -m benchmarks.run                # every scenario (about 8 minutes), table + JSON
    python -m benchmarks.run --only UrlFor  # one scenario (and its baseline); repeatable
    python -m benchmarks.run --list         # the scenario names
    python -m benchmarks.run --profile      # also py-spy profiles of the hot path
    python -m benchmarks.run --soak 600     # 10 minutes at 70 % of the measured capacity
    python -m benchmarks.run --leak         # RSS after 100,000 and 1,000,000 hot-path calls

The server runs as a subprocess (``vregistry-server --config ...``) with real Redis, a
real docker-registry with token auth, the test suite's token server and delaying proxies.
The baseline runs in the same process layout under the same load in the same run; every
scenario is reported as a ratio to it. Results go to benchmarks/out/ (gitignored).

The scenarios are in benchmarks/scenarios.py, the targets in benchmarks/targets.py. Exit
status: 0 when every target is met; 3 when a scenario target is missed, 1 when a soak or
leak target is (and 1 on a crash).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from benchmarks.environment import Environment, environment
from benchmarks.loadgen import find_ghz
from benchmarks.machine import machine
from benchmarks.measure import GHZ_OUT, OUT
from benchmarks.scenarios import Phase, plan
from benchmarks.soak import run_leak, run_soak
from benchmarks.suite import run_suite, scenario_names, select
from benchmarks.targets import Evaluation

# The exit status when targets are missed, by report name. The scenarios' 3 (not 1) tells
# a missed target from a crash; soak and leak have always exited 1.
EXIT_TARGETS_MISSED = {"results": 3, "soak": 1, "leak": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="vregistry-server benchmarks")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--profile", action="store_true", help="py-spy the hot path and baseline")
    parser.add_argument("--no-uvloop", action="store_true", help="skip the uvloop comparison")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per pair")
    parser.add_argument(
        "--token-delay-ms",
        type=int,
        default=100,
        help="second cold-cache run with the token server this far away",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENARIO",
        help="run only this scenario (and its baseline); repeatable; see --list",
    )
    parser.add_argument("--list", action="store_true", help="print the scenario names and exit")
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="soak at 70%% of capacity for this long instead of the scenarios",
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes for --soak")
    parser.add_argument("--leak", action="store_true", help="RSS after 100k and 1M hot-path calls")
    return parser.parse_args(argv)


def planned_phases(args: argparse.Namespace) -> tuple[Phase, ...]:
    phases = plan(rounds=args.rounds, token_delay_ms=args.token_delay_ms, uvloop=not args.no_uvloop)
    return select(phases, args.only) if args.only else phases


def checks(evaluation: Evaluation) -> list[tuple[str, bool, str]]:
    return [outcome.as_check() for outcome in evaluation.outcomes]


def run_mode(
    args: argparse.Namespace, env: Environment, report: dict[str, Any]
) -> tuple[str, Evaluation]:
    """Soak, leak or the scenarios, into ``report``: the report's name and the verdict."""
    if args.soak:
        report["soak"], evaluation = run_soak(env, args.soak, args.workers)
        report["checks"] = checks(evaluation)
        return "soak", evaluation
    if args.leak:
        report["leak"], evaluation = run_leak(env)
        report["checks"] = checks(evaluation)
        return "leak", evaluation
    phases = planned_phases(args)
    results, evaluation = run_suite(env, phases, duration=args.duration, profile=args.profile)
    report.update(results)
    print("\n" + report["table"])
    return "results", evaluation


def write_report(report: dict[str, Any], name: str, stamp: str) -> None:
    """benchmarks/out/<name>-<stamp>.json, and a copy as <name>-latest.json."""
    path = OUT / f"{name}-{stamp}.json"
    text = json.dumps(report, indent=2)
    path.write_text(text)
    (OUT / f"{name}-latest.json").write_text(text)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(scenario_names(planned_phases(args))))
        return 0
    planned_phases(args)  # an unknown --only name fails now, not after the environment starts
    find_ghz()
    GHZ_OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")  # when the run started
    arguments = sys.argv[1:] if argv is None else argv
    report: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python -m benchmarks.run", *arguments]),
    }
    print(json.dumps(report["machine"]), flush=True)
    with environment(OUT / "env") as env:
        name, evaluation = run_mode(args, env, report)
    write_report(report, name, stamp)
    return EXIT_TARGETS_MISSED[name] if evaluation.failures else 0


if __name__ == "__main__":
    sys.exit(main())
