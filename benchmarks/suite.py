"""Runs the phases of ``benchmarks.scenarios`` and checks the rows against the targets."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import probes
from benchmarks.environment import (
    Environment,
    ServerProcess,
    baseline_process,
    response_sizes,
    service_process,
)
from benchmarks.measure import OUT, Bench, Row, table
from benchmarks.scenarios import SERVICE, Phase, Probe, ProbeKind, Scenario, ServerSetup
from benchmarks.targets import Evaluation, bench_targets, evaluate


def scenario_names(phases: Iterable[Phase]) -> list[str]:
    return [scenario.name for phase in phases for scenario in phase.scenarios]


def select(phases: Sequence[Phase], only: Iterable[str]) -> tuple[Phase, ...]:
    """The phases cut down to the named scenarios plus the baselines they are compared with."""
    wanted = set(only)
    unknown = wanted - set(scenario_names(phases))
    if unknown:
        raise SystemExit(
            f"unknown scenario(s) {sorted(unknown)}; the scenarios are: "
            + ", ".join(scenario_names(phases))
        )
    everything = {s.name: s for phase in phases for s in phase.scenarios}
    wanted |= {base for name in wanted if (base := everything[name].baseline) is not None}
    cut = (
        replace(phase, scenarios=tuple(s for s in phase.scenarios if s.name in wanted))
        for phase in phases
    )
    return tuple(phase for phase in cut if phase.scenarios)


def servers_of(phase: Phase) -> list[ServerSetup]:
    """The shared servers a phase measures on, in the order its scenarios first use them."""
    setups = (s.server for s in phase.scenarios if not s.server.fresh_per_scenario)
    return list(dict.fromkeys(setups))


@dataclass
class ServerPool:
    """Server processes by setup: started when first needed, stopped when no longer needed."""

    env: Environment
    logs: Path
    facts: dict[str, Any]
    running: dict[ServerSetup, ServerProcess] = field(default_factory=dict)

    def get(self, setup: ServerSetup) -> ServerProcess:
        if setup not in self.running:
            self.running[setup] = self.start(setup)
        return self.running[setup]

    def start(self, setup: ServerSetup, name: str | None = None) -> ServerProcess:
        """A new process for ``setup``, not kept in the pool (the caller stops it)."""
        if setup.kind == "baseline":
            sizes = self.response_sizes()
            return baseline_process(
                self.logs, sizes, workers=setup.workers, loop=setup.loop
            ).start()
        if setup.flush_redis_first:
            self.env.flush_redis()
        config = self.env.config(
            setup.config,
            near_cache_seconds=setup.near_cache_seconds,
            token_ttl_seconds=setup.token_ttl_seconds,
        )
        return service_process(
            config, self.logs, name=name or setup.name, workers=setup.workers, loop=setup.loop
        ).start()

    def response_sizes(self) -> dict[str, int]:
        """The service's response sizes, which the baseline answers with (measured once)."""
        if "response_bytes" not in self.facts:
            self.facts["response_bytes"] = response_sizes(self.get(SERVICE).target)
        sizes: dict[str, int] = self.facts["response_bytes"]
        return sizes

    def stop_all_but(self, keep: Iterable[ServerSetup]) -> None:
        kept = set(keep)
        for setup in [s for s in self.running if s not in kept]:
            self.running.pop(setup).stop()


