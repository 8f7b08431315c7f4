"""The distributed runtime (``nudge worker``): a faust-streaming app on Apache Kafka.

- ``app``: the faust app factory: topics, the customer table, the agents and the timer tick.
- ``processing``: the per-partition processors fed in batches; timers rebuilt on recovery.
- ``delivery``: the action sink agent's send path (Redis idempotency claim, then deliver).
- ``rules``: the deployed rule set in Redis, ``publish_rules`` and hot reload.
- ``ingest``: the HTTP ingest backend that produces to Kafka (acks=all) before answering.
- ``cli``: ``nudge worker``.
"""
