"""The sink interface every action backend implements, and the JSON body they send."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from engine.types import Action

__all__ = ["Sink", "action_payload"]


@runtime_checkable
class Sink(Protocol):
    """Somewhere actions are delivered to.

    Lifecycle: ``start()`` once before the first ``send``, ``close()`` once at the end
    (after every ``send`` has returned). ``send`` may be called concurrently from many
    tasks; order of delivery between concurrent sends is not guaranteed.

    ``send`` returning means the receiver accepted the action (a 2xx answer, a line
    written). It raises :class:`~connectors.exceptions.SinkError` (``retryable`` says
    whether trying again may help) or :class:`~connectors.exceptions.SinkBackpressure`
    (retry after ``retry_after`` seconds). ``send`` makes one attempt: retrying is the
    caller's job (:func:`connectors.retry.deliver`). The same action may be sent more than
    once (retries, replays after a crash); receivers dedupe on ``idempotency_key``.
    """

    name: str

    async def start(self) -> None: ...

    async def send(self, action: Action) -> None: ...

    async def close(self) -> None: ...


def action_payload(action: Action) -> dict[str, Any]:
    """The JSON object every sink sends for ``action``: :meth:`Action.to_json_dict`
    (``fire_at`` as RFC 3339 UTC with milliseconds)."""
    return action.to_json_dict()