@dataclass
class Suite:
    env: Environment
    bench: Bench
    pool: ServerPool
    facts: dict[str, Any]
    profile: bool  # --profile

    def run(self, phases: Sequence[Phase]) -> None:
        for index, phase in enumerate(phases):
            self.run_phase(phase)
            # Idle servers would still take memory and wake up: stop what no later phase uses.
            self.pool.stop_all_but(s for later in phases[index + 1 :] for s in servers_of(later))

    def run_phase(self, phase: Phase) -> None:
        print(phase.starting or phase.title, flush=True)
        # All of them before the first run, so no run shares the CPU with a server's start.
        for setup in servers_of(phase):
            self.pool.get(setup)
        if phase.starting:
            print(phase.title, flush=True)
        self.run_probes(phase.probes_before, phase)
        if phase.rounds is None:
            for scenario in phase.scenarios:
                self.measure_once(scenario)
        else:
            runs = [(s, self.pool.get(s.server)) for s in phase.scenarios]
            self.bench.measure_rounds(runs, phase.rounds)
        self.run_probes(phase.probes_after, phase)

    def measure_once(self, scenario: Scenario) -> Row:
        if scenario.server.fresh_per_scenario:
            return self.measure_cold(scenario)
        return self.bench.measure_once(scenario, self.pool.get(scenario.server))

    def measure_cold(self, scenario: Scenario) -> Row:
        """A fresh server on an empty Redis, its ping and token requests counted."""
        delay_ms = scenario.token_server_delay_ms
        round_trip = self.token_round_trip_ms(delay_ms)
        server = self.pool.start(scenario.server, name=scenario.name)
        token_server, cold_proxy = self.env.token_server, self.env.cold_proxy
        # Count only what the burst causes, not the server's start.
        token_server.reset()
        token_server.configure(delay_seconds=delay_ms / 1000)
        cold_proxy.reset()
        try:
            row = self.bench.measure_once(scenario, server)
        finally:
            server.stop()
        row.notes.update(
            pings=cold_proxy.ping_count,
            token_requests=token_server.count(),
            expected_token_requests=scenario.expected_token_requests,
            token_round_trip_ms=round_trip,
            token_server_delay_ms=delay_ms,
            p99_over_token_round_trip=round(row.result.p99_ms / round_trip, 1),
        )
        token_server.reset()  # and its delay back to none
        return row

    def token_round_trip_ms(self, delay_ms: int) -> float:
        """One token GET's round trip with the token server ``delay_ms`` away (once per delay)."""
        key = f"token_round_trip_ms_delay_{delay_ms}"
        if key not in self.facts:
            self.env.token_server.configure(delay_seconds=delay_ms / 1000)
            self.facts[key] = probes.token_round_trip_ms(self.env)
        round_trip: float = self.facts[key]
        return round_trip

    def run_probes(self, planned: Sequence[Probe], phase: Phase) -> None:
        """The probes whose servers this phase measures on (a cut-down phase may not)."""
        measured_on = set(servers_of(phase))
        for probe in planned:
            if set(probe.servers) <= measured_on:
                self.run_probe(probe)

    def run_probe(self, probe: Probe) -> None:
        servers = [self.pool.get(setup) for setup in probe.servers]
        if probe.kind is ProbeKind.PRIORITY_ORDER:
            self.facts[probe.kind.value] = probes.priority_order(servers[0].target)
        elif probe.kind is ProbeKind.FIRST_CALL_MS:
            self.facts[probe.kind.value] = probes.first_call_ms(servers[0].target)
        elif probe.kind is ProbeKind.PROFILE_HOT_PATH:
            base = self.bench.find("baseline-GetAuthHeaders")
            if self.profile and base is not None:
                print("profiling the hot path and the baseline with py-spy", flush=True)
                service, baseline = servers
                self.facts[probe.kind.value] = probes.profile_hot_path(
                    service, baseline, base.result.rps
                )


def measured(rows: Sequence[Row], facts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the targets read: each row's JSON by scenario name, each probe's result by name.

    Only probes that ran and answered with a mapping are subjects (the first-call time is a
    plain number, no target reads it).
    """
    probed = {k.value: facts[k.value] for k in ProbeKind if isinstance(facts.get(k.value), dict)}
    by_scenario = {row.scenario: row.to_json() for row in rows}
    return {**probed, **by_scenario}


def run_suite(
    env: Environment, phases: Sequence[Phase], *, duration: float, profile: bool
) -> tuple[dict[str, Any], Evaluation]:
    """Every phase, then the targets: the report (facts, rows, checks, table) and the verdict."""
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    facts: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    bench = Bench(env, duration)
    pool = ServerPool(env, logs, facts)
    try:
        Suite(env, bench, pool, facts, profile).run(phases)
    finally:
        pool.stop_all_but(())
    facts["load_average_at_end"] = os.getloadavg()

    print("\ntargets (issues 5 and 11)", flush=True)
    evaluation = evaluate(bench_targets(phases), measured(bench.rows, facts))
    for outcome in evaluation.outcomes:
        mark = "met" if outcome.met else "MISSED"
        print(f"  [{mark}] {outcome.name}: {outcome.detail}", flush=True)
    report = {
        "facts": facts,
        "rows": [r.to_json() for r in bench.rows],
        "checks": [o.as_check() for o in evaluation.outcomes],
        "table": table(bench.rows),
    }
    return report, evaluation
