"""The real world behind examples/pull-front (issue 13): registries, images, vregistry-server, stack.

:func:`pull_world` is the one definition used by tests/system/test_pull_front.py and by
benchmarks/pull_front.py. It starts

* ``open``: a docker-registry without auth;
* ``token``: a docker-registry with token auth (its own token server, a random user and
  password; vregistry-server gets the password from a 0600 ``password_file``, never from a
  command line);
* ``corrupt``: a third docker-registry that serves one blob with wrong bytes (below);
* ``vregistry-server`` with upstreams open/token/corrupt, registries ``main`` = [open, token]
  and ``corrupt`` = [corrupt], a random caller token in a ``--callers-file``, and with
  ``tls=True`` (the system test) mTLS: certificates of tests/support/certs.py in ``pki/`` of the
  work dir (a server certificate for 127.0.0.1, the CA its clients' certificates must chain to,
  a client certificate), so the front reaches it as a deployment would, with a client
  certificate AND the caller token;

pushes the images (``shared/app:v1`` holding a DIFFERENT image in open and in token,
``only/second:v1`` only in token, ``bad/app:v1`` in corrupt) and writes the stack
file that ``examples/pull-front/e2e_test.go`` reads (its ``stackFile`` type is the format;
its ``"vregistry"`` section has ``"tls": {"ca", "cert", "key"}`` paths when the server is mTLS).

The corrupt blob: the bytes of one layer are flipped in place in the corrupt registry's
filesystem storage, after the push. Length, ``Content-Length`` and ``Docker-Content-Digest``
stay what the registry recorded; only the body no longer hashes to its digest. This is bit
rot on a real registry's disk (distribution serves stored blobs without re-hashing them), so
no mock is needed for the one fault the front must refuse.

With ``counting=True`` (the benchmark) each upstream is reached through a counting proxy
(tests/support/proxy.py), so every upstream request -- vregistry-server's probes and pings
and the front's fetches, both go to the URL in the config -- is counted by kind; the server
also serves Prometheus metrics (RPC counters). ``bench_layers`` pushes two more images of that
many layers: ``bench/ten:v1`` on open (position 1) and ``bench/private:v1`` on token only
(position 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from tests.support.certs import Pki, make_pki
from tests.support.images import ManifestKind, PushedImage
from tests.support.processes import free_port
from tests.support.proxy import Proxy, start_proxy
from tests.support.registry import AuthMode, RegistryServer, start_registry
from tests.support.server_process import ServerProcess, server_env
from tests.support.token_server import TokenServer, start_token_server
from vregistry_server.admin.callers import hash_token

ROOT = Path(__file__).resolve().parents[2]
FRONT_DIR = ROOT / "examples" / "pull-front"
SHARED = ("shared/app", "v1")
SECOND = ("only/second", "v1")
BAD = ("bad/app", "v1")
MISSING_TAG = "nope"
BENCH_OPEN = ("bench/ten", "v1")
BENCH_TOKEN = ("bench/private", "v1")
TOKEN_USER = "puller"
OCI: ManifestKind = "oci"
# skopeo refuses to run without a signature policy; the world's one accepts anything (the
# registries are local fixtures) and lives in the work dir, so /etc/containers is not needed.
SKOPEO_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}
_CRANE_VERSION = re.compile(r"^CRANE_VERSION\s*:=\s*(\S+)\s*$", re.MULTILINE)
# What `go` must keep seeing when HOME and XDG_* point into the work dir (module cache, build
# cache and the user's `go env -w` settings such as GOPROXY).
_GO_PINNED = ("GOENV", "GOCACHE", "GOMODCACHE", "GOPATH")


@dataclass
class PullWorld:
    workdir: Path
    stack_path: Path
    stack: dict[str, Any]
    server: ServerProcess
    token_server: TokenServer
    #: "open", "token", "corrupt" -> the docker-registry behind that upstream.
    registries: dict[str, RegistryServer]
    #: upstream id -> its counting proxy (empty without ``counting``).
    proxies: dict[str, Proxy]
    #: stack image name ("both", "second_only", "other_copy", "corrupt", "bench_*") -> image.
    images: dict[str, PushedImage]
    caller_token: str
    caller_token_file: Path
    #: Values that must appear in no log: the caller token, the upstream password and (mTLS)
    #: the first line of the client's private key.
    secrets: tuple[str, ...]
    metrics_port: int | None = None
    #: The certificates of an mTLS server (None: the gRPC port is plaintext).
    pki: Pki | None = None
    _server_args: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return self.server.target

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        return client_credentials(self.pki)

    def restart_server(self) -> None:
        """Stop vregistry-server and start it again on the same port (its caches empty)."""
        self.server.stop()
        log = self.workdir / f"server-{len(list(self.workdir.glob('server*.log')))}.log"
        self.server = ServerProcess(self._server_args, server_env(), self.server.port, log)
        self.server.wait_serving(30, self.channel_credentials())

    def server_logs(self) -> str:
        """Every vregistry-server log of this world (restarts included)."""
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.workdir.glob("server*.log"))
        )


def client_credentials(pki: Pki | None) -> grpc.ChannelCredentials | None:
    """What a client of the mTLS server presents: the CA to trust and the client certificate
    (None: a plaintext server)."""
    if pki is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert,
        private_key=pki.client.key,
        certificate_chain=pki.client.cert,
    )


def _key_line(pki: Pki | None) -> tuple[str, ...]:
    """The first base64 line of the client's private key (a log leaking the key holds it)."""
    if pki is None:
        return ()
    return (pki.client.key.decode().splitlines()[1],)


