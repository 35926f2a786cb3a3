"""Pulls through the reference front (issue 13): what one `crane pull` of a 10-layer image costs.

    python -m benchmarks.pull_front                  # 5 pulls per image, 10 layers of 1 MiB
    python -m benchmarks.pull_front --pulls 3 --layer-size 262144 --no-restart

The world of tests/support/pull_world.py (the one the system test uses) with ``counting=True``:
counting proxies (tests/support/proxy.py) between vregistry-server and the three registries,
so every upstream request -- vregistry-server's pings and probes and the front's fetches, which
both go to the upstream URL of the config -- is counted by kind; Prometheus metrics on the
server for the RPC counters. Two images of ``--layers`` layers: ``bench/ten:v1`` on the open
registry (position 1 of registry ``main``) and ``bench/private:v1`` only on the token registry
(position 2, credentials from vregistry).

examples/pull-front is built once (`go build` into a temp dir) and started once for registry
``main``. Per image, ``--pulls`` pulls one after another, each
``crane pull --insecure --format=oci`` into a fresh directory (its digests checked): the first
with the resolution cache (and token cache) cold, the others warm. Unless ``--no-restart``,
vregistry-server is then restarted on the same port (every cache empty, the front and its
gRPC channel kept) and each image pulled once more ("restart"). Then (``--at-once N``, 4;
1 for none) the server is restarted once more and each image is pulled by N cranes started
together ("N at once": a new image pulled by many nodes at the same moment). Per pull (or per
group pulled at once, summed): wall time, upstream requests by kind (proxy counts), token
requests (the token server's), RPCs by method (the server's ``vregistry_rpc_requests_total``,
before/after), the server's ``vregistry_resolve_checks_total`` (checks made, calls that joined
an identical call's check), the front's ``request`` log lines (count, sum of ``rpcs``, cache
hits) and bytes written. A table on stdout, the JSON in
benchmarks/out/pull-front-latest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.environment import ROOT  # noqa: F401  (puts the repository root on sys.path)
from benchmarks.machine import cpu_model
from tests.support.images import PushedImage
from tests.support.processes import stop_process
from tests.support.pull_world import FRONT_DIR, PullWorld, client_env, crane_path, pull_world
from tests.support.server_process import server_env

OUT = Path(__file__).parent / "out"
IMAGES = ("bench_open", "bench_token")
PULL_TIMEOUT = 120  # seconds per crane pull
START_TIMEOUT = 30
_MANIFEST = re.compile(r"^/v2/.+/manifests/[^/]+$")
_BLOB = re.compile(r"^/v2/.+/blobs/[^/]+$")


def request_kind(method: str, path: str) -> str:
    """``GET /v2/`` is a ping; otherwise method and manifest/blob/tags/other."""
    if path == "/v2/":
        return "ping"
    if _MANIFEST.match(path):
        return f"{method} manifest"
    if _BLOB.match(path):
        return f"{method} blob"
    if path.endswith("/tags/list"):
        return f"{method} tags"
    return f"{method} other"


def build_front(out_dir: Path, env: dict[str, str]) -> Path:
    binary = out_dir / "pull-front"
    subprocess.run(
        ["go", "build", "-o", str(binary), "."], cwd=FRONT_DIR, env=env, check=True, timeout=600
    )
    return binary


@contextmanager
def running_front(binary: Path, world: PullWorld, log_path: Path) -> Iterator[str]:
    """The front for registry ``main`` on a free port; yields its host:port (its "listening"
    log line's ``addr``)."""
    argv = [
        *(str(binary), "--listen", "127.0.0.1:0", "--vregistry", world.target),
        *("--registry-id", "main", "--caller-token-file", str(world.caller_token_file)),
        *("--log-level", "info"),
    ]
    env = server_env()
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        yield _wait_listening(process, log_path)
    finally:
        stop_process(process, 15)


def _wait_listening(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for line in front_log(log_path):
            if line.get("msg") == "listening" and line.get("addr"):
                return str(line["addr"])
        if process.poll() is not None:
            raise RuntimeError(f"the front exited {process.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"the front did not log 'listening' in {START_TIMEOUT}s")


def front_log(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            lines.append(parsed)
    return lines


def counter_totals(world: PullWorld, family_name: str, label: str) -> Counter[str]:
    """A counter of the server's metrics summed by one label (``family_name`` without
    ``_total``); the label's last ``/``-part (a gRPC method's name)."""
    url = f"http://127.0.0.1:{world.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == family_name:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels[label].rsplit("/", 1)[-1]] += int(sample.value)
    return counts


def rpc_counts(world: PullWorld) -> Counter[str]:
    """``vregistry_rpc_requests_total`` summed by method (every status code)."""
    return counter_totals(world, "vregistry_rpc_requests", "method")


def check_counts(world: PullWorld) -> Counter[str]:
    """``vregistry_resolve_checks_total`` by outcome (checked, joined)."""
    return counter_totals(world, "vregistry_resolve_checks", "outcome")


def reset_counters(world: PullWorld) -> None:
    for proxy in world.proxies.values():
        proxy.reset()
    world.token_server.reset()


def upstream_counts(world: PullWorld) -> dict[str, dict[str, int]]:
    by_upstream: dict[str, dict[str, int]] = {}
    for upstream_id, proxy in world.proxies.items():
        kinds: Counter[str] = Counter()
        for (method, path), n in proxy.counts.items():
            kinds[request_kind(method, path)] += n
        if kinds:
            by_upstream[upstream_id] = dict(sorted(kinds.items()))
    return by_upstream


def check_layout(layout: Path, image: PushedImage) -> int:
    """The pulled OCI layout holds the image (manifest digest, every blob hashing right);
    returns the bytes of its blobs."""
    index = json.loads((layout / "index.json").read_text())
    digests = [m["digest"] for m in index["manifests"]]
    if image.digest not in digests:
        raise AssertionError(f"crane pulled {digests}, expected {image.digest}")
    total = 0
    for digest in (image.digest, *image.blob_digests):
        data = (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise AssertionError(f"{digest} does not hash right in {layout}")
        total += len(data)
    return total


def pulls_at_once(
    world: PullWorld, crane: Path, env: dict[str, str], front: str, front_log_path: Path,
    image: PushedImage, dests: list[Path], phase: str,
) -> dict[str, Any]:  # fmt: skip
    """``len(dests)`` crane pulls of ``image`` started together; the counts are their sum."""
    reset_counters(world)
    rpcs_before, checks_before = rpc_counts(world), check_counts(world)
    log_before = len(front_log(front_log_path))
    started = time.perf_counter()
    argv = [str(crane), "pull", "--insecure", "--format=oci", f"{front}/{image.reference}"]
    processes = [
        subprocess.Popen(
            [*argv, str(dest)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for dest in dests
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=PULL_TIMEOUT)
        if process.returncode != 0:
            raise RuntimeError(f"crane pull failed ({process.returncode}): {stderr.decode()}")
    wall = time.perf_counter() - started
    time.sleep(0.2)  # the front writes its last "request" line after the response ends
    pulled_bytes = sum(check_layout(dest, image) for dest in dests)
    rpcs = rpc_counts(world) - rpcs_before
    checks = check_counts(world) - checks_before
    requests = [
        line for line in front_log(front_log_path)[log_before:] if line.get("msg") == "request"
    ]
    upstream = upstream_counts(world)
    return {
        "image": image.reference,
        "phase": phase,
        "pulls_at_once": len(dests),
        "wall_s": round(wall, 3),
        "upstream_requests": sum(sum(k.values()) for k in upstream.values()),
        "upstream_by_kind": upstream,
        "token_requests": world.token_server.request_count,
        "rpcs": sum(rpcs.values()),
        "rpcs_by_method": dict(sorted(rpcs.items())),
        "resolve_checks": {"checked": checks["checked"], "joined": checks["joined"]},
        "front_requests": len(requests),
        "front_rpcs": sum(int(line.get("rpcs", 0)) for line in requests),
        "front_cache_hits": sum(1 for line in requests if line.get("cache_hit")),
        "front_bytes": sum(int(line.get("bytes", 0)) for line in requests),
        "pulled_bytes": pulled_bytes,
    }


def run(pulls: int, layers: int, layer_size: int, restart: bool, at_once: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="vreg-bench-pull-"))
    results: list[dict[str, Any]] = []
    try:
        # Plaintext gRPC, as the figures in RESULTS.md were measured (the system test is mTLS).
        with pull_world(
            workdir / "world",
            counting=True,
            bench_layers=layers,
            bench_layer_size=layer_size,
            tls=False,
        ) as world:
            env = client_env(world.workdir)
            crane = crane_path()
            binary = build_front(workdir, env)
            front_log_path = workdir / "front.log"
            with running_front(binary, world, front_log_path) as front:
                pulled = 0

                def pull(name: str, phase: str, count: int = 1) -> None:
                    nonlocal pulled
                    dests = [workdir / f"pull-{pulled + n + 1}" for n in range(count)]
                    pulled += count
                    args = (world, crane, env, front, front_log_path, world.images[name])
                    results.append(pulls_at_once(*args, dests, phase))
                    for dest in dests:
                        shutil.rmtree(dest)

                for name in IMAGES:
                    for i in range(pulls):
                        pull(name, "cold" if i == 0 else "warm")
                if restart:
                    world.restart_server()
                    for name in IMAGES:
                        pull(name, "restart")
                if at_once > 1:
                    # Every cache empty again, then one image pulled by many nodes at once:
                    # their identical ResolveUpstream misses share one check each.
                    world.restart_server()
                    for name in IMAGES:
                        pull(name, f"{at_once} at once", at_once)
            logs = world.server_logs() + front_log_path.read_text(errors="replace")
            leaked = any(secret in logs for secret in world.secrets)
            OUT.mkdir(exist_ok=True)
            shutil.copyfile(front_log_path, OUT / "pull-front-front.log")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"pulls": results, "summary": summarize(results), "secret_in_logs": leaked}


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (image, phase)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["image"], row["phase"]), []).append(row)
    summary = []
    for (image, phase), rows in groups.items():
        entry: dict[str, Any] = {"image": image, "phase": phase, "pulls": len(rows)}
        for key in ("wall_s", "upstream_requests", "token_requests", "rpcs", "front_requests",
                    "front_rpcs", "pulled_bytes"):  # fmt: skip
            entry[key] = statistics.median(row[key] for row in rows)
        summary.append(entry)
    return summary


def _tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "?"
    return (
        (done.stdout or done.stderr).strip().splitlines()[0] if done.stdout or done.stderr else "?"
    )


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "go": _tool_version(["go", "version"]),
        "crane": _tool_version([str(crane_path()), "version"]),
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'image':<20} {'phase':<8} {'wall s':>7} {'upstream':>8} {'tokens':>6} {'rpcs':>5} "
        f"{'front req':>9} {'front rpcs':>10} {'MB':>6} {'checked/joined':>14}  "
        "upstream requests by kind"
    )
    print(header)
    for row in results:
        kinds = "; ".join(
            f"{up}: " + ", ".join(f"{k} {n}" for k, n in by_kind.items())
            for up, by_kind in row["upstream_by_kind"].items()
        )
        print(
            f"{row['image']:<20} {row['phase']:<8} {row['wall_s']:>7.3f} "
            f"{row['upstream_requests']:>8} {row['token_requests']:>6} {row['rpcs']:>5} "
            f"{row['front_requests']:>9} {row['front_rpcs']:>10} "
            f"{row['pulled_bytes'] / 1e6:>6.2f} "
            f"{row['resolve_checks']['checked']:>7}/{row['resolve_checks']['joined']:<6}  {kinds}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pulls", type=int, default=5, help="pulls per image (first cold)")
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--layer-size", type=int, default=1024 * 1024, help="bytes per layer")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart variant")
    parser.add_argument(
        "--at-once", type=int, default=4,
        help="after a restart, this many pulls of each image started together (1: none)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    measured = run(args.pulls, args.layers, args.layer_size, not args.no_restart, args.at_once)
    print_table(measured["pulls"])
    OUT.mkdir(exist_ok=True)
    report = {
        "started": started,
        "command": "python -m benchmarks.pull_front " + " ".join(argv or sys.argv[1:]),
        "pulls_per_image": args.pulls,
        "layers": args.layers,
        "layer_size": args.layer_size,
        "machine": machine(),
        **measured,
    }
    (OUT / "pull-front-latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {OUT / 'pull-front-latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
