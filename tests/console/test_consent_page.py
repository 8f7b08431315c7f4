"""The customer page's consent history in headless Chromium on ``nudge run``: every change
the state keeps, newest first, with its event and source, row for row the export's
(``GET /v1/customers/{id}/export``); a customer who never stated consent shows none.
(The distributed ingest renders the same view: tests/console/test_distributed_timeline.py.)"""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page, expect

from engine.testing import START
from engine.types import iso
from tests.console.conftest import ServerThread, Watched

H = 3_600_000


def _ev(i: int, etype: str, cid: str, at: int, props: dict[str, Any], src: str = "") -> Any:
    body: dict[str, Any] = {"event_id": f"cs{i}", "type": etype, "customer_id": cid,
                            "timestamp": iso(at), "properties": props}  # fmt: skip
    if src:
        body["context"] = {"source": src}
    return body


def consent_rows(page: Page) -> list[list[str]]:
    """The consent-history table's rows below its header, cell texts."""
    rows = page.get_by_test_id("consent-history").locator("tr").all()[1:]
    return [r.locator("td").all_inner_texts() for r in rows]


def export_rows(history: list[dict[str, Any]]) -> list[list[str]]:
    """What the page should show for an export's ``consent_history`` (oldest first)."""
    return [
        [
            h["at"],
            ", ".join(f"{ch} {'on' if v else 'off'}" for ch, v in sorted(h["consent"].items())),
            h["event"],
            h["source"],
        ]
        for h in reversed(history)
    ]


def test_consent_history_on_the_customer_page(server: ServerThread, watched: Watched) -> None:
    s = server
    h = s.h

    async def seed() -> dict[str, Any]:
        events = [
            _ev(1, "customer_signed_up", "c1", START, {"consent": {"email": True, "sms": True}}),
            _ev(2, "email_unsubscribed", "c1", START + H, {}, src="sendgrid"),
            _ev(3, "customer_updated", "c1", START + 2 * H, {"consent": {"email": True}},
                src="preference_center"),
            _ev(4, "sms_unsubscribed", "c1", START + 3 * H, {}, src="twilio"),
            _ev(5, "page_viewed", "c2", START, {}),
        ]  # fmt: skip
        for i, ev in enumerate(events[:4]):  # an hour apart on the runtime's clock too
            if i:
                h.clock.advance(H)
            status, _ = await h.post_events([ev, *events[4:]] if i == 0 else [ev])
            assert status == 202
            await h.settle()
        async with h.session.get(h.url("/v1/customers/c1/export"), headers=h.auth("admin")) as r:
            assert r.status == 200
            body: dict[str, Any] = await r.json()
            return body

    export = s.call(seed())
    history = export["state"]["profile"]["consent_history"]
    assert [x["event"] for x in history] == [
        "customer_signed_up", "email_unsubscribed", "customer_updated", "sms_unsubscribed",
    ]  # fmt: skip

    page = watched.page
    page.goto(h.url("/ui/"))
    page.fill("#token", h.tokens.read)
    page.click("form button")
    page.goto(h.url("/ui/customers/c1"))
    expect(page.get_by_test_id("customer-id")).to_have_text("c1")
    rows = consent_rows(page)
    assert rows == export_rows(history)
    assert rows[0] == [iso(START + 3 * H), "sms off", "sms_unsubscribed", "twilio"]
    assert rows[-1] == [iso(START), "email on, sms on", "customer_signed_up", "storefront"]
    watched.shot("customer-consent")

    page.goto(h.url("/ui/customers/c2"))
    expect(page.get_by_test_id("customer-id")).to_have_text("c2")
    assert consent_rows(page) == [["No consent change recorded: the defaults apply."]]
