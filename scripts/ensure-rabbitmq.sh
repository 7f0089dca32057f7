#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672 for the integration tests.
#
# If nothing answers: install Debian's rabbitmq-server (only when it is not installed), start it
# detached and wait until the port answers. Idempotent: a broker that answers is left alone (never
# stopped or restarted). Exits non-zero with a message saying what failed.
set -euo pipefail

HOST=127.0.0.1
PORT=5672
WAIT_SECONDS="${RABBITMQ_WAIT_SECONDS:-60}"

answers() {
    timeout 2 bash -c "exec 3<>/dev/tcp/${HOST}/${PORT}" 2>/dev/null
}

fail() {
    echo "ensure-rabbitmq: error: $*" >&2
    exit 1
}

if answers; then
    echo "ensure-rabbitmq: RabbitMQ already answers on ${HOST}:${PORT}"
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "not root and no sudo: cannot install or start rabbitmq-server"
    as_root=(sudo)
fi

if ! dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null | grep -q "install ok installed"; then
    echo "ensure-rabbitmq: installing rabbitmq-server from Debian's packages"
    "${as_root[@]}" apt-get update -q || fail "apt-get update failed"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server \
        || fail "apt-get install rabbitmq-server failed"
fi

# The package's post-install script may already have started it.
if ! answers; then
    echo "ensure-rabbitmq: starting rabbitmq-server -detached"
    # A start already under way makes this fail with "node already running": the wait decides.
    "${as_root[@]}" /usr/sbin/rabbitmq-server -detached \
        || echo "ensure-rabbitmq: rabbitmq-server -detached returned an error; waiting anyway" >&2
fi

deadline=$((SECONDS + WAIT_SECONDS))
until answers; do
    if [ "${SECONDS}" -ge "${deadline}" ]; then
        fail "RabbitMQ does not answer on ${HOST}:${PORT} after ${WAIT_SECONDS}s (see /var/log/rabbitmq/)"
    fi
    sleep 1
done
echo "ensure-rabbitmq: RabbitMQ answers on ${HOST}:${PORT}"
