#!/usr/bin/env bash
# Proves the container image (`make test` runs this; `make test-image` alone):
#   builds it with buildah (scripts/build-image.sh; the mmdebstrap stand-in base when
#   python:3.11-slim cannot be pulled), then runs it in a working container
#   (`buildah run --isolation chroot`, the host's network, listening on 127.0.0.1 only) and
#   checks: image config (uid 10001, HEALTHCHECK kept, OCI labels), `check-config` exits 0 on
#   the shipped config and 2 on a broken one, the server process runs as uid 10001, the
#   image's own HEALTHCHECK command says SERVING, UrlFor answers over gRPC from the host
#   (with a caller token from the mounted callers file; none gives UNAUTHENTICATED), nothing
#   is written outside /tmp and the data volume, and SIGTERM ends it with 0 within the grace
#   period. Prints the build time and the image size. Removes the containers it made.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
IMAGE="${IMAGE:-localhost/vregistry-server:test}"
BUILDAH=(buildah --storage-driver vfs)
RUN=("${BUILDAH[@]}" run --isolation chroot)
# settings.shutdown_grace_seconds of the shipped config (the default, 10 s).
GRACE_SECONDS=10
START_TIMEOUT_SECONDS=60

work="$(mktemp -d)"
chmod 0755 "$work"
ctr=""
run_pid=""
server_pid=""

log() { echo "test-image: $*"; }
fail() {
    echo "test-image: FAIL: $*" >&2
    if [ -s "$work/server.log" ]; then
        echo "--- server log (last 30 lines)" >&2
        tail -n 30 "$work/server.log" >&2
    fi
    exit 1
}
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
cleanup() {
    # Only the processes this script started, by their ids.
    if alive "$server_pid"; then kill -KILL "$server_pid" 2>/dev/null || true; fi
    if alive "$run_pid"; then kill -KILL "$run_pid" 2>/dev/null || true; fi
    if [ -n "$run_pid" ]; then wait "$run_pid" 2>/dev/null || true; fi
    if [ -n "$ctr" ]; then "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

command -v buildah >/dev/null 2>&1 || "$ROOT/scripts/install-system-deps.sh"
[ -x "$PY" ] || fail "$PY is missing (make protos makes the venv; the UrlFor check runs there)"

# ---------------------------------------------------------------- build
log "building $IMAGE (log: $work/build.log)"
started="$(now)"
IMAGE="$IMAGE" ENGINE=buildah scripts/build-image.sh >/dev/null 2>"$work/build.log" || {
    tail -n 40 "$work/build.log" >&2
    fail "the image did not build"
}
build_seconds="$(since "$started")"
size="$("${BUILDAH[@]}" images --format '{{.Size}}' "$IMAGE" | head -n 1)"
base="$(sed -n 's/.*building .* with buildah on //p' "$work/build.log" | head -n 1)"
log "ok: built in ${build_seconds}s on $base, image size $size"

# ---------------------------------------------------------------- the image's configuration
"${BUILDAH[@]}" inspect --type image "$IMAGE" >"$work/inspect.json"
python3 - "$work/inspect.json" "$work/config.sh" <<'EOF' || fail "image configuration (above)"
import json, shlex, sys

config = json.load(open(sys.argv[1]))["Docker"]["config"]
problems = []
if config.get("User") != "10001:10001":
    problems.append(f"User is {config.get('User')!r}, not '10001:10001'")
health = (config.get("Healthcheck") or {}).get("Test") or []
if health[:1] != ["CMD"] or "vregistry_server.healthcheck" not in health:
    problems.append(f"HEALTHCHECK missing or not the gRPC health check: {health!r}")
labels = config.get("Labels") or {}
for key in ("title", "description", "licenses", "version", "revision", "base.name"):
    if not labels.get(f"org.opencontainers.image.{key}"):
        problems.append(f"label org.opencontainers.image.{key} missing")
if "/var/lib/vregistry" not in (config.get("Volumes") or {}):
    problems.append("no volume /var/lib/vregistry")
if problems:
    sys.exit("\n".join(problems))
with open(sys.argv[2], "w") as out:
    out.write(f"entrypoint=({shlex.join(config.get('Entrypoint') or [])})\n")
    out.write(f"cmd=({shlex.join(config.get('Cmd') or [])})\n")
    out.write(f"healthcheck=({shlex.join(health[1:])})\n")
EOF
# shellcheck source=/dev/null
. "$work/config.sh"
log "ok: user 10001:10001, HEALTHCHECK ${healthcheck[*]}, OCI labels, volume /var/lib/vregistry"

ctr="$("${BUILDAH[@]}" from --pull=never --quiet "$IMAGE")"

# ---------------------------------------------------------------- a caller, the mounts
"$PY" -m vregistry_server.admin.callers new image-test resolver '*' >"$work/caller.txt"
token="$(sed -n 's/^token: *//p' "$work/caller.txt")"
sed -n 's/^line: *//p' "$work/caller.txt" >"$work/callers"
[ -n "$token" ] && [ -s "$work/callers" ] || fail "could not make a caller token"
cat >"$work/broken.yaml" <<'EOF'
upstreams:
  - id: plain
    name: Plain http without allow_http
    url: http://registry.invalid
registries: []
EOF
# Readable by uid 10001; the callers file holds hashes only.
chmod 0644 "$work/callers" "$work/broken.yaml"
mounts=(
    -v "$work/callers:/etc/vregistry/callers:ro"
    -v "$work/broken.yaml:/etc/vregistry/broken.yaml:ro"
)

# ---------------------------------------------------------------- check-config
# With the image's own flags (CMD), as `docker run IMAGE check-config --callers-file ...`.
"${RUN[@]}" "${mounts[@]}" "$ctr" -- "${entrypoint[@]}" check-config "${cmd[@]}" \
    >"$work/check.log" 2>&1 \
    || { cat "$work/check.log" >&2; fail "check-config of the shipped config did not exit 0"; }
log "ok: check-config exits 0 on /etc/vregistry/config.yaml"
set +e
"${RUN[@]}" "${mounts[@]}" "$ctr" -- "${entrypoint[@]}" check-config \
    --config /etc/vregistry/broken.yaml "${cmd[@]}" >"$work/check.log" 2>&1
rc=$?
set -e
[ "$rc" -eq 2 ] || { cat "$work/check.log" >&2; fail "check-config of a broken config exited $rc, not 2"; }
grep -q "upstreams\[0\]" "$work/check.log" || { cat "$work/check.log" >&2; fail "check-config did not name the entry"; }
log "ok: check-config exits 2 on a broken config: $(grep -m1 'upstreams\[0\]' "$work/check.log")"

# ---------------------------------------------------------------- run the server
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
run_opts=(
    --env "VREGISTRY_LISTEN=127.0.0.1:$port"
    --env "VREGISTRY_HEALTHCHECK_TARGET=127.0.0.1:$port"
    "${mounts[@]}"
)
# One run first, so that the mount points exist before the marker: afterwards, anything newer
# than the marker in the root filesystem was written by the server.
"${RUN[@]}" "${run_opts[@]}" "$ctr" -- true
rootfs="$("${BUILDAH[@]}" mount "$ctr")"
touch "$work/marker"

"${RUN[@]}" "${run_opts[@]}" "$ctr" -- "${entrypoint[@]}" "${cmd[@]}" >"$work/server.log" 2>&1 &
run_pid=$!
started="$(now)"
healthy=""
for _ in $(seq 1 $((START_TIMEOUT_SECONDS * 2))); do
    alive "$run_pid" || fail "the server exited at start"
    if "${RUN[@]}" "${run_opts[@]}" "$ctr" -- "${healthcheck[@]}" >/dev/null 2>&1; then
        healthy=1
        break
    fi
    sleep 0.5
done
[ -n "$healthy" ] || fail "the HEALTHCHECK did not report SERVING within ${START_TIMEOUT_SECONDS}s"
log "ok: the image's HEALTHCHECK reports SERVING after $(since "$started")s"

# The server process: the descendant of `buildah run` that runs the entrypoint under python.
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1"); do
        echo "$child"
        descendants "$child"
    done
}
for pid in $(descendants "$run_pid"); do
    args="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    case "$args" in
    *python*vregistry-server*) server_pid="$pid" ;;
    esac
