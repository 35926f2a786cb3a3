"""Real OCI clients pull through examples/pull-front (issue 13), driven by its Go e2e test.

The module fixture is the world of tests/support/pull_world.py: three real docker-registries
(open; token-auth with its token server; one whose stored blob rotted on disk), a real
``vregistry-server`` process in front of them (mTLS with certificates of tests/support/certs.py,
caller token in a --callers-file, the upstream password in a password_file) and the stack file
of the contract. The test runs ``go test -json -count=1 ./...`` in examples/pull-front with
``PULL_FRONT_STACK`` set; the Go e2e test starts the front (over mTLS, with the caller token)
and runs skopeo and crane against it (digests, positions, "manifest unknown", the corrupt blob
refused), and a front with the CA but no client certificate, which must answer 503. Here we
check that it passed, that every expected e2e test ran and passed (none skipped: without the
stack file they would skip), and that no log holds the caller token or the upstream password.

``go test`` is a subprocess (``subprocess.run`` is fine: the servers are other processes and
threads, nothing in an event loop has to keep serving meanwhile).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.pull_world import FRONT_DIR, PullWorld, client_env, pull_world

GO_TEST_TIMEOUT = 600  # seconds; a first run downloads the front's modules and compiles
# The e2e tests of examples/pull-front (its e2e_test.go): each must pass, none may skip.
E2E_TESTS = (
    "TestE2ESkopeoCopy",
    "TestE2ECraneDigest",
    "TestE2ECranePull",
    "TestE2EMissingTag",
    "TestE2ECorruptBlob",
    "TestE2ECraneLs",
    "TestE2EFrontNeedsClientCert",
)

pytestmark = pytest.mark.timeout(GO_TEST_TIMEOUT + 300)


@dataclass
class GoTestRun:
    returncode: int
    output: str
    passed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    elapsed: float = 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PullWorld]:
    with pull_world(tmp_path_factory.mktemp("pull-front"), tls=True) as started:
        yield started


def parse_go_test_json(stdout: str) -> GoTestRun:
    """The pass/fail/skip events of ``go test -json`` by test name (subtests as "A/b")."""
    run = GoTestRun(returncode=0, output="")
    lines: list[str] = []
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            lines.append(line)  # the build's own output, e.g. a compile error
            continue
        if event.get("Action") == "output":
            lines.append(event.get("Output", "").rstrip("\n"))
        test = event.get("Test")
        if test is None:
            continue
        bucket = {"pass": run.passed, "fail": run.failed, "skip": run.skipped}.get(
            event.get("Action", "")
        )
        if bucket is not None:
            bucket.add(test)
    run.output = "\n".join(lines)
    return run


def run_go_test(world: PullWorld) -> GoTestRun:
    go = shutil.which("go")
    if go is None:
        pytest.fail("go is not installed: examples/pull-front's tests need Go >= 1.26")
    if not (FRONT_DIR / "go.mod").is_file():
        pytest.fail(f"{FRONT_DIR.relative_to(FRONT_DIR.parents[1])} does not exist yet")
    env = client_env(world.workdir)
    env["PULL_FRONT_STACK"] = str(world.stack_path)
    started = time.monotonic()
    try:
        result = subprocess.run(
            [go, "test", "-json", "-count=1", "./..."],
            cwd=FRONT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=GO_TEST_TIMEOUT,
        )
    except subprocess.TimeoutExpired as timeout:
        partial = timeout.stdout.decode(errors="replace") if timeout.stdout else ""
        pytest.fail(f"go test timed out after {GO_TEST_TIMEOUT}s:\n{partial[-8000:]}")
    run = parse_go_test_json(result.stdout)
    run.returncode = result.returncode
    run.output += "\n" + result.stderr
    run.elapsed = time.monotonic() - started
    return run


def _failure(world: PullWorld, run: GoTestRun, what: str) -> str:
    return (
        f"{what}\n--- go test output (tail) ---\n{run.output[-12000:]}\n"
        f"--- vregistry-server log (tail) ---\n{world.server_logs()[-4000:]}"
    )


@pytest.fixture(scope="module")
def go_run(world: PullWorld) -> GoTestRun:
    """``go test`` runs once per module; both tests below read its result."""
    return run_go_test(world)


def test_real_clients_pull_through_the_front(world: PullWorld, go_run: GoTestRun) -> None:
    run = go_run
    print(f"go test in examples/pull-front: {run.elapsed:.1f}s, {len(run.passed)} passed")
    assert run.returncode == 0, _failure(world, run, f"go test exited {run.returncode}")
    assert not run.failed, _failure(world, run, f"failed: {sorted(run.failed)}")
    assert not run.skipped, _failure(
        world, run, f"skipped (stack not used?): {sorted(run.skipped)}"
    )
    missing = [name for name in E2E_TESTS if name not in run.passed]
    assert not missing, _failure(world, run, f"e2e tests that did not pass: {missing}")
    # The fronts' pulls went over mTLS: the server required client certificates.
    assert "tls" in world.stack["vregistry"]
    assert server_tls_modes(world) == {"mtls"}, world.server_logs()[-4000:]


def server_tls_modes(world: PullWorld) -> set[str]:
    """The ``tls`` field of every "serving" line vregistry-server logged."""
    modes: set[str] = set()
    for line in world.server_logs().splitlines():
        if not line.startswith("{"):
            continue  # gRPC core's own lines (e.g. the refused handshakes)
        record = json.loads(line)
        if record.get("msg") == "serving":
            modes.add(str(record.get("tls")))
    return modes


def test_no_secret_in_any_log(world: PullWorld, go_run: GoTestRun) -> None:
    """After the pulls: the server's log and every log the e2e test wrote into the work dir
    (the fronts') hold neither the caller token nor the upstream password."""
    logs = {"vregistry-server": world.server_logs()}
    work_dir = Path(world.stack["work_dir"])
    logs.update(
        {
            str(p.relative_to(work_dir)): p.read_text(errors="replace")
            for p in work_dir.rglob("*.log")
        }
    )
    assert "serving" in logs["vregistry-server"]
    # The e2e test keeps each front's log (level debug) there: the check must not be vacuous.
    assert any(name.startswith("front-") for name in logs), sorted(logs)
    for name, text in logs.items():
        for secret in world.secrets:
            assert secret not in text, f"a secret is in {name}"
