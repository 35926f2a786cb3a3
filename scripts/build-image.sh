#!/usr/bin/env bash
# `make image`: builds the Dockerfile as IMAGE (default localhost/vregistry-server:dev).
#
# With docker when a Docker engine answers, else with buildah (as root: vfs storage, chroot
# isolation, docker format so that HEALTHCHECK is kept). ENGINE=docker|buildah forces one.
# BASE defaults to python:3.11-slim; buildah falls back to the mmdebstrap stand-in
# (scripts/make-base-image.sh) when that cannot be pulled. Prints the image name last.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
IMAGE="${IMAGE:-localhost/vregistry-server:dev}"
BASE="${BASE:-}"
DEFAULT_BASE=docker.io/library/python:3.11-slim
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
CACHE="${VREGISTRY_IMAGE_CACHE:-$ROOT/.cache/image}"

log() { echo "build-image: $*" >&2; }

engine="${ENGINE:-}"
if [ -z "$engine" ]; then
    if command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
        engine=docker
    else
        engine=buildah
    fi
fi

# The labels' version comes from pyproject.toml (its one definition), the revision from git.
version="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    revision="$revision-dirty"
fi
build_args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision")

case "$engine" in
docker)
    log "building $IMAGE with docker"
    docker build ${BASE:+--build-arg "BASE=$BASE"} "${build_args[@]}" -t "$IMAGE" -f Dockerfile . >&2
    ;;
buildah)
    command -v buildah >/dev/null 2>&1 || "$ROOT/scripts/install-system-deps.sh" >&2
    buildah=(buildah --storage-driver vfs)
    if [ -z "$BASE" ]; then
        if "${buildah[@]}" inspect --type image "$DEFAULT_BASE" >/dev/null 2>&1 \
            || timeout 120 "${buildah[@]}" pull --quiet "$DEFAULT_BASE" >/dev/null 2>&1; then
            BASE="$DEFAULT_BASE"
        else
            log "$DEFAULT_BASE cannot be pulled here: using the Debian stand-in"
            BASE="$("$ROOT/scripts/make-base-image.sh")"
        fi
    fi
    # Build-time mounts only, never files of a layer: the machine's CA bundle (pip verifies
    # TLS with it) and pip's cache (a rebuild downloads nothing again where the network lets
    # pip cache; here a proxy's headers keep it empty, and a build downloads about 30 MB).
    mkdir -p "$CACHE/pip"
    mounts=(--volume "$CACHE/pip:/root/.cache/pip")
    [ -r "$CA_BUNDLE" ] && mounts+=(--volume "$CA_BUNDLE:$CA_BUNDLE:ro")
    log "building $IMAGE with buildah on $BASE"
    # No --layers: with the vfs driver every cached layer is a full copy of the tree, left
    # behind by each change of the code. --pull=false: BASE is local by now.
    "${buildah[@]}" build --isolation chroot --format docker --pull=false \
        "${mounts[@]}" --build-arg "BASE=$BASE" "${build_args[@]}" \
        --tag "$IMAGE" --file Dockerfile . >&2
    # The image this tag pointed to before.
    "${buildah[@]}" rmi --prune >/dev/null 2>&1 || true
    ;;
*)
    log "ENGINE must be docker or buildah, not '$engine'"
    exit 2
    ;;
esac
echo "$IMAGE"
