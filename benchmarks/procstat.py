"""CPU time and memory of a process tree, read from /proc (Linux only)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            found.extend(int(child) for child in children)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds consumed so far by these processes."""
    total = 0.0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
    return total


def rss_bytes(pids: list[int]) -> int:
    """Resident set size, summed over the processes."""
    total = 0
    for pid in pids:
        try:
            statm = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        total += int(statm[1]) * _PAGE_SIZE
    return total


@dataclass
class RssSampler:
    """Samples the RSS of a process tree in a background thread."""

    root_pid: int
    interval: float = 0.25
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            pids = process_tree(self.root_pid)
            self.samples.append((time.monotonic() - started, rss_bytes(pids)))
            self._stop.wait(self.interval)
