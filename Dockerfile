# vregistry-server: slim Python image, stubs generated at build, non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY scripts/gen_protos.py ./scripts/gen_protos.py
COPY server ./server
RUN pip install --no-cache-dir grpcio-tools==1.85.1 \
 && python scripts/gen_protos.py \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin vregistry
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY examples/config.yaml /etc/vregistry/config.yaml
USER 10001
ENV VREGISTRY_CONFIG=/etc/vregistry/config.yaml \
    VREGISTRY_LISTEN=0.0.0.0:50051 \
    PYTHONUNBUFFERED=1
EXPOSE 50051
# grpc.health.v1 through the installed grpcio; no extra binary needed.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-m", "vregistry_server.healthcheck", "127.0.0.1:50051"]
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
