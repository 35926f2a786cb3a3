"""Each client installed from its package into a project outside the repository, as its users
install it (tests/support/consumers.py, consumers_go_py.py, consumers_ts_java.py), running the
seed's flow against one real ``vregistry-server``: ConfigService on (SQLite), TLS with a client
certificate (mTLS) and a caller token from a callers file. Every consumer creates two upstreams
(the ``open_registry`` fixture, and ``token_registry`` with bob's credentials), a registry, adds
them at positions 1 and 2, resolves a path only the second has, and prints the answer; the four
answers must agree (ids compared without each consumer's prefix).

The consumers build and run in parallel threads (each is a chain of subprocesses: Maven and npm
dominate the wall time); each uses its own group, so their ids and urls never collide.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.support.certs import Pki, make_pki
from tests.support.consumers import (
    ARTIFACT_SIZES,
    CONSUMERS,
    ConsumerEnv,
    ConsumerTls,
    ConsumerUpstream,
)
from tests.support.processes import free_port
from tests.support.registry import RegistryServer
from tests.support.server_process import ServerProcess, server_env
from vregistry_server.admin.callers import hash_token

LANGUAGES = ("go", "python", "typescript", "java")
ENTRY_MODULES = ("tests.support.consumers_go_py", "tests.support.consumers_ts_java")
CALLER_TOKEN = "consumers-admin-token-0123456789"  # a test caller's token, not a secret
HIT_PATH = "public/alpine/manifests/latest"  # only on token_registry

pytestmark = pytest.mark.timeout(1200)


@dataclass
class Served:
    server: ServerProcess
    pki: Pki
    workdir: Path
    open_url: str
    token_url: str
    token_user: str
    token_password: str
    hit_digest: str


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    open_registry: RegistryServer,
    token_registry: RegistryServer,
) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("client-consumers")
    pki = make_pki(workdir / "pki")
    # No upstreams in the file: the consumers create everything through ConfigService. The
    # fixtures listen on loopback, which an operator running all on one host would allow.
    settings = {"egress_allow_cidrs": ["127.0.0.0/8"], "shutdown_grace_seconds": 2}
    (workdir / "seed.yaml").write_text(yaml.safe_dump({"settings": settings}))
    (workdir / "callers").write_text(f"{hash_token(CALLER_TOKEN)} consumers admin,resolver *\n")
    port = free_port()
    args = [
        "--config", str(workdir / "seed.yaml"),
        "--listen", f"127.0.0.1:{port}",
        "--data-dir", str(workdir / "data"),
        "--callers-file", str(workdir / "callers"),
        "--tls-cert", str(pki.server.cert_path),
        "--tls-key", str(pki.server.key_path),
        "--tls-client-ca", str(pki.ca.cert_path),
    ]  # fmt: skip
    server = ServerProcess(args, server_env(), port, workdir / "server.log")
    assert token_registry.username is not None and token_registry.password is not None
    state = Served(
        server,
        pki,
        workdir,
        open_registry.url,
        token_registry.url,
        token_registry.username,
        token_registry.password,
        token_registry.images["public/alpine:latest"].digest,
    )
    try:
        mtls = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert,
            private_key=pki.client.key,
            certificate_chain=pki.client.cert,
        )
        server.wait_serving(30, mtls)
        yield state
    finally:
        assert server.stop() == 0, server.logs()
        logs = server.logs()
        assert CALLER_TOKEN not in logs and token_registry.password not in logs


def _env(served: Served, lang: str, scratch: Path) -> ConsumerEnv:
    prefix = f"{lang}-"
    hosts = ("127.0.0.1",)  # the token server: same host as the registry, another port
    return ConsumerEnv(
        target=served.server.target,
        tmp_dir=scratch,
        prefix=prefix,
        # A group per consumer: the same url with the same credentials twice in one group is
        # refused (DUPLICATE_UPSTREAM), and every consumer adds the same two registries.
        group=f"consumers-{lang}",
        upstreams=(
            ConsumerUpstream(
                id=f"{prefix}open",
                url=served.open_url,
                display_name="Open",
                realm_allow_hosts=hosts,
            ),
            ConsumerUpstream(
                id=f"{prefix}token",
                url=served.token_url,
                display_name="Token",
                realm_allow_hosts=hosts,
                username=served.token_user,
                password=served.token_password,
            ),
        ),
        registry_id=f"{prefix}r",
        path=HIT_PATH,
        token=CALLER_TOKEN,
        tls=ConsumerTls(
            ca=served.pki.ca.cert_path,
            cert=served.pki.client.cert_path,
            key=served.pki.client.key_path,
        ),
    )


@dataclass
class Outcome:
    line: str | None = None
    error: BaseException | None = None
    seconds: float = 0.0


def _run(lang: str, env: ConsumerEnv) -> Outcome:
    started = time.monotonic()
    try:
        line = CONSUMERS[lang](env)
    except BaseException as error:  # reported by that language's test, not lost in the pool
        return Outcome(error=error, seconds=time.monotonic() - started)
    return Outcome(line=line, seconds=time.monotonic() - started)


@pytest.fixture(scope="module")
def outcomes(served: Served, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every registered consumer, run once, in parallel."""
    missing_modules = []
    for module in ENTRY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            missing_modules.append(f"{module}: {error}")
    results: dict[str, Outcome] = {}
    runnable = [lang for lang in LANGUAGES if lang in CONSUMERS]
    with ThreadPoolExecutor(max_workers=len(LANGUAGES)) as pool:
        futures = {
            lang: pool.submit(_run, lang, _env(served, lang, tmp_path_factory.mktemp(lang)))
            for lang in runnable
        }
        for lang, future in futures.items():
            results[lang] = future.result()
    for lang in LANGUAGES:
        if lang not in results:
            reason = "; ".join(missing_modules) or "no consumer registered"
            results[lang] = Outcome(error=AssertionError(f"no {lang} consumer: {reason}"))
    for lang, outcome in results.items():
        print(f"[{lang}] consumer: {outcome.seconds:.1f}s")
    for name, size in sorted(ARTIFACT_SIZES.items()):
        print(f"artifact size: {name}: {size} bytes ({size / 1024:.0f} KiB)")
    return results