done
[ -n "$server_pid" ] || fail "no server process under buildah run $run_pid"
uids="$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$server_pid/status")"
gids="$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/$server_pid/status")"
[ "$uids" = "10001 10001 10001 10001" ] || fail "the server runs with uids $uids, not 10001"
[ "$gids" = "10001 10001 10001 10001" ] || fail "the server runs with gids $gids, not 10001"
log "ok: the server process $server_pid runs as uid 10001 gid 10001"

"$PY" - "127.0.0.1:$port" "$token" <<'EOF' || fail "gRPC calls from the host (above)"
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc

target, token = sys.argv[1], sys.argv[2]
with grpc.insecure_channel(target) as channel:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health
    stub = pb_grpc.UpstreamServiceStub(channel)
    request = pb.UrlForRequest(upstream_id="dockerhub", path="library/alpine/manifests/latest")
    reply = stub.UrlFor(request, metadata=[("authorization", f"Bearer {token}")], timeout=5)
    expected = "https://registry-1.docker.io/v2/library/alpine/manifests/latest"
    assert reply.url == expected, reply
    try:
        stub.UrlFor(request, timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
    else:
        raise AssertionError("UrlFor without a caller token was answered")
print(f"test-image: ok: UrlFor over gRPC from the host: {reply.url}; without a token UNAUTHENTICATED")
EOF

# ---------------------------------------------------------------- SIGTERM
# As an engine stops a container: SIGTERM to its main process, then wait for the grace period.
kill -TERM "$server_pid"
started="$(now)"
for _ in $(seq 1 $(((GRACE_SECONDS + 2) * 10))); do
    alive "$run_pid" || break
    sleep 0.1
done
alive "$run_pid" && fail "the server still runs $((GRACE_SECONDS + 2))s after SIGTERM"
stop_seconds="$(since "$started")"
set +e
wait "$run_pid"
rc=$?
set -e
run_pid=""
server_pid=""
[ "$rc" -eq 0 ] || fail "the server exited $rc after SIGTERM, not 0"
log "ok: SIGTERM ends it with exit 0 after ${stop_seconds}s (grace ${GRACE_SECONDS}s)"

# ---------------------------------------------------------------- read-only root
# Files only: a directory's mtime also moves when buildah adds and removes its own
# /run/.containerenv around each run.
written="$(cd "$rootfs" && find . -xdev -newer "$work/marker" -not -type d \
    -not -path ./tmp -not -path './tmp/*' \
    -not -path ./var/lib/vregistry -not -path './var/lib/vregistry/*' -print)"
[ -z "$written" ] || fail "the server wrote outside /tmp and /var/lib/vregistry: $written"
log "ok: nothing written outside /tmp and /var/lib/vregistry (a read-only root is enough)"
"${BUILDAH[@]}" umount "$ctr" >/dev/null

log "passed: build ${build_seconds}s, image $size, base $base"
