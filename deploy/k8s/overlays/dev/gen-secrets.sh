#!/usr/bin/env bash
# Writes secrets.env beside this script, for the dev overlay's secretGenerator: a random
# ROOMCAST_SECRET and RabbitMQ password, and the URLs that use them. Leaves an existing file alone
# (pass --force to replace it; then restart RabbitMQ's pod with a fresh volume, since RabbitMQ only
# creates its default user on first boot).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/secrets.env"

if [[ -e "$out" && "${1:-}" != "--force" ]]; then
    echo "$out exists; keeping it (use --force to replace it)" >&2
    exit 0
fi

random() { LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c "$1" || true; }

secret="$(random 40)"
rabbit_password="$(random 32)"
webhook_secret="$(random 40)"  # for deploy/k8s/components/webhooks, when an overlay takes it

umask 077
cat >"$out" <<ENV
ROOMCAST_SECRET=$secret
ROOMCAST_AMQP_URL=amqp://roomcast:$rabbit_password@rabbitmq:5672/
ROOMCAST_MONGO_URL=mongodb://mongodb:27017
RABBITMQ_DEFAULT_USER=roomcast
RABBITMQ_DEFAULT_PASS=$rabbit_password
ROOMCAST_WEBHOOK_SECRET=$webhook_secret
ENV
echo "wrote $out"
