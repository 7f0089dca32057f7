#!/usr/bin/env bash
# mypy --strict over the `roomcast` package. The package maps several folders (pyproject.toml:
# services/gateway -> roomcast.gateway, shared -> roomcast.shared, ...) through setuptools'
# editable finder, which mypy cannot follow, so this lays out the same tree as symlinks first.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
# A tree of its own per run, so that runs side by side do not pull it from under each other.
tree="$(mktemp -d "${TMPDIR:-/tmp}/roomcast-typecheck.XXXXXX")"
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/roomcast"
for f in roomcast/*; do ln -s "$PWD/$f" "$tree/roomcast/"; done
ln -s "$PWD/shared" "$tree/roomcast/shared"
ln -s "$PWD/services/gateway" "$tree/roomcast/gateway"
ln -s "$PWD/services/history" "$tree/roomcast/history"
ln -s "$PWD/services/presence" "$tree/roomcast/presence"
ln -s "$PWD/services/webhooks" "$tree/roomcast/webhooks"
cd "$tree"
"${MYPY:-$root/.venv/bin/mypy}" --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" -p roomcast
