"""The HTTP API shared by ``nudge run`` and the distributed ingest (OpenAPI in openapi.json)."""
