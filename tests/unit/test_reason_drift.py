"""One definition of each error reason: the contract's vregistry.v1.ErrorReason enum.

The server's error tree (errors.py) must raise only reasons the enum names, the enum
must name nothing the server never sends, and no client may spell a reason by hand
(each exposes the generated enum instead).
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc

from vregistry.v1 import error_reason_pb2
from vregistry_server import errors

ROOT = Path(__file__).resolve().parents[2]
ENUM_NAMES = {
    name
    for name in error_reason_pb2.ErrorReason.keys()  # noqa: SIM118 - an EnumTypeWrapper
    if name != "ERROR_REASON_UNSPECIFIED"
}
# Generated code and third-party folders are not hand-written client code.
_NOT_HAND_WRITTEN = ("gen", "v1", "node_modules", "target", ".venv", "dist", "egg-info")
_CLIENT_SOURCES = {".go", ".py", ".ts", ".java"}


def _server_reasons() -> set[str]:
    return {cls.reason for cls in errors.all_classes() if cls is not errors.VRegistryError}


def test_every_reason_the_server_raises_is_in_the_enum() -> None:
    missing = _server_reasons() - ENUM_NAMES
    assert not missing, f"add these to protos/vregistry/v1/error_reason.proto: {sorted(missing)}"


def test_the_enum_names_no_reason_the_server_never_sends() -> None:
    unused = ENUM_NAMES - _server_reasons()
    assert not unused, f"no error class carries these reasons: {sorted(unused)}"


def test_each_error_code_is_a_grpc_status_code() -> None:
    for cls in errors.all_classes():
        assert grpc.StatusCode[cls.code.name].value[0] == cls.code.value, cls


def _hand_written_client_files() -> list[Path]:
    files = []
    for path in (ROOT / "clients").rglob("*"):
        if path.suffix not in _CLIENT_SOURCES or not path.is_file():
            continue
        parts = set(path.relative_to(ROOT / "clients").parts)
        if parts & set(_NOT_HAND_WRITTEN) or any(p.endswith(".egg-info") for p in parts):
            continue
        if parts & {"test", "tests"} or "_test." in path.name or path.name.endswith("Test.java"):
            continue  # tests may check the wire string the server sent

        files.append(path)
    return files


def test_no_client_hand_writes_a_reason() -> None:
    # Reasons that are also gRPC code names (NOT_FOUND, INTERNAL, ...) may appear as codes.
    code_names = {code.name for code in grpc.StatusCode}
    reasons = sorted(ENUM_NAMES - code_names)
    literal = re.compile(r"""["'`](?:{})["'`]""".format("|".join(map(re.escape, reasons))))
    files = _hand_written_client_files()
    assert len(files) > 8, "the client sources were not found"
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if literal.search(_code_part(line))
    ]
    assert not found, "use the generated ErrorReason enum instead of strings: " + "; ".join(found)


def _code_part(line: str) -> str:
    """The line without its comment (doc examples may name a reason)."""
    stripped = line.strip()
    if stripped.startswith(("//", "#", "*", "/*")):
        return ""
    return line.split(" //", 1)[0].split("  #", 1)[0]
