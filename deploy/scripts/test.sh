#!/usr/bin/env bash
# The whole test suite on a fresh machine: venv, the package with its test extras, the real
# servers the integration tests start (Kafka from Maven Central, Redis and Prometheus from
# Debian), then ruff, mypy (strict on our packages) and pytest. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,distributed,peers,predict]'
bash deploy/scripts/install-redis.sh
bash deploy/scripts/install-prometheus.sh
bash deploy/scripts/install-kafka.sh >/dev/null
bash deploy/scripts/install-chromium.sh >/dev/null
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest "$@"
