#!/usr/bin/env python3
"""Generate the Python gRPC stubs from protos/ (package vregistry.v1).

Run as a script it writes them into server/ (the Makefile's editable install
imports them from there); the package build (setup.py) calls ``generate`` with
its build directory, so every wheel carries them. One definition of how the
stubs are made.

The output is deterministic for a given grpcio-tools version (pinned in
pyproject.toml, both in the dev extra and in build-system.requires), and is
never edited by hand: change the .proto and rerun.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "server"
# The generated top-level package: the stubs of protos/vregistry/**.
PACKAGE = "vregistry"


def generate(out: Path) -> int:
    """Write the stubs of every .proto under protos/ into ``out``/vregistry (replaced whole,
    so a removed .proto leaves no stale module); 0 on success, else protoc's exit code."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    if not protos:
        print(f"no .proto files under {PROTO_ROOT}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / PACKAGE, ignore_errors=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
        return int(code)
    print(f"generated stubs for {len(protos)} proto file(s) into {out / PACKAGE}")
    return 0


def main() -> int:
    return generate(OUT)


if __name__ == "__main__":
    sys.exit(main())
