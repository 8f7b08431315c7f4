"""Tracking sources: parse, verify and map what storefronts and providers send onto
:class:`engine.types.Event` (Segment/RudderStack tracking API, Shopify webhooks, SendGrid
and Twilio delivery feedback). Pure functions over bytes and headers: the HTTP layer
(engine/http/) wires them to the runtimes; nothing here does I/O."""