def crane_path() -> Path:
    """bin/crane at the version the Makefile pins, built by the Makefile's rule when missing."""
    match = _CRANE_VERSION.search((ROOT / "Makefile").read_text())
    if match is None:
        raise RuntimeError("the Makefile defines no CRANE_VERSION")
    stamp, crane = ROOT / "bin" / f".crane-{match.group(1)}", ROOT / "bin" / "crane"
    if not (stamp.exists() and crane.exists()):
        # -B: a stamp left from a deleted binary must not stop the rebuild.
        subprocess.run(
            ["make", "-s", "-B", str(stamp.relative_to(ROOT))], cwd=ROOT, check=True, timeout=600
        )
    return crane


def skopeo_path() -> Path:
    found = shutil.which("skopeo")
    if found is None:
        raise RuntimeError("skopeo is not installed: run scripts/install-system-deps.sh")
    return Path(found)


def client_env(workdir: Path) -> dict[str, str]:
    """The environment for `go test` and the OCI clients: HOME, XDG_* and DOCKER_CONFIG in the
    work dir so that no user's registry login or containers config is read or written; Go's
    caches and settings pinned to the real ones (a first run downloads modules once)."""
    go = shutil.which("go")
    pinned: dict[str, str] = {}
    if go is not None:
        out = subprocess.run(
            [go, "env", "-json", *_GO_PINNED],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        pinned = {k: v for k, v in json.loads(out).items() if v}
    home = workdir / "home"
    dirs = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_RUNTIME_DIR": home / "run",
        "DOCKER_CONFIG": home / ".docker",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VREGISTRY_", "REGISTRY_"))}
    for name in ("REGISTRY_AUTH_FILE", "CONTAINERS_REGISTRIES_CONF", "CONTAINERS_POLICY_JSON"):
        env.pop(name, None)
    env.update({k: str(v) for k, v in dirs.items()})
    env.update(pinned)
    env["GOTOOLCHAIN"] = "local"
    return env


def blob_file(registry: RegistryServer, digest: str) -> Path:
    """Where distribution's filesystem driver keeps a blob's bytes."""
    algorithm, hexdigest = digest.split(":", 1)
    return (
        registry.storage_dir
        / "docker/registry/v2/blobs"
        / algorithm
        / hexdigest[:2]
        / hexdigest
        / "data"
    )


def corrupt_blob(registry: RegistryServer, digest: str) -> None:
    """Flip every bit of the middle byte of the stored blob: same length, wrong digest."""
    path = blob_file(registry, digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "sha256:" + hashlib.sha256(data).hexdigest() != digest


def _image_entry(name: str, registry_id: str, image: PushedImage, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "registry": registry_id,
        "repository": image.repository,
        "tag": image.tag,
        "digest": image.digest,
        "media_type": image.media_type,
        "blobs": list(image.blob_digests),
    }
    entry.update(extra)
    return entry


def _push_images(
    registries: dict[str, RegistryServer], bench_layers: int, bench_layer_size: int
) -> tuple[dict[str, PushedImage], list[dict[str, Any]]]:
    open_r, token_r, bad_r = registries["open"], registries["token"], registries["corrupt"]
    # OCI manifests: skopeo's oci: destination stores an OCI manifest as it is, but converts a
    # Docker v2 one (a new digest), and the clients' digests are what the test compares.
    both = open_r.push_image(*SHARED, kind=OCI)
    other = token_r.push_image(*SHARED, kind=OCI)  # the same repository:tag, another image
    second = token_r.push_image(*SECOND, kind=OCI)
    # Larger than the front's 32 KiB relay buffers: part of the body has gone out when the
    # mismatch shows, so the front must cut the response (not just answer 502).
    bad = bad_r.push_image(*BAD, kind=OCI, layers=2, layer_size=256 * 1024)
    corrupt_blob(bad_r, bad.layer_digests[-1])
    images = {"both": both, "other_copy": other, "second_only": second, "corrupt": bad}
    entries = [
        _image_entry("both", "main", both, expect_upstream="open", expect_position=1),
        _image_entry("second_only", "main", second, expect_upstream="token", expect_position=2),
        # Held by token under the tag "both" has on open: a pull through main must NOT get it.
        _image_entry("other_copy", "main", other, held_by="token"),
        {"name": "missing", "registry": "main", "repository": SHARED[0], "tag": MISSING_TAG},
        _image_entry("corrupt", "corrupt", bad, corrupt_blob=bad.layer_digests[-1]),
    ]
    if bench_layers:
        layers, size = bench_layers, bench_layer_size
        images["bench_open"] = open_r.push_image(
            *BENCH_OPEN, kind=OCI, layers=layers, layer_size=size
        )
        images["bench_token"] = token_r.push_image(
            *BENCH_TOKEN, kind=OCI, layers=layers, layer_size=size
        )
        entries += [
            _image_entry("bench_open", "main", images["bench_open"], expect_upstream="open",
                         expect_position=1),
            _image_entry("bench_token", "main", images["bench_token"], expect_upstream="token",
                         expect_position=2),
        ]  # fmt: skip
    return images, entries


def _server_config(workdir: Path, urls: dict[str, str], user: str, password: str) -> dict[str, Any]:
    password_file = workdir / "token-upstream-password"
    password_file.touch(mode=0o600)
    password_file.write_text(password)

    def upstream(upstream_id: str, **extra: Any) -> dict[str, Any]:
        entry = {"id": upstream_id, "name": upstream_id.title(), "url": urls[upstream_id]}
        return {**entry, "allow_http": True, **extra}

    return {
        "upstreams": [
            upstream("open"),
            upstream("token", username=user, password_file=str(password_file)),
            upstream("corrupt"),
        ],
        "registries": [
            {"id": "main", "name": "Main", "upstreams": ["open", "token"]},
            {"id": "corrupt", "name": "Corrupt", "upstreams": ["corrupt"]},
        ],
        "settings": {"shutdown_grace_seconds": 2, "egress_allow_cidrs": ["127.0.0.0/8"]},
    }


def _start_server(
    workdir: Path,
    config: dict[str, Any],
    caller_token: str,
    metrics_port: int | None,
    pki: Pki | None,
) -> tuple[ServerProcess, list[str]]:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    callers = workdir / "callers"
    callers.write_text(f"{hash_token(caller_token)} pull-front resolver *\n")
    port = free_port()
    args = [
        *("--config", str(workdir / "config.yaml"), "--listen", f"127.0.0.1:{port}"),
        *("--callers-file", str(callers)),
    ]
    if metrics_port is not None:
        args += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
    if pki is not None:
        args += [
            *("--tls-cert", str(pki.server.cert_path), "--tls-key", str(pki.server.key_path)),
            *("--tls-client-ca", str(pki.ca.cert_path)),
        ]
    server = ServerProcess(args, server_env(), port, workdir / "server.log")
    try:
        server.wait_serving(30, client_credentials(pki))
    except AssertionError:
        server.stop()
        raise
    return server, args


def _write_stack(
    workdir: Path,
    target: str,
    caller_token: str,
    pki: Pki | None,
    entries: list[dict[str, Any]],
) -> tuple[Path, dict[str, Any]]:
    policy = workdir / "skopeo-policy.json"
    policy.write_text(json.dumps(SKOPEO_POLICY) + "\n")
    scratch = workdir / "scratch"
    scratch.mkdir(exist_ok=True)
    vregistry: dict[str, Any] = {"target": target, "caller_token": caller_token}
    if pki is not None:
        vregistry["tls"] = {
            "ca": str(pki.ca.cert_path),
            "cert": str(pki.client.cert_path),
            "key": str(pki.client.key_path),
        }
    stack: dict[str, Any] = {
        "vregistry": vregistry,
        "tools": {
            "skopeo": str(skopeo_path()),
            "skopeo_policy": str(policy),
            "crane": str(crane_path()),
        },
        "work_dir": str(scratch),
        "registries": {
            "main": {"upstreams": ["open", "token"]},
            "corrupt": {"upstreams": ["corrupt"]},
        },
        "images": entries,
    }
    path = workdir / "stack.json"
    path.write_text(json.dumps(stack, indent=2) + "\n")
    path.chmod(0o600)  # it holds the caller token
    return path, stack


@contextlib.contextmanager
def pull_world(
    workdir: Path,
    *,
    counting: bool = False,
    bench_layers: int = 0,
    bench_layer_size: int = 1024 * 1024,
    tls: bool = True,
) -> Iterator[PullWorld]:
    """Start everything, yield the world, stop everything (the work dir is left for logs).

    ``tls``: vregistry-server's gRPC port is mTLS (False: plaintext on loopback, the caller
    token alone)."""
    workdir.mkdir(parents=True, exist_ok=True)
    pki = make_pki(workdir / "pki") if tls else None
    if pki is not None:
        pki.directory.chmod(0o700)  # it holds the client's private key
    password = secrets.token_urlsafe(18)
    caller_token = secrets.token_urlsafe(24)
    with contextlib.ExitStack() as stack:
        token_server = start_token_server(users={TOKEN_USER: password})
        stack.callback(token_server.close)
        registries: dict[str, RegistryServer] = {}
        kinds: tuple[tuple[str, AuthMode], ...] = (
            ("open", "none"),
            ("token", "token"),
            ("corrupt", "none"),
        )
        for upstream_id, auth in kinds:
            registry = start_registry(
                auth,
                users={TOKEN_USER: password} if auth == "token" else None,
                token_server=token_server if auth == "token" else None,
            )
            stack.callback(registry.close)
            registries[upstream_id] = registry
        images, entries = _push_images(registries, bench_layers, bench_layer_size)
        token_server.reset()  # seeding minted tokens directly; count from a clean state
        proxies: dict[str, Proxy] = {}
        if counting:
            for upstream_id, registry in registries.items():
                proxies[upstream_id] = start_proxy(registry.url, backend_timeout=120)
                stack.callback(proxies[upstream_id].stop)
        urls = {
            upstream_id: (proxies[upstream_id] if counting else registry).url
            for upstream_id, registry in registries.items()
        }
        config = _server_config(workdir, urls, TOKEN_USER, password)
        metrics_port = free_port() if counting else None
        server, args = _start_server(workdir, config, caller_token, metrics_port, pki)
        world = PullWorld(
            workdir=workdir,
            stack_path=workdir / "stack.json",
            stack={},
            server=server,
            token_server=token_server,
            registries=registries,
            proxies=proxies,
            images=images,
            caller_token=caller_token,
            caller_token_file=workdir / "caller-token",
            secrets=(caller_token, password, *_key_line(pki)),
            metrics_port=metrics_port,
            pki=pki,
            _server_args=args,
        )
        stack.callback(lambda: world.server.stop())
        world.caller_token_file.touch(mode=0o600)
        world.caller_token_file.write_text(caller_token + "\n")
        world.stack_path, world.stack = _write_stack(
            workdir, server.target, caller_token, pki, entries
        )
        yield world


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.support.pull_world DIR``: start the world, print the stack file, and keep
    it running until Ctrl-C (for trying the front by hand)."""
    import time

    workdir = Path((argv or sys.argv[1:] or ["/tmp/vreg-pull-world"])[0])
    with pull_world(workdir) as world:
        print(world.stack_path.read_text(), flush=True)
        print(f"stack: {world.stack_path}; Ctrl-C stops it (or it stops after an hour)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
