#!/usr/bin/env bash
# Install redis-server (Debian package) when it is not already on PATH.
# Idempotent and non-interactive; needs root (or sudo) for apt-get (apt-install.sh).
# The package's own service (if any) is not used: tests start their own instance.
set -euo pipefail

if ! command -v redis-server >/dev/null 2>&1; then
    bash "$(dirname "$0")/apt-install.sh" redis-server
fi
command -v redis-server
