"""The distributed runtime's shared state outside the workers' memory: Redis (idempotency
keys, rule set, rate limits: ``redis``; address book: ``addresses``; suppression list:
``suppression``) and the customer changelog topic (``changelog``)."""
