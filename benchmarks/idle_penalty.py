"""What a piece of the service's work costs after the process was idle, on this machine.

The same fixed work (a registry's HEAD answer parsed with llhttp, a ResolveUpstream
response built and serialised, a JSON document encoded, a URL split: the kinds of work a
cold ResolveUpstream does after each wake-up) is timed with ``time.process_time``:

* ``back to back``: right after the same work;
* ``after sleeping S ms``: after ``time.sleep`` (the process idle, as between a cold
  call's wake-ups at 16 calls in flight over upstreams 200 ms away);
* ``after spinning 12.5 ms``: after 12.5 ms of a busy loop in this process (the CPU never
  idle, but busy with something else).

The kinds are interleaved in a shuffled order every round; medians are reported. The ratio
to "back to back" is what any work costs more once something else ran in between
(benchmarks/RESULTS.md, "What work costs after a wake-up").

    .venv/bin/python -m benchmarks.idle_penalty [--rounds 400]
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import httptools

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vregistry.v1 import upstream_service_pb2 as pb  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"

HEAD_ANSWER = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Length: 1638\r\n"
    b"Content-Type: application/vnd.docker.distribution.manifest.v2+json\r\n"
    b"Docker-Content-Digest: sha256:" + b"ab" * 32 + b"\r\n"
    b"Docker-Distribution-Api-Version: registry/2.0\r\n"
    b'Etag: "sha256:' + b"ab" * 32 + b'"\r\n'
    b"X-Content-Type-Options: nosniff\r\n"
    b"Date: Wed, 02 Dec 2026 00:00:00 GMT\r\n\r\n"
)
TOKEN = "eyJ" + "x" * 3400


class _Head:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


def work() -> int:
    """One slice of a cold call's kinds of work (some 30 µs, warm, on this VM)."""
    size = 0
    for _ in range(3):  # three upstreams' answers
        head = _Head()
        parser = httptools.HttpResponseParser(head)
        parser.feed_data(HEAD_ANSWER)
        size += parser.get_status_code() + len(head.headers)
        url = urllib.parse.urlsplit(f"http://127.0.0.1:5000/v2/library/app{size}/manifests/v1")
        size += len(url.path)
    response = pb.ResolveUpstreamResponse(
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
        upstream=pb.Upstream(id="r2", name="Bench r2", url="http://127.0.0.1:5000", position=2),
        url="http://127.0.0.1:5000/v2/library/app/manifests/sha256:" + "ab" * 32,
        digest="sha256:" + "ab" * 32,
        media_type="application/vnd.docker.distribution.manifest.v2+json",
        size=1638,
    )
    size += len(response.SerializeToString())
    document = {"upstream_id": "r2", "position": 2, "digest": response.digest, "size": 1638}
    size += len(json.dumps(document, separators=(",", ":")))
    return size


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _kinds() -> dict[str, Callable[[], None]]:
    kinds: dict[str, Callable[[], None]] = {"back to back": lambda: None}
    for ms in (0.2, 2.0, 12.5, 50.0):
        kinds[f"after sleeping {ms:g} ms"] = functools.partial(time.sleep, ms / 1000)
    kinds["after spinning 12.5 ms"] = lambda: _spin(0.0125)
    return kinds


def measure(rounds: int, slices: int) -> dict[str, float]:
    """Median µs of CPU of ``slices`` slices of work after each kind of pause."""
    kinds = _kinds()
    samples: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(20):
        work()  # warm: imports, the parser's and the message's first use
    for _ in range(rounds):
        order = list(kinds)
        random.shuffle(order)
        for name in order:
            work()  # the work itself just ran: "back to back" is warm
            kinds[name]()
            started = time.process_time()
            for _ in range(slices):
                work()
            samples[name].append(time.process_time() - started)
    return {name: statistics.median(values) * 1e6 for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=400, help="rounds of every kind (400)")
    args = parser.parse_args(argv)
    # One slice and eight: whether a pause costs a share of the work or a sum of its own.
    one, eight = measure(args.rounds, 1), measure(args.rounds, 8)
    print(
        "| before the work | 1 slice, µs CPU | vs back to back | 8 slices, µs CPU "
        "| vs back to back | extra µs, 1 / 8 slices |\n|---|--:|--:|--:|--:|--:|"
    )
    for name in one:
        extra_one = one[name] - one["back to back"]
        extra_eight = eight[name] - eight["back to back"]
        print(
            f"| {name} | {one[name]:,.0f} | x{one[name] / one['back to back']:.2f} "
            f"| {eight[name]:,.0f} | x{eight[name] / eight['back to back']:.2f} "
            f"| {extra_one:,.0f} / {extra_eight:,.0f} |"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    report = {
        "rounds": args.rounds,
        "median_us": {"1 slice": one, "8 slices": eight},
        "at": time.strftime("%Y%m%d-%H%M%S"),
    }
    (OUT / "idle-penalty-latest.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
