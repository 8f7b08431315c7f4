"""The distributed runtime (``nudge worker``): a faust-streaming app on Apache Kafka.

- ``app``: the faust app factory: topics, the customer table, the agents and the timer tick.
- ``processing``: the per-partition processors fed in batches; timers rebuilt on recovery.
- ``batching``: the consumer that hands whole fetches to the engine, and the output pipeline.
- ``delivery``: the action send path (Redis idempotency claim, deliver, coalesced marks).
- ``metrics``: ``--metrics-port``: Prometheus metrics from the worker's counters.
- ``rules``: the deployed rule set in Redis, ``publish_rules`` and hot reload.
- ``ingest``: the HTTP ingest backend that produces to Kafka (acks=all) before answering.
- ``cli``: ``nudge worker``.
"""
