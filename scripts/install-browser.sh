#!/usr/bin/env bash
# Installs what tests/browser needs, idempotently:
#   - Debian's Chromium at /usr/bin/chromium (apt-get; `apt-get update` only when apt does not
#     know the package yet, or the first install attempt fails on a stale list);
#   - Playwright for Python into the virtualenv $1 (default .venv).
# It never runs `playwright install`: that downloads Playwright's own browser builds, which cannot
# be fetched here. The tests launch Debian's Chromium with executable_path="/usr/bin/chromium".
# Usage: bash scripts/install-browser.sh [VENV]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-.venv}"
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac

# Pinned: a new Playwright can change what the tests see; keep it close to Debian's Chromium.
playwright_spec="playwright==1.65.2"
chromium=/usr/bin/chromium

fail() {
    echo "install-browser: $*" >&2
    exit 1
}

[[ -x "$venv/bin/python" ]] || fail "no virtualenv at $venv (create it first: python3 -m venv $venv)"

if [[ ! -x "$chromium" ]]; then
    command -v apt-get >/dev/null || fail "$chromium is missing and apt-get is not available to install it"
    if [[ "$(id -u)" -eq 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        fail "$chromium is missing; installing it needs root (apt-get install -y chromium)"
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Refresh the package lists only when apt has no candidate for chromium (a fresh machine).
    candidate="$(apt-cache policy chromium 2>/dev/null | awk '/Candidate:/ {print $2}')"
    if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then
        echo "install-browser: apt-get update (no chromium candidate yet)"
        "${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
    fi
    echo "install-browser: apt-get install -y chromium"
    if ! "${sudo[@]}" apt-get install -y -qq chromium >/dev/null; then
        # A stale list names package versions the mirror no longer has: refresh once and retry.
        "${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
        "${sudo[@]}" apt-get install -y -qq chromium >/dev/null || fail "apt-get install -y chromium failed"
    fi
    [[ -x "$chromium" ]] || fail "apt-get installed chromium but $chromium is still missing"
fi

# pip leaves a satisfied pin alone without asking the index.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$playwright_spec" \
    || fail "pip install $playwright_spec into $venv failed"
"$venv/bin/python" -c "import playwright.sync_api, playwright.async_api" \
    || fail "playwright does not import in $venv"

version="$("$chromium" --version 2>/dev/null | head -n 1)" || true
[[ -n "$version" ]] || fail "$chromium does not run (--version printed nothing)"
echo "browser tools ready: $version, $("$venv/bin/python" -m playwright --version)"
