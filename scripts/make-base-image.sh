#!/usr/bin/env bash
# Makes the stand-in for python:3.11-slim from Debian bookworm's own packages (bookworm's
# python3 is 3.11), for machines that cannot pull from Docker Hub, and prints its name.
#
#   BASE="$(scripts/make-base-image.sh)" && make image BASE="$BASE"
#
# Two caches, both keyed on the recipe below (change it and both are made anew):
#   .cache/image/base-<key>.tar   the mmdebstrap root filesystem (gitignored; the slow part)
#   localhost/vregistry-base:bookworm-<key> in buildah's storage (imported from the tarball)
# Runs as root (mmdebstrap's root mode, buildah with the vfs driver), as on CI.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${VREGISTRY_IMAGE_CACHE:-$ROOT/.cache/image}"
BUILDAH=(buildah --storage-driver vfs)

SUITE=bookworm
# What python:3.11-slim has that the Dockerfile uses: python3 with venv/ensurepip, the CA
# bundle (TLS to upstreams), useradd (passwd is in minbase).
PACKAGES=python3,python3-venv,ca-certificates
MIRRORS=(
    "deb http://deb.debian.org/debian $SUITE $SUITE-updates main"
    "deb http://deb.debian.org/debian-security $SUITE-security main"
)
# Like the slim images: no manuals, no translations, no docs except the licences.
DPKG_OPTS=(
    "path-exclude=/usr/share/man/*"
    "path-exclude=/usr/share/locale/*"
    "path-include=/usr/share/locale/locale.alias"
    "path-exclude=/usr/share/doc/*"
    "path-include=/usr/share/doc/*/copyright"
    "path-exclude=/usr/share/info/*"
)
RECIPE="v1 $SUITE minbase $PACKAGES ${MIRRORS[*]} ${DPKG_OPTS[*]}"
KEY="$(printf '%s' "$RECIPE" | sha256sum | cut -c1-12)"
NAME="localhost/vregistry-base:$SUITE-$KEY"
TARBALL="$CACHE/base-$KEY.tar"

log() { echo "make-base-image: $*" >&2; }

if "${BUILDAH[@]}" inspect --type image "$NAME" >/dev/null 2>&1; then
    log "reusing $NAME"
    echo "$NAME"
    exit 0
fi

if [ ! -s "$TARBALL" ]; then
    command -v mmdebstrap >/dev/null 2>&1 || "$ROOT/scripts/install-system-deps.sh" >&2
    mkdir -p "$CACHE"
    log "building the $SUITE root filesystem with mmdebstrap (first run only; a few minutes)"
    dpkg_args=()
    for opt in "${DPKG_OPTS[@]}"; do dpkg_args+=("--dpkgopt=$opt"); done
    # Into a partial file first, so an interrupted run never leaves a tarball that looks whole.
    mmdebstrap --quiet --mode=root --variant=minbase --include="$PACKAGES" \
        "${dpkg_args[@]}" --format=tar "$SUITE" "$TARBALL.partial" "${MIRRORS[@]}" >&2
    mv "$TARBALL.partial" "$TARBALL"
fi

log "importing $TARBALL as $NAME"
ctr="$("${BUILDAH[@]}" from --quiet scratch)"
trap '"${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
"${BUILDAH[@]}" add --quiet "$ctr" "$TARBALL" / >&2
python_version="$("${BUILDAH[@]}" run --isolation chroot "$ctr" -- python3 -c 'import platform; print(platform.python_version())')"
"${BUILDAH[@]}" config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd python3 \
    --label "org.opencontainers.image.title=vregistry stand-in base ($SUITE, python $python_version)" \
    --label "org.opencontainers.image.description=mmdebstrap $SUITE minbase with $PACKAGES" \
    "$ctr"
"${BUILDAH[@]}" commit --quiet --rm "$ctr" "$NAME" >/dev/null
trap - EXIT
log "made $NAME (python $python_version)"
echo "$NAME"
