"""ghz, the gRPC load generator: install check, one run, and its JSON report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "protos" / "vregistry" / "v1" / "upstream_service.proto"
GHZ_LOCAL = ROOT / "benchmarks" / "bin" / "ghz"
GHZ_VERSION = "v0.120.0"  # keep in step with the Makefile's GHZ_VERSION


def find_ghz() -> str:
    if GHZ_LOCAL.exists():
        return str(GHZ_LOCAL)
    found = shutil.which("ghz")
    if found is None:
        raise SystemExit("ghz not found: run `make bench` (it installs ghz into benchmarks/bin)")
    return found


@dataclass
class LoadResult:
    count: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int
    status: dict[str, int] = field(default_factory=dict)
    error_messages: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    loadgen_cpu_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _run_counting_cpu(argv: list[str]) -> tuple[int, str, float]:
    """Run ``argv`` to its end: its exit code, its stderr and the CPU seconds it used.

    ``os.wait4`` reports the rusage of the one child it reaps. RUSAGE_CHILDREN would also
    count every other child reaped meanwhile: the soak runs two ghz at once, from two threads.
    """
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:  # Ctrl-C included: leave no ghz running
            child.kill()
            child.wait()
            raise
        child.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    return child.returncode, errors, usage.ru_utime + usage.ru_stime


def run_ghz(
    target: str,
    method: str,
    data: dict[str, Any],
    *,
    out: Path,
    connections: int = 4,
    concurrency: int = 64,
    duration_s: float | None = None,
    total: int | None = None,
    rps: float | None = None,
    timeout_s: float = 20.0,
    cpus: int | None = None,
) -> LoadResult:
    """One ghz run against ``target`` calling ``vregistry.v1.UpstreamService/<method>``."""
    argv = [
        find_ghz(),
        "--insecure",
        "--proto",
        str(PROTO),
        "--import-paths",
        str(PROTO.parent.parent.parent),
        "--call",
        f"vregistry.v1.UpstreamService/{method}",
        "--data",
        json.dumps(data),
        "--connections",
        str(connections),
        "--concurrency",
        str(concurrency),
        "--timeout",
        f"{timeout_s}s",
        "--format",
        "json",
        "--output",
        str(out),
    ]
    if duration_s is not None:
        argv += ["--duration", f"{duration_s}s", "--total", "0"]
    if total is not None:
        argv += ["--total", str(total)]
    if rps is not None:
        argv += ["--rps", str(int(rps))]
    if cpus is not None:
        argv += ["--cpus", str(cpus)]
    argv.append(target)
    out.unlink(missing_ok=True)  # a failed run must not leave an earlier report to be read
    started = time.monotonic()
    returncode, errors, cpu = _run_counting_cpu(argv)
    wall = time.monotonic() - started
    if returncode != 0 and not out.exists():
        raise RuntimeError(f"ghz failed ({returncode}): {errors[-2000:]}")
    report = json.loads(out.read_text())
    result = parse_report(report)
    result.wall_s = round(wall, 2)
    result.loadgen_cpu_s = round(cpu, 2)
    return result


def parse_report(report: dict[str, Any]) -> LoadResult:
    percentiles = {
        int(entry["percentage"]): entry["latency"] / 1e6
        for entry in report.get("latencyDistribution") or []
    }
    status = {str(k): int(v) for k, v in (report.get("statusCodeDistribution") or {}).items()}
    errors = sum(n for code, n in status.items() if code != "OK")
    return LoadResult(
        count=int(report.get("count", 0)),
        rps=round(float(report.get("rps", 0.0)), 1),
        p50_ms=round(percentiles.get(50, 0.0), 2),
        p90_ms=round(percentiles.get(90, 0.0), 2),
        p99_ms=round(percentiles.get(99, 0.0), 2),
        mean_ms=round(report.get("average", 0) / 1e6, 2),
        max_ms=round(report.get("slowest", 0) / 1e6, 2),
        errors=errors,
        status=status,
        error_messages={
            str(k)[:200]: int(v) for k, v in (report.get("errorDistribution") or {}).items()
        },
    )
