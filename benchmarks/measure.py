"""Measuring one scenario: a ghz run plus the server's CPU, RSS and Redis commands around it."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.environment import Environment, ServerProcess
from benchmarks.loadgen import LoadResult, run_ghz
from benchmarks.procstat import RssSampler, cpu_seconds
from benchmarks.scenarios import Scenario, ServerKind

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
GHZ_OUT = OUT / "ghz"  # every ghz report, warm-ups included
MB = 1024 * 1024


@dataclass
class Row:
    scenario: str
    server: ServerKind
    method: str
    load: str
    result: LoadResult
    cpu_s_per_1k: float
    peak_rss_mb: float
    redis_cmds_per_call: float | None = None
    baseline: str | None = None  # the scenario name of the matching baseline row
    rps_ratio: float | None = None
    p99_ratio: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["result"] = self.result.to_json()
        return data


def ratio(value: float, base: float) -> float | None:
    return round(value / base, 2) if base else None


def compare_with_baseline(row: Row, base: Row) -> None:
    row.baseline = base.scenario
    row.rps_ratio = ratio(row.result.rps, base.result.rps)
    row.p99_ratio = ratio(row.result.p99_ms, base.result.p99_ms)


def summary(row: Row) -> str:
    r = row.result
    ratios = f" | x{row.rps_ratio} rps, x{row.p99_ratio} p99" if row.rps_ratio else ""
    if "upstream_proxy_p99_ms" in row.notes:  # the delaying proxies' own share of the tail
        ratios += (
            f" | upstream proxies p50 {row.notes['upstream_proxy_p50_ms']} ms,"
            f" p99 {row.notes['upstream_proxy_p99_ms']} ms,"
            f" {row.notes['upstream_proxy_requests'] / max(r.count, 1):.2f} requests per call,"
            f" backend p99 {row.notes['upstream_backend_p99_ms']} ms"
        )
    return (
        f"{row.scenario}: {r.rps:,.0f} req/s, p50 {r.p50_ms} ms, p99 {r.p99_ms} ms, "
        f"errors {r.errors}, CPU {row.cpu_s_per_1k} s/1k, RSS {row.peak_rss_mb} MB{ratios}"
    )


def median_by_rps(rows: list[Row]) -> Row:
    return sorted(rows, key=lambda r: r.result.rps)[len(rows) // 2]


@dataclass
class Bench:
    """The rows measured so far, in the order the table shows them."""

    env: Environment
    duration: float  # seconds per measured run (--duration)
    rows: list[Row] = field(default_factory=list)

    def find(self, scenario: str) -> Row | None:
        return next((r for r in self.rows if r.scenario == scenario), None)

    def measure_once(self, scenario: Scenario, server: ServerProcess) -> Row:
        """Measure ``scenario``, compare it with its baseline row if that was measured."""
        row = self.measure(scenario, server, scenario.name)
        base = self.find(scenario.baseline) if scenario.baseline else None
        if base is not None:
            compare_with_baseline(row, base)
        self.rows.append(row)
        print(f"  {summary(row)}", flush=True)
        return row

    def measure_rounds(self, runs: list[tuple[Scenario, ServerProcess]], count: int) -> None:
        """Each run ``count`` times, interleaved; keep the median round of each.

        The machine may be shared: alternating the baseline and the service makes a burst
        of outside load hit both rather than one.
        """
        seen: dict[str, list[Row]] = {scenario.name: [] for scenario, _ in runs}
        for index in range(count):
            for scenario, server in runs:
                row = self.measure(scenario, server, f"{scenario.name}#{index + 1}")
                print(f"  {summary(row)}", flush=True)
                seen[scenario.name].append(row)
        for scenario, _ in runs:
            row = median_by_rps(seen[scenario.name])
            row.scenario = scenario.name
            row.notes["rounds_rps"] = [r.result.rps for r in seen[scenario.name]]
            row.notes["rounds_p99_ms"] = [r.result.p99_ms for r in seen[scenario.name]]
            base = self.find(scenario.baseline) if scenario.baseline else None
            if base is not None:
                compare_with_baseline(row, base)
            self.rows.append(row)
            print(f"  median of {count}: {summary(row)}", flush=True)

    def measure(self, scenario: Scenario, server: ServerProcess, run_name: str) -> Row:
        """One ghz run of ``scenario`` (after its warm-up), reported under ``run_name``."""
        GHZ_OUT.mkdir(parents=True, exist_ok=True)
        total = self._warm_up(scenario, server, run_name)
        redis_before = self.env.redis_commands()
        upstream_marks = self.env.upstream_marks()
        cpu_before = cpu_seconds(server.pids())
        sampler = RssSampler(server.pid).start()
        try:
            result = self._ghz(scenario, server, f"{run_name}.json", total)
        finally:
            sampler.stop()
        cpu = cpu_seconds(server.pids()) - cpu_before
        redis_cmds = self.env.redis_commands() - redis_before
        calls = max(result.count, 1)
        kind = scenario.server.kind
        streams = scenario.concurrency // max(scenario.connections, 1)
        return Row(
            scenario=run_name,
            server=kind,
            method=scenario.method,
            load=f"ghz {scenario.connections} conn x {streams} streams, {total} calls",
            result=result,
            cpu_s_per_1k=round(cpu / calls * 1000, 3),
            peak_rss_mb=round(sampler.peak / MB, 1),
            # The baseline uses no Redis: whatever Redis did meanwhile is not its doing.
            redis_cmds_per_call=round(redis_cmds / calls, 3) if kind == "service" else None,
            notes={
                "load_average_1m": round(os.getloadavg()[0], 2),
                **self.env.upstream_latency_since(upstream_marks),
            },
        )

    def _warm_up(self, scenario: Scenario, server: ServerProcess, run_name: str) -> int:
        """Warm the server up; the number of calls the measured run makes."""
        warmup = f"{run_name}-warmup.json"
        if scenario.total is None:
            # The warm-up doubles as the rate estimate that sizes the run to --duration.
            estimate = self._ghz(scenario, server, warmup, max(scenario.concurrency * 20, 1000))
            return max(scenario.concurrency * 10, int(estimate.rps * self.duration))
        if scenario.warmup:
            self._ghz(scenario, server, warmup, max(scenario.concurrency * 10, 500))
        return scenario.total

    def _ghz(self, scenario: Scenario, server: ServerProcess, out: str, total: int) -> LoadResult:
        return run_ghz(
            server.target,
            scenario.method,
            dict(scenario.request),
            out=GHZ_OUT / out,
            connections=scenario.connections,
            concurrency=scenario.concurrency,
            total=total,
        )


def table(rows: list[Row]) -> str:
    head = (
        "| scenario | server | req/s | p50 ms | p90 ms | p99 ms | errors | CPU s / 1k req | "
        "peak RSS MB | Redis cmds / call | req/s vs baseline | p99 vs baseline |\n"
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    lines = []
    for row in rows:
        r = row.result
        lines.append(
            f"| {row.scenario} | {row.server} | {r.rps:,.0f} | {r.p50_ms} | {r.p90_ms} | "
            f"{r.p99_ms} | {r.errors} | {row.cpu_s_per_1k} | {row.peak_rss_mb} | "
            f"{'' if row.redis_cmds_per_call is None else row.redis_cmds_per_call} | "
            f"{'' if row.rps_ratio is None else f'x{row.rps_ratio}'} | "
            f"{'' if row.p99_ratio is None else f'x{row.p99_ratio}'} |"
        )
    return head + "\n".join(lines) + "\n"
