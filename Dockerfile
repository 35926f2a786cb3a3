# vregistry-server: a slim, non-root image; `make image` builds it (docker when an engine
# answers, else buildah), scripts/test-image.sh runs it (part of `make test`).
#
# BASE is any image with python 3.11 (python3 -m venv) and useradd: python:3.11-slim by
# default; where that cannot be pulled, scripts/make-base-image.sh makes a stand-in from
# Debian bookworm's own packages. With buildah, build with `--format docker`: the OCI format
# has no HEALTHCHECK.
ARG BASE=python:3.11-slim

# ---------------------------------------------------------------- build: a venv in /opt/vregistry
FROM ${BASE} AS build
# pip checks TLS against the system bundle. A build on a machine with its own CA may mount
# that bundle here read-only (`-v /etc/ssl/certs/ca-certificates.crt:...:ro`), and pip's cache
# on /root/.cache/pip (scripts/build-image.sh does both); mounts, never files of a layer.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python3 -m venv /opt/vregistry
# The pinned dependencies first, read from pyproject.toml (their one list), so that a change
# of the code alone reuses this layer instead of downloading them again.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print(*p["dependencies"], sep="\n")' > /tmp/requirements.txt \
 && /opt/vregistry/bin/pip install -r /tmp/requirements.txt
COPY setup.py README.md ./
COPY protos ./protos
COPY scripts/gen_protos.py ./scripts/gen_protos.py
COPY server ./server
# The package build generates the stubs from protos/ (setup.py). pip and setuptools are not
# needed at run time; --version proves that the installed program imports.
RUN /opt/vregistry/bin/pip install . \
 && /opt/vregistry/bin/pip uninstall --yes pip setuptools \
 && /opt/vregistry/bin/vregistry-server --version

# ---------------------------------------------------------------- runtime
FROM ${BASE}
ARG BASE
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="vregistry-server" \
      org.opencontainers.image.description="gRPC service that resolves container-registry upstreams for a virtual registry" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE}"
# A fixed uid/gid, 10001, the same in every build: volumes and runAsUser can rely on it.
RUN groupadd --gid 10001 vregistry \
 && useradd --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --no-log-init \
      --shell /usr/sbin/nologin vregistry \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/vregistry
COPY --from=build /opt/vregistry /opt/vregistry
COPY examples/config.yaml /etc/vregistry/config.yaml
# Read-only root: bytecode was compiled at install and is never written at run time; the
# only writable places are /tmp and the data volume (--data-dir, ConfigService's store).
ENV PATH=/opt/vregistry/bin:${PATH} \
    VREGISTRY_CONFIG=/etc/vregistry/config.yaml \
    VREGISTRY_LISTEN=0.0.0.0:50051 \
    VREGISTRY_HEALTHCHECK_TARGET=127.0.0.1:50051 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/vregistry"]
USER 10001:10001
EXPOSE 50051
# SIGTERM: NOT_SERVING, in-flight calls finish within settings.shutdown_grace_seconds
# (10 s by default), exit 0. Give the engine's stop timeout a little more than that.
STOPSIGNAL SIGTERM
# grpc.health.v1 through the installed grpcio (no probe binary). It asks
# VREGISTRY_HEALTHCHECK_TARGET: change it with VREGISTRY_LISTEN's port; with TLS set
# VREGISTRY_HEALTHCHECK_CA (and _CERT, _KEY for mTLS).
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-m", "vregistry_server.healthcheck"]
ENTRYPOINT ["vregistry-server"]
# The image listens on 0.0.0.0, so the server refuses to start without caller
# authentication (exit 2). Mount a callers file here, one line per caller
# (`python -m vregistry_server.admin.callers new NAME ROLES GROUPS` prints one):
#   docker run -v "$PWD/callers:/etc/vregistry/callers:ro" IMAGE
# For ConfigService add a data volume and a key: -v vregistry-data:/var/lib/vregistry
#   IMAGE --callers-file /etc/vregistry/callers --data-dir /var/lib/vregistry
#   --encryption-key-file /etc/vregistry/keys. Running open on purpose:
#   IMAGE --allow-unauthenticated (logged as a warning at start and every hour).
CMD ["--callers-file", "/etc/vregistry/callers"]
