#!/usr/bin/env bash
# Installs what tests/browser needs, idempotently:
#   - Debian's Chromium at /usr/bin/chromium and the colour emoji font fonts-noto-color-emoji
#     (apt-get, each only when missing; `apt-get update` only when apt does not know the
#     package yet, or the first install attempt fails on a stale list);
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

# apt_install PACKAGE: installs one Debian package (apt-get update only when apt has no
# candidate for it yet, or the first attempt fails on a stale list).
apt_install() {
    local package="$1" candidate
    command -v apt-get >/dev/null || fail "$package is missing and apt-get is not available to install it"
    if [[ "$(id -u)" -eq 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        fail "$package is missing; installing it needs root (apt-get install -y $package)"
    fi
    export DEBIAN_FRONTEND=noninteractive
    candidate="$(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then
        echo "install-browser: apt-get update (no $package candidate yet)"
        "${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
    fi
    echo "install-browser: apt-get install -y $package"
    if ! "${sudo[@]}" apt-get install -y -qq "$package" >/dev/null; then
        # A stale list names package versions the mirror no longer has: refresh once and retry.
        "${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
        "${sudo[@]}" apt-get install -y -qq "$package" >/dev/null || fail "apt-get install -y $package failed"
    fi
}

if [[ ! -x "$chromium" ]]; then
    apt_install chromium
    [[ -x "$chromium" ]] || fail "apt-get installed chromium but $chromium is still missing"
fi

# Reactions are emoji: without a colour emoji font Chromium draws them as empty boxes in
# screenshots and tests.
if ! dpkg-query -W -f='${Status}' fonts-noto-color-emoji 2>/dev/null | grep -q "install ok installed"; then
    apt_install fonts-noto-color-emoji
fi

# pip leaves a satisfied pin alone without asking the index.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$playwright_spec" \
    || fail "pip install $playwright_spec into $venv failed"
"$venv/bin/python" -c "import playwright.sync_api, playwright.async_api" \
    || fail "playwright does not import in $venv"

version="$("$chromium" --version 2>/dev/null | head -n 1)" || true
[[ -n "$version" ]] || fail "$chromium does not run (--version printed nothing)"
echo "browser tools ready: $version, $("$venv/bin/python" -m playwright --version)"
