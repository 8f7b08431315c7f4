#!/usr/bin/env bash
# Install redis-server (Debian package) when it is not already on PATH.
# Idempotent and non-interactive; needs root (or sudo) for apt-get.
# The package's own service (if any) is not used: tests start their own instance.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    command -v redis-server
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
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends redis-server >&2 || {
    # stale package lists (a mirror moved on): refresh once and retry
    "${sudo_cmd[@]}" apt-get update -qq >&2
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends redis-server >&2
}

command -v redis-server
