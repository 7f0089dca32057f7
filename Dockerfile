# syntax=docker/dockerfile:1
#
# One image for every roomcast service; the command picks the service:
#   docker run IMAGE gateway  --host 0.0.0.0 --port 8000
#   docker run IMAGE history  --host 0.0.0.0 --port 8001
#   docker run IMAGE presence --host 0.0.0.0 --port 8002
#   docker run IMAGE                      (= --help)
#
# It installs roomcast without extras: what the services need, and nothing under a copyleft
# licence (scripts/check-licenses.py). `roomcast dev` needs SecantusDB (GPL-2.0), the `dev` extra,
# so it is not in the image: run it from a checkout with `bash scripts/dev.sh`.
#
# The builder stage turns the project and its dependencies into wheels and installs them into a
# virtualenv at /opt/venv; the runtime stage copies only that virtualenv onto the same slim base
# (same interpreter path, so the venv's symlinks stay valid), with no compiler, no pip and no
# source tree, and runs as an unprivileged numeric user so Kubernetes can enforce runAsNonRoot.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Only what `pip install .` reads (see .dockerignore): metadata first, then the package folders
# mapped in pyproject.toml's [tool.setuptools] package-dir.
COPY pyproject.toml README.md ./
COPY roomcast/ roomcast/
COPY shared/ shared/
COPY services/ services/

# Wheels for roomcast and every dependency, then an offline install of exactly those wheels into a
# venv created without pip (the builder's own pip drives it), so the runtime image carries no
# installer. `--compile` writes the bytecode now: the runtime filesystem can be read-only.
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir --no-index --find-links /wheels \
        --compile /wheels/roomcast-*.whl \
    && /opt/venv/bin/python -I -c "import roomcast.cli, roomcast.gateway, roomcast.history, roomcast.presence" \
    && /opt/venv/bin/roomcast --help > /dev/null


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="roomcast" \
      org.opencontainers.image.description="Real-time chat backend: WebSocket gateways fanning out over RabbitMQ" \
      org.opencontainers.image.licenses="MIT"

# A fixed, numeric, non-root uid/gid (10001) that matches runAsUser in deploy/k8s.
RUN groupadd --system --gid 10001 roomcast \
    && useradd --system --uid 10001 --gid roomcast --home-dir /home/roomcast --create-home \
        --shell /usr/sbin/nologin roomcast

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ROOMCAST_LOG_FORMAT=json

USER 10001:10001
WORKDIR /home/roomcast

# gateway 8000, history 8001, presence 8002: each serves /healthz, /readyz and /metrics.
EXPOSE 8000 8001 8002

# roomcast runs as PID 1 and handles SIGTERM itself: the gateway closes its sockets with 1012 and
# drains within ROOMCAST_DRAIN_SECONDS.
STOPSIGNAL SIGTERM

ENTRYPOINT ["roomcast"]
CMD ["--help"]
