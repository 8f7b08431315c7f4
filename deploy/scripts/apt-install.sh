#!/usr/bin/env bash
# Install Debian packages non-interactively: apt-get through `sudo -n` when not root,
# package lists fetched only when they never were (reruns stay fast), and refreshed once
# and retried when a mirror moved on. Used by install-redis.sh, install-prometheus.sh and
# install-chromium.sh; output goes to stderr.
set -euo pipefail

sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo_cmd=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then
    "${sudo_cmd[@]}" apt-get update -qq >&2
fi
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@" >&2 || {
    "${sudo_cmd[@]}" apt-get update -qq >&2
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@" >&2
}
