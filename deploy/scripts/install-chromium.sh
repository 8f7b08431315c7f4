#!/usr/bin/env bash
# Install headless Chromium and its WebDriver (Debian packages chromium, chromium-driver)
# when /usr/bin/chromium is missing: the console's browser tests (tests/console/) drive it
# with Playwright pointed at that executable, never a downloaded browser.
# Idempotent and non-interactive; needs root (or sudo) for apt-get.
set -euo pipefail

if [[ -x /usr/bin/chromium ]] && command -v chromedriver >/dev/null 2>&1; then
    echo /usr/bin/chromium
    exit 0
fi

sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo_cmd=(sudo -n)
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh package lists only when they were never fetched (keeps reruns fast).
if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then
    "${sudo_cmd[@]}" apt-get update -qq >&2
fi
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2 || {
    # stale package lists (a mirror moved on): refresh once and retry
    "${sudo_cmd[@]}" apt-get update -qq >&2
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
}

echo /usr/bin/chromium
