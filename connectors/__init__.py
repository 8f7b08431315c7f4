"""Connectors: where actions leave Nudge.

- ``sinks/``: the :class:`~connectors.sinks.base.Sink` protocol and its backends (log,
  JSON Lines file, HTTP webhook).
- ``retry``: :class:`~connectors.retry.RetryPolicy` and :func:`~connectors.retry.deliver`,
  the retry loop the runtime wraps around any sink's ``send``.
- ``deadletter``: :class:`~connectors.deadletter.DeadLetterStore`, actions that could not
  be delivered, kept in SQLite for inspection and replay.
- ``routing``: :class:`~connectors.routing.Router`, which sink each action goes to, built
  from a validated config.

Connectors depend on ``engine.types`` and ``engine.exceptions`` only; the runtimes wire them.
"""
