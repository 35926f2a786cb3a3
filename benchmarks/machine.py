"""What the results were measured on: CPU, memory, kernel and the versions that matter."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import google.protobuf
import grpc
from google.protobuf.internal import api_implementation

from benchmarks.loadgen import GHZ_VERSION, find_ghz


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def ghz_version() -> str:
    completed = subprocess.run(
        [find_ghz(), "--version"], capture_output=True, text=True, check=False
    )
    # A ghz built with `go install` calls itself "dev": the pinned version is what was built.
    return (completed.stdout or completed.stderr).strip().replace("dev", GHZ_VERSION)


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "memory_gb": round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        # upb, cpp or python: the backend changes the per-call cost a lot.
        "protobuf": f"{google.protobuf.__version__} ({api_implementation.Type()})",
        "ghz": ghz_version(),
        "kernel": platform.release(),
    }
