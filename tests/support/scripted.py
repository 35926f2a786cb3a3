"""A misbehaving HTTP server for faults no real registry or token server produces.

Only for the rare cases the project rules allow a stand-in: a malformed
WWW-Authenticate challenge, an oversized token body, a cross-host redirect of
the token endpoint. Each test that uses it says why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.httpserver import BackgroundHTTPServer, QuietHandler
from tests.support.processes import LOCALHOST


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    cookie: str | None = None
    user_agent: str | None = None


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


Script = Callable[[str, str], Reply]


class _Handler(QuietHandler):
    def _answer(self) -> None:
        owner: ScriptedServer = self.server.owner  # type: ignore[attr-defined]
        headers = self.headers
        owner.record(
            Seen(
                self.command,
                self.path,
                headers.get("Authorization"),
                headers.get("Cookie"),
                headers.get("User-Agent"),
            )
        )
        self.read_body()
        reply = owner.script(self.command, self.path)
        self.send_bytes(
            reply.status,
            reply.body,
            reply.content_type,
            reply.headers,
            include_body=self.command != "HEAD",
        )

    do_GET = do_POST = do_HEAD = _answer


class ScriptedServer(BackgroundHTTPServer):
    handler_class = _Handler

    def __init__(self, script: Script, host: str = LOCALHOST) -> None:
        super().__init__(host)
        self.script = script
        self._lock = threading.Lock()
        self._seen: list[Seen] = []

    @property
    def url(self) -> str:
        return self.base_url

    def record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)


def start_scripted(script: Script, *, host: str = LOCALHOST) -> ScriptedServer:
    """Start ``script`` on ``host`` (a loopback address) and a kernel-chosen port."""
    server = ScriptedServer(script, host)
    server.start()
    return server
