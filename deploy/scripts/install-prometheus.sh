#!/usr/bin/env bash
# Install prometheus + promtool (Debian package) when prometheus is not already on PATH.
# Idempotent and non-interactive; needs root (or sudo) for apt-get.
# The package may try to start its own systemd service; that is ignored (or fails
# harmlessly in containers): tests run their own instance on a random port.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    command -v prometheus
    exit 0
fi

sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo_cmd=(sudo -n)
fi

export DEBIAN_FRONTEND=noninteractive
if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then
    "${sudo_cmd[@]}" apt-get update -qq >&2
fi
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends prometheus >&2 || {
    # stale package lists (a mirror moved on): refresh once and retry
    "${sudo_cmd[@]}" apt-get update -qq >&2
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends prometheus >&2
}

command -v prometheus
