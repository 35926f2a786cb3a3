"""The Dockerfile's required properties, read from the file (scripts/test-image.sh builds and
runs the image; this catches a broken property in seconds, without buildah).

Issue 12: ``ARG BASE=python:3.11-slim``, multi-stage on that base, non-root uid 10001, a
HEALTHCHECK through the gRPC health service, OCI labels, a data volume, ``pip install .``,
and a build context (.dockerignore, an allow-list) that holds every file a COPY names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OCI_LABELS = ("title", "description", "licenses", "version", "revision", "base.name")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    """The instructions before the first FROM, then one list per stage."""
    result: list[list[tuple[str, str]]] = [[]]
    for keyword, rest in _instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


def _args(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in stage if kw == keyword]


def test_base_is_an_argument_defaulting_to_python_slim(
    stages: list[list[tuple[str, str]]],
) -> None:
    assert stages[0] == [("ARG", "BASE=python:3.11-slim")]
    froms = [stage[0][1] for stage in stages[1:]]
    assert len(froms) >= 2, "multi-stage"
    assert froms[0] == "${BASE} AS build"
    assert froms[-1] == "${BASE}"


def test_build_stage_installs_the_package_with_pip(stages: list[list[tuple[str, str]]]) -> None:
    runs = " ".join(_args(stages[1], "RUN"))
    assert re.search(r"pip install \.( |$)", runs)


def test_runtime_stage_runs_as_uid_10001_with_a_grpc_health_check(
    stages: list[list[tuple[str, str]]],
) -> None:
    final = stages[-1]
    assert _args(final, "USER") == ["10001:10001"]
    assert "--uid 10001" in " ".join(_args(final, "RUN"))
    (health,) = _args(final, "HEALTHCHECK")
    options, _, command = health.partition("CMD ")
    assert "--interval=" in options
    assert json.loads(command) == ["python", "-m", "vregistry_server.healthcheck"]
    assert json.loads(_args(final, "ENTRYPOINT")[0]) == ["vregistry-server"]
    assert _args(final, "VOLUME") == ['["/var/lib/vregistry"]']
    assert _args(final, "STOPSIGNAL") == ["SIGTERM"]


def test_runtime_stage_has_the_oci_labels(stages: list[list[tuple[str, str]]]) -> None:
    labels = " ".join(_args(stages[-1], "LABEL"))
    for key in OCI_LABELS:
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_no_ca_bundle_or_remote_file_is_baked_in(stages: list[list[tuple[str, str]]]) -> None:
    everything = [item for stage in stages for item in stage]
    assert not [rest for keyword, rest in everything if keyword == "ADD"]
    copies = " ".join(rest for keyword, rest in everything if keyword == "COPY")
    assert "ca-certificates" not in copies and "/etc/ssl" not in copies


def test_every_copied_file_is_in_the_build_context(stages: list[list[tuple[str, str]]]) -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for stage in stages[1:]:
        for source in (s for rest in _args(stage, "COPY") for s in _copy_sources(rest)):
            assert source in allowed, f"COPY {source}: not allowed by .dockerignore"
            assert (ROOT / source).exists(), source


def _copy_sources(arguments: str) -> list[str]:
    """The sources of one COPY from the build context (none for COPY --from=STAGE)."""
    words = arguments.split()
    if any(word.startswith("--from=") for word in words):
        return []
    paths = [word for word in words if not word.startswith("--")]
    return [path.rstrip("/") for path in paths[:-1]]
