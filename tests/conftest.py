"""Shared test setup. Real servers (Kafka, Redis, Prometheus) come from tests/support."""

pytest_plugins = ["tests.support.fixtures", "tests.support.providers"]
