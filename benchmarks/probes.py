"""Measurements beside the ghz loads: token round trip, priority order, first call, profiles."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from collections import Counter
from typing import Any

import grpc
import httpx

from benchmarks.environment import PASSWORD, USER, Environment, ServerProcess
from benchmarks.loadgen import run_ghz
from benchmarks.measure import GHZ_OUT, OUT, ROOT
from benchmarks.scenarios import HOT, RESOLVE
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc

PROFILE_SECONDS = 8
PROFILE_RATE_HZ = 250


def token_round_trip_ms(env: Environment, samples: int = 20) -> float:
    """Median wall time of one token GET, as the server makes it (Basic auth, one scope)."""
    params = {"service": env.token_server.service, "scope": "repository:private/app:pull"}
    timings = []
    with httpx.Client() as client:
        for _ in range(samples):
            started = time.perf_counter()
            reply = client.get(env.token_server.url, params=params, auth=(USER, PASSWORD))
            reply.raise_for_status()
            timings.append((time.perf_counter() - started) * 1000)
    # The cold scenarios count token requests: these samples must not be among them.
    env.token_server.reset()
    return round(statistics.median(timings), 2)


def priority_order(target: str) -> dict[str, Any]:
    """Whether ResolveUpstream answers with r2 after r1's miss (r1, r2, r3 all 200 ms away)."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.UpstreamServiceStub(channel)
        started = time.perf_counter()
        reply = stub.ResolveUpstream(pb.ResolveUpstreamRequest(**RESOLVE), timeout=10)
        elapsed = (time.perf_counter() - started) * 1000
    outcomes = [pb.AttemptOutcome.Name(a.outcome) for a in reply.attempts]
    kept = reply.upstream.id == "r2" and outcomes[:2] == [
        "ATTEMPT_OUTCOME_NOT_FOUND",
        "ATTEMPT_OUTCOME_FOUND",
    ]
    detail = f"answered by {reply.upstream.id} in {elapsed:.0f} ms, attempts {outcomes}"
    return {"kept": kept, "detail": detail}


def first_call_ms(target: str) -> float:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.UpstreamServiceStub(channel)
        started = time.perf_counter()
        stub.ResolveUpstream(pb.ResolveUpstreamRequest(**RESOLVE), timeout=10)
        return round((time.perf_counter() - started) * 1000, 1)


def profile(server: ServerProcess, seconds: float, name: str) -> dict[str, Any]:
    """py-spy samples of ``server`` (while a load runs): self and inclusive time by function."""
    raw = OUT / f"profile-{name}.txt"
    pyspy = ROOT / ".venv" / "bin" / "py-spy"
    argv = [
        str(pyspy if pyspy.exists() else "py-spy"),
        "record",
        "--pid",
        str(server.pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(PROFILE_RATE_HZ),
        "--format",
        "raw",
        # Without --nonblocking py-spy pauses the server for every sample.
        "--nonblocking",
        "--output",
        str(raw),
    ]
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    if completed.returncode != 0 or not raw.exists():
        return {"error": completed.stderr[-500:]}
    own, inclusive, total = _count_frames(raw.read_text())
    return {
        "samples": total,
        "self_pct": _top(own, total),
        "inclusive_pct": _top(inclusive, total),
        "raw": str(raw),
    }


def _count_frames(raw: str) -> tuple[Counter[str], Counter[str], int]:
    """Samples by innermost frame and by any frame, from py-spy's raw (collapsed) format."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return own, inclusive, total


def _frame_name(frame: str) -> str:
    """``function (path/to/file.py:12)`` -> ``function (file.py)``: lines would split counts."""
    function = frame.split(" (")[0]
    filename = frame.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
    return f"{function} ({filename})"


def _top(counter: Counter[str], total: int) -> list[tuple[str, float]]:
    return [(f, round(100 * n / max(total, 1), 1)) for f, n in counter.most_common(25)]


def profile_hot_path(
    service: ServerProcess, baseline: ServerProcess, baseline_rps: float
) -> dict[str, Any]:
    """py-spy of the service and of the baseline, each under hot GetAuthHeaders load.

    The load is sized (10 s at the baseline's rate) to outlast the 8 s profile.
    """
    profiles: dict[str, Any] = {}
    for name, server in (("service-hot", service), ("baseline", baseline)):
        holder: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda s=server, h=holder, n=name: h.update(profile(s, PROFILE_SECONDS, n))
        )
        thread.start()
        run_ghz(
            server.target,
            "GetAuthHeaders",
            dict(HOT),
            out=GHZ_OUT / f"profile-{name}.json",
            total=int(baseline_rps * 10),
        )
        thread.join()
        profiles[name] = holder
    return profiles