def _without_prefix(answer: dict[str, Any], prefix: str) -> dict[str, Any]:
    def strip(upstream_id: str) -> str:
        assert upstream_id.startswith(prefix), (upstream_id, prefix)
        return upstream_id[len(prefix) :]

    return {
        **answer,
        "upstream_id": strip(answer["upstream_id"]),
        "outcomes": [[strip(uid), outcome] for uid, outcome in answer["outcomes"]],
    }


@pytest.mark.parametrize("lang", LANGUAGES)
def test_consumer_runs_the_seed_flow(
    lang: str, outcomes: dict[str, Outcome], served: Served
) -> None:
    outcome = outcomes[lang]
    if outcome.error is not None:
        pytest.fail(f"[{lang}] {outcome.error}\n--- server log (tail) ---\n"
                    f"{served.server.logs()[-3000:]}", pytrace=False)  # fmt: skip
    assert outcome.line is not None
    answer = _without_prefix(json.loads(outcome.line), f"{lang}-")
    assert answer["upstream_id"] == "token" and answer["position"] == 2
    assert answer["digest"] == served.hit_digest
    assert answer["url"] == f"{served.token_url}/v2/{HIT_PATH}"
    assert answer["outcomes"] == [
        ["open", "ATTEMPT_OUTCOME_NOT_FOUND"],
        ["token", "ATTEMPT_OUTCOME_FOUND"],
    ]


def test_the_four_consumers_agree(outcomes: dict[str, Outcome]) -> None:
    answers = {}
    for lang in LANGUAGES:
        line = outcomes[lang].line
        assert line is not None, f"no answer from {lang}: see test_consumer_runs_the_seed_flow"
        answers[lang] = _without_prefix(json.loads(line), f"{lang}-")
    reference = answers["python"]
    differing = {lang: a for lang, a in answers.items() if a != reference}
    assert not differing, f"python: {reference}\n" + "\n".join(
        f"{lang}: {answer}" for lang, answer in differing.items()
    )
