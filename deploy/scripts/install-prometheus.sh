#!/usr/bin/env bash
# Install prometheus + promtool (Debian package) when prometheus is not already on PATH.
# Idempotent and non-interactive; needs root (or sudo) for apt-get (apt-install.sh).
# The package may try to start its own systemd service; that is ignored (or fails
# harmlessly in containers): tests run their own instance on a random port.
set -euo pipefail

if ! { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }; then
    bash "$(dirname "$0")/apt-install.sh" prometheus
fi
command -v prometheus
