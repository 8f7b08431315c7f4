#!/usr/bin/env bash
# Install headless Chromium and its WebDriver (Debian packages chromium, chromium-driver)
# when /usr/bin/chromium is missing: the console's browser tests (tests/console/) drive it
# with Playwright pointed at that executable, never a downloaded browser.
# Idempotent and non-interactive; needs root (or sudo) for apt-get (apt-install.sh).
set -euo pipefail

if ! { [[ -x /usr/bin/chromium ]] && command -v chromedriver >/dev/null 2>&1; }; then
    bash "$(dirname "$0")/apt-install.sh" chromium chromium-driver
fi
echo /usr/bin/chromium
