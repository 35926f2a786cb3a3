#!/usr/bin/env python3
"""Generate the Python gRPC stubs from protos/ into server/ (package vregistry.v1).

The output is deterministic for a given grpcio-tools version (pinned in
pyproject.toml), and is never edited by hand: change the .proto and rerun.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "server"
GENERATED_PACKAGE = OUT / "vregistry"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    if not protos:
        print("no .proto files under protos/", file=sys.stderr)
        return 1
    shutil.rmtree(GENERATED_PACKAGE, ignore_errors=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
        return int(code)
    print(
        f"generated stubs for {len(protos)} proto file(s) into {GENERATED_PACKAGE.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
