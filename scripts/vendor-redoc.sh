#!/usr/bin/env bash
# Vendors ReDoc's standalone bundle into services/gateway/static/docs/, the package data that
# /docs serves, so the page loads nothing from another origin (PROTOCOL.md 2.2).
#
# Where it comes from: the npm package `redoc`, version REDOC_VERSION below, fetched with
# `npm pack` from the registry and checked against the registry's sha512 integrity pinned here.
# What is kept: bundles/redoc.standalone.js (React, styled-components and the rest inlined),
# its third-party notices (redoc.standalone.js.LICENSE.txt) and ReDoc's LICENSE (MIT).
#
# Why 2.x and not 3.x: redoc 3 sends telemetry to otel.cloud.redocly.com and loads icons from
# cdn.redocly.com, and its standalone bundle is an ES module that needs more than a <script>.
# 2.5's only outside reference is a logo <img> in the side menu, which /docs's CSP blocks.
#
# Usage: bash scripts/vendor-redoc.sh        (run from anywhere; needs npm and network to npm)
set -euo pipefail

REDOC_VERSION="2.5.4"
REDOC_INTEGRITY="sha512-M6jWhG1qoBnH6TFmzJnstyCZ87HmOY/UzDm78mHiYihEdlV/YcS9ogOo1NlElnJMeLsyxHFe2yFc4sNjHTrABQ=="

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/services/gateway/static/docs"
work="$(mktemp -d "${TMPDIR:-/tmp}/vendor-redoc.XXXXXX")"
trap 'rm -rf "$work"' EXIT

command -v npm >/dev/null || { echo "vendor-redoc: npm is required" >&2; exit 1; }

(cd "$work" && npm pack --silent "redoc@$REDOC_VERSION" >/dev/null)
tarball="$work/redoc-$REDOC_VERSION.tgz"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [[ "$actual" != "$REDOC_INTEGRITY" ]]; then
    echo "vendor-redoc: integrity mismatch for redoc@$REDOC_VERSION: $actual" >&2
    exit 1
fi
tar -xzf "$tarball" -C "$work"
license="$(cd "$work/package" && node -p 'require("./package.json").license')"
[[ "$license" == "MIT" ]] || { echo "vendor-redoc: licence is $license, not MIT" >&2; exit 1; }

mkdir -p "$dest"
cp "$work/package/bundles/redoc.standalone.js" "$dest/redoc.standalone.js"
cp "$work/package/bundles/redoc.standalone.js.LICENSE.txt" "$dest/redoc.standalone.js.LICENSE.txt"
cp "$work/package/LICENSE" "$dest/LICENSE.redoc"
echo "vendor-redoc: redoc@$REDOC_VERSION ($license) -> ${dest#"$root"/}"
