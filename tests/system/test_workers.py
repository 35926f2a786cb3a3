"""``vregistry-server --workers N``: N processes on one port, supervised, stopped by SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc

from tests.support.registry import RegistryServer
from tests.support.server_process import launch
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_workers_share_one_port_and_stop_on_sigterm(
    tmp_path: Path, open_registry: RegistryServer
) -> None:
    document = {
        "upstreams": [{"id": "open", "name": "Open", "url": open_registry.url, "allow_http": True}],
        "settings": {"shutdown_grace_seconds": 2},
    }
    server = launch(tmp_path, document, args=["--workers", "2"])
    try:
        deadline = time.monotonic() + 10
        while len(_children(server.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = _children(server.process.pid)
        assert len(workers) == 2
        seen: set[str] = set()
        for _ in range(20):  # fresh connections land on both workers; all answer
            with grpc.insecure_channel(
                server.target, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                reply = pb_grpc.UpstreamServiceStub(channel).UrlFor(
                    pb.UrlForRequest(upstream_id="open", path="library/alpine/manifests/latest"),
                    timeout=5,
                )
                seen.add(reply.url)
        assert seen == {f"{open_registry.url}/v2/library/alpine/manifests/latest"}
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0
        for pid in workers:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "Z" in (Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1])
            )
        assert "workers started" in server.logs()
    finally:
        server.stop()
