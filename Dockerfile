# syntax=docker/dockerfile:1
# oscc-bridge container image.
#
#   docker build -t oscc-bridge .
#   docker run --rm -v oscc-bridge-state:/var/lib/oscc-bridge \
#     -v "$PWD/bridge.toml:/etc/oscc-bridge/bridge.toml:ro" \
#     -e OSCC_FACEBOOK_TOKEN=... -p 8080:8080 oscc-bridge
#
# Two stages: the builder installs the package and its dependencies into a virtualenv;
# the runtime stage copies only that virtualenv onto a fresh slim Python, so no build
# tool, compiler or pip cache ends up in the final image.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
# Extras installed: "otel" lets `[tracing] enabled = true` work without another image;
# --build-arg EXTRAS= leaves OpenTelemetry out.
ARG EXTRAS=otel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Every dependency ships binary wheels for CPython 3.11 on amd64 and arm64, so the slim
# image needs no compiler here either; on another platform install build-essential in
# this stage only.
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY bridge ./bridge
# pip and setuptools leave the venv: nothing is installed at run time.
RUN /opt/venv/bin/pip install --no-cache-dir ".[${EXTRAS}]" \
 && /opt/venv/bin/oscc-bridge --help >/dev/null \
 && /opt/venv/bin/pip uninstall --yes --quiet setuptools pip

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="oscc-bridge" \
      org.opencontainers.image.description="OpenScape Contact Center OpenMedia <-> RabbitMQ bridge"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OSCC_BRIDGE_HEALTH_URL=http://127.0.0.1:8080/healthz
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
# /var/lib/oscc-bridge holds the disk spool and the dedupe store: state that must outlive
# the container (spool.dir must lie inside it; the default "var/spool" does, relative to
# the working directory).
RUN groupadd --system --gid 10001 bridge \
 && useradd --system --uid 10001 --gid bridge --home-dir /var/lib/oscc-bridge \
      --no-create-home --shell /usr/sbin/nologin bridge \
 && mkdir -p /var/lib/oscc-bridge/spool /etc/oscc-bridge \
 && chown -R 10001:10001 /var/lib/oscc-bridge
COPY --from=builder /opt/venv /opt/venv
COPY config/bridge.example.toml /etc/oscc-bridge/bridge.example.toml
WORKDIR /var/lib/oscc-bridge
USER 10001:10001
VOLUME ["/var/lib/oscc-bridge"]
EXPOSE 8080
# Liveness only (/healthz: the process answers). /readyz is for orchestrators that route
# traffic; a container is not restarted because OSCC refused its connector.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['OSCC_BRIDGE_HEALTH_URL'], timeout=4)"]
ENTRYPOINT ["oscc-bridge"]
CMD ["run", "--config", "/etc/oscc-bridge/bridge.toml"]
