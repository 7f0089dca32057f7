#!/usr/bin/env bash
# Writes secrets.env beside this script, for the dev overlay's secretGenerator: a random
# ROOMCAST_SECRET and RabbitMQ password, the URLs that use them, and random keys for the optional
# sign-in by token (ROOMCAST_JWT_SECRET) and backend API (ROOMCAST_API_KEY), so an application
# under development (examples/app-backend) can use both: give it the same two values. Leaves an existing file alone
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
jwt_secret="$(random 48)"      # HS256 needs 32+ bytes
api_key="$(random 40)"

umask 077
cat >"$out" <<ENV
ROOMCAST_SECRET=$secret
ROOMCAST_AMQP_URL=amqp://roomcast:$rabbit_password@rabbitmq:5672/
ROOMCAST_MONGO_URL=mongodb://mongodb:27017
RABBITMQ_DEFAULT_USER=roomcast
RABBITMQ_DEFAULT_PASS=$rabbit_password
ROOMCAST_WEBHOOK_SECRET=$webhook_secret
ROOMCAST_JWT_SECRET=$jwt_secret
ROOMCAST_API_KEY=$api_key
ENV
echo "wrote $out"
