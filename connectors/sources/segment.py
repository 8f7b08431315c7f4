"""The Segment / RudderStack tracking API as a source: request bodies -> engine Events.

Pure: bytes and the server's clock in, :class:`engine.types.Event` list out, or a
:class:`SourceError` that rejects the whole request (nothing of it is applied). The HTTP
layer (``engine/http/segment.py``) reads, authenticates and submits; the mapping is
documented in ``docs/sources/segment.md``.

- ``parse(body, kind, now_ms)``: ``kind`` is ``"batch"`` (``/v1/batch``: ``{"batch":
  [...], "sentAt", "context"}``) or a message type (``/v1/track``, ``/v1/identify``, ...:
  one message object).
- ``write_key_of(body)``: the ``writeKey`` member (Segment's body authentication), for a
  request without an ``Authorization`` header.

Limits (Segment's documented ones): 500 KB per request, 32 KB per message -> 413
``batch_too_large`` / ``message_too_large``.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, Any, Protocol

import msgspec

from connectors.sources.exceptions import SourceError
from connectors.sources.segment_spec import NAME_CACHE, SHAPE, event_type, profile
from engine.events import INTERNAL_TYPES, validate_properties
from engine.exceptions import EventError
from engine.types import Event, from_ms

__all__ = [
    "KINDS",
    "MAX_BATCH_BYTES",
    "MAX_MESSAGE_BYTES",
    "event_type",
    "parse",
    "write_key_of",
]

MAX_BATCH_BYTES = 500 * 1024
"""A request body (after gzip) of at most 500 KB, as Segment's tracking API."""
MAX_MESSAGE_BYTES = 32 * 1024
"""One message of at most 32 KB (its JSON text), as Segment's tracking API."""
ANON_PREFIX = "anon:"
"""Customer ids of anonymous visitors: ``anon:`` + anonymousId, apart from userIds."""

_MAX_ID = 200
_Time = Annotated[datetime, msgspec.Meta(tz=True)]
_AnyId = str | int


class _Message(msgspec.Struct, rename="camel", gc=False):
    """One tracking API call, every type's fields (what a type does not use is ignored;
    so are members not listed: ``integrations``, ``_metadata``, ``channel``, ...)."""

    type: str | None = None
    event: Any = None  # track: checked by hand, so a bad one is named precisely
    user_id: _AnyId | None = None
    anonymous_id: _AnyId | None = None
    previous_id: _AnyId | None = None
    group_id: _AnyId | None = None
    message_id: _AnyId | None = None
    timestamp: _Time | None = None
    original_timestamp: _Time | None = None
    sent_at: _Time | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    name: str | None = None
    category: str | None = None


class _Batch(msgspec.Struct, rename="camel", gc=False):
    batch: list[msgspec.Raw] | None = None
    sent_at: _Time | None = None
    context: dict[str, Any] | None = None


class _WriteKey(msgspec.Struct, rename="camel"):
    write_key: Any = None


_message = msgspec.json.Decoder(_Message)
_batch = msgspec.json.Decoder(_Batch)
_write_key = msgspec.json.Decoder(_WriteKey)
_PATH = re.compile(r" - at `\$([^`]*)`$")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")

# --- messages ------------------------------------------------------------------------------


def _at(i: int) -> str:
    """The JSON path of message ``i`` of a batch (``-1``: the body is the message)."""
    return "$" if i < 0 else f"$.batch[{i}]"


def _id(value: _AnyId | None) -> str | None:
    if value is None or value == "":
        return None
    return value if type(value) is str else str(value)


def _customer(m: _Message, i: int) -> str:
    """``userId``, else ``anon:`` + ``anonymousId`` (the slow path of :func:`_one`)."""
    uid = _id(m.user_id)
    if uid is not None:
        if len(uid) > _MAX_ID:
            raise SourceError(f"userId longer than {_MAX_ID}", field=f"{_at(i)}.userId")
        return uid
    return ANON_PREFIX + _anonymous(m.anonymous_id, i, "anonymousId", required=True)


def _anonymous(value: _AnyId | None, i: int, member: str, *, required: bool) -> str:
    anon = _id(value)
    if anon is None:
        if required:
            raise SourceError(
                "userId or anonymousId is required",
                code="missing_field",
                field=f"{_at(i)}.userId",
            )
        return ""
    if len(anon) > _MAX_ID - len(ANON_PREFIX):
        raise SourceError(
            f"{member} longer than {_MAX_ID - len(ANON_PREFIX)}", field=f"{_at(i)}.{member}"
        )
    return anon


def _event_id(m: _Message, raw: msgspec.Raw | bytes, i: int) -> str:
    mid = _id(m.message_id)
    if mid is None:  # stable for the same message: a retried request stays a duplicate
        return "seg-" + hashlib.blake2b(raw, digest_size=16).hexdigest()
    if len(mid) > _MAX_ID:
        raise SourceError(f"messageId longer than {_MAX_ID}", field=f"{_at(i)}.messageId")
    return mid


def _timestamp(m: _Message, sent_at: datetime | None, received: datetime, i: int) -> datetime:
    """Segment's clock-skew correction: with originalTimestamp and sentAt (the message's,
    else the batch's), received - (sentAt - originalTimestamp); else timestamp, else
    originalTimestamp; else the time received."""
    sent = m.sent_at if m.sent_at is not None else sent_at
    if m.original_timestamp is not None and sent is not None:
        try:
            return received - (sent - m.original_timestamp)
        except OverflowError:
            raise SourceError(
                "originalTimestamp is too far from sentAt", field=f"{_at(i)}.originalTimestamp"
            ) from None
    if m.timestamp is not None:
        return m.timestamp
    if m.original_timestamp is not None:
        return m.original_timestamp
    return received


_Renames = tuple[tuple[str, str], ...]
"""Where a property built from the message came from, for error paths: (ours, theirs)."""
_FROM_TRAITS: _Renames = (
    (".properties.attributes", ".traits"),
    (".properties.consent", ".traits.consent"),
    (".properties.timezone", ".context.timezone"),
    (".properties", ".traits"),
)
_FROM_CONTEXT_TRAITS: _Renames = tuple(
    (ours, theirs.replace(".traits", ".context.traits", 1)) for ours, theirs in _FROM_TRAITS
)
_FROM_PROPERTIES: _Renames = (
    (".properties.attributes", ".properties"),
    (".properties.timezone", ".context.timezone"),
)
_FROM_USER_ID: _Renames = ((".properties.user_id", ".userId"),)
_FROM_GROUP_TRAITS: _Renames = ((".properties.attributes", ".traits"),)


def _fields(err: EventError, at: str, renames: _Renames) -> SourceError:
    """A validation error (its field relative to the message) as a SourceError naming
    the member of the message it came from."""
    field = err.field
    for ours, theirs in renames:
        if field == ours or field.startswith((ours + ".", ours + "[")):
            field = theirs + field[len(ours) :]
            break
    return SourceError(err.message, code=err.reason, field=at + field)


_Mapped = tuple[str, str, dict[str, Any], _Renames]
"""What a message type's mapping gives: (type, customer id, properties, renames)."""


class _Kind(Protocol):
    """Map one message of a type: the customer id and event id are resolved; events that
    precede the message's own (an identify's alias) are appended to ``out``."""

    def __call__(
        self,
        m: _Message,
        cid: str,
        eid: str,
        ts: datetime,
        ctx: dict[str, Any],
        i: int,
        out: list[Event],
    ) -> _Mapped: ...


def _track_type(name: Any, i: int) -> str:
    """The type of a track event name not yet cached, or SourceError."""
    at = _at(i)
    if not isinstance(name, str) or not name:
        raise SourceError(
            "track needs an event name",
            code="missing_field" if name is None else "invalid_field",
            field=f"{at}.event",
        )
    etype = event_type(name)
    if etype is None:
        raise SourceError(
            f"event name {name[:80]!r} has no snake_case form (^[a-z][a-z0-9_]*$, "
            "at most 64 characters)",
            code="invalid_event_name",
            field=f"{at}.event",
        )
    return etype


def _track(
    m: _Message,
    cid: str,
    eid: str,
    ts: datetime,
    ctx: dict[str, Any],
    i: int,
    out: list[Event],
) -> _Mapped:
    name = m.event
    etype = NAME_CACHE.get(name) if type(name) is str else None
    if etype is None:
        etype = _track_type(name, i)
    if etype in INTERNAL_TYPES:
        raise SourceError(
            f"{etype} is sent by the engine only", code="internal_type", field=f"{_at(i)}.event"
        )
    props = m.properties if m.properties is not None else {}
    shape = SHAPE.get(etype)
    if shape is not None:
        shape(props)
    elif etype == "customer_signed_up":
        return etype, cid, profile(props, ctx, f"{_at(i)}.properties"), _FROM_PROPERTIES
    return etype, cid, props, ()


def _identify(
    m: _Message,
    cid: str,
    eid: str,
    ts: datetime,
    ctx: dict[str, Any],
    i: int,
    out: list[Event],
) -> _Mapped:
    traits, renames, where = m.traits, _FROM_TRAITS, ".traits"
    nested = ctx.get("traits")  # where RudderStack's clients put identify traits
    if isinstance(nested, dict) and nested:
        if traits is None:
            traits, renames, where = nested, _FROM_CONTEXT_TRAITS, ".context.traits"
        else:
            traits = {**nested, **traits}
    props = profile(traits if traits is not None else {}, ctx, _at(i) + where)
    if m.anonymous_id is not None and _id(m.user_id) is not None:
        anon = _anonymous(m.anonymous_id, i, "anonymousId", required=False)
        if anon and ANON_PREFIX + anon != cid:
            if len(eid) > _MAX_ID - len(":alias"):
                raise SourceError(
                    f"messageId of an identify with both ids is at most {_MAX_ID - 6} long",
                    field=f"{_at(i)}.messageId",
                )
            alias = Event(
                eid + ":alias", "customer_aliased", ANON_PREFIX + anon, ts, {"user_id": cid}
            )
            out.append(alias)
    return "customer_updated", cid, props, renames


def _page(
    m: _Message,
    cid: str,
    eid: str,
    ts: datetime,
    ctx: dict[str, Any],
    i: int,
    out: list[Event],
) -> _Mapped:
    props = m.properties if m.properties is not None else {}
    if m.name is not None and "name" not in props:
        props["name"] = m.name
    if m.category is not None and "category" not in props:
        props["category"] = m.category
    return ("page_viewed" if m.type != "screen" else "screen_viewed"), cid, props, ()


def _group(
    m: _Message,
    cid: str,
    eid: str,
    ts: datetime,
    ctx: dict[str, Any],
    i: int,
    out: list[Event],
) -> _Mapped:
    gid = _id(m.group_id)
    if gid is None:
        raise SourceError("group needs a groupId", code="missing_field", field=f"{_at(i)}.groupId")
    attrs: dict[str, Any] = {"group_id": gid}
    if m.traits:
        for k, v in m.traits.items():
            attrs["group_" + k] = v
    return "customer_updated", cid, {"attributes": attrs}, _FROM_GROUP_TRAITS


def _alias(
    m: _Message,
    cid: str,
    eid: str,
    ts: datetime,
    ctx: dict[str, Any],
    i: int,
    out: list[Event],
) -> _Mapped:
    if m.previous_id is None or m.previous_id == "":
        raise SourceError(
            "alias needs a previousId", code="missing_field", field=f"{_at(i)}.previousId"
        )
    prev = _anonymous(m.previous_id, i, "previousId", required=False)
    if _id(m.user_id) is None:
        raise SourceError("alias needs a userId", code="missing_field", field=f"{_at(i)}.userId")
    return "customer_aliased", ANON_PREFIX + prev, {"user_id": cid}, _FROM_USER_ID


# track types the inline path of parse() leaves to _one
_SLOW_TYPES = frozenset({*INTERNAL_TYPES, "customer_signed_up"})

_KINDS: dict[str, _Kind] = {
    "track": _track,
    "identify": _identify,
    "page": _page,
    "screen": _page,
    "group": _group,
    "alias": _alias,
}
KINDS = frozenset(_KINDS)
"""Message types of the tracking API; ``/v1/<kind>`` takes one such message."""


def _one(
    m: _Message,
    raw: msgspec.Raw | bytes,
    i: int,
    ctx: dict[str, Any],
    sent_at: datetime | None,
    received: datetime,
    out: list[Event],
) -> None:
    """Append the events of message ``i`` to ``out`` (validated), or raise SourceError."""
    kind = m.type
    handler = _KINDS.get(kind) if kind is not None else None
    if handler is None:
        if kind is None:
            raise SourceError("message has no type", code="missing_field", field=f"{_at(i)}.type")
        raise SourceError(
            f"unknown message type {kind[:40]!r}; expected one of {sorted(_KINDS)}",
            code="unknown_type",
            field=f"{_at(i)}.type",
        )
    # the common case inline: string ids, a timestamp of the message's own
    uid = m.user_id
    cid = uid if type(uid) is str and 0 < len(uid) <= _MAX_ID else None
    if cid is None and kind != "alias":
        cid = _customer(m, i)
    mid = m.message_id
    eid = mid if type(mid) is str and 0 < len(mid) <= _MAX_ID else _event_id(m, raw, i)
    ts = m.timestamp
    if ts is None or m.original_timestamp is not None:
        ts = _timestamp(m, sent_at, received, i)
    etype, cid, props, renames = handler(m, cid or _id(uid) or "", eid, ts, ctx, i, out)
    event = Event(eid, etype, cid, ts, props, ctx)
    try:
        validate_properties(event, "")
    except EventError as err:
        raise _fields(err, _at(i), renames) from None
    out.append(event)


def _decode_error(err: msgspec.MsgspecError, at: str) -> SourceError:
    if not isinstance(err, msgspec.ValidationError):
        return SourceError(f"malformed JSON: {err}", code="invalid_json", field=at)
    text = str(err)
    m = _PATH.search(text)
    path, message = ("", text) if m is None else (m.group(1), text[: m.start()])
    code = "invalid_field"
    missing = _MISSING.match(message)
    if missing:
        code = "missing_field"
        path = f"{path}.{missing.group(1)}"
    return SourceError(message, code=code, field=at + path)


def _decode_message(raw: msgspec.Raw | bytes, i: int) -> _Message:
    try:
        return _message.decode(raw)
    except msgspec.MsgspecError as err:
        raise _decode_error(err, _at(i)) from None
    except RecursionError:
        raise SourceError("JSON nested too deep", code="invalid_json", field=_at(i)) from None


def parse(body: bytes, kind: str, now_ms: int) -> list[Event]:
    """The events of one tracking API request body (already decompressed).

    ``kind`` is ``"batch"`` for ``/v1/batch`` or the message type of a single-message
    endpoint (which overrides any ``type`` in the body). ``now_ms`` is the server's clock
    (``receivedAt``). Events come in message order; an identify with both userId and
    anonymousId gives a ``customer_aliased`` before its ``customer_updated``. Raises
    SourceError (status, code, field) for the whole request; never anything else."""
    received = from_ms(now_ms)
    out: list[Event] = []
    if kind != "batch":
        if len(body) > MAX_MESSAGE_BYTES:
            raise SourceError(
                f"a message is at most {MAX_MESSAGE_BYTES} bytes",
                status=413,
                code="message_too_large",
                field="$",
                limit_bytes=MAX_MESSAGE_BYTES,
            )
        m = _decode_message(body, -1)
        m.type = kind
        _one(m, body, -1, m.context if m.context is not None else {}, None, received, out)
        return out
    if len(body) > MAX_BATCH_BYTES:
        raise SourceError(
            f"a batch request is at most {MAX_BATCH_BYTES} bytes",
            status=413,
            code="batch_too_large",
            field="$",
            limit_bytes=MAX_BATCH_BYTES,
        )
    try:
        envelope = _batch.decode(body)
    except msgspec.MsgspecError as err:
        raise _decode_error(err, "$") from None
    except RecursionError:
        raise SourceError("JSON nested too deep", code="invalid_json", field="$") from None
    messages = envelope.batch
    if messages is None:
        raise SourceError('expected {"batch": [...]}', code="missing_field", field="$.batch")
    if not messages:
        raise SourceError("no messages in the batch", code="empty_batch", field="$.batch")
    outer, sent_at = envelope.context, envelope.sent_at
    decode, names, shapes, validate, append = (
        _message.decode,
        NAME_CACHE,
        SHAPE,
        validate_properties,
        out.append,
    )
    for i, raw in enumerate(messages):
        if len(raw) > MAX_MESSAGE_BYTES:
            raise SourceError(
                f"message {i} is over {MAX_MESSAGE_BYTES} bytes",
                status=413,
                code="message_too_large",
                field=_at(i),
                index=i,
                limit_bytes=MAX_MESSAGE_BYTES,
            )
        try:
            m = decode(raw)
        except (msgspec.MsgspecError, RecursionError):
            m = _decode_message(raw, i)  # raises, naming the field
        ctx = m.context
        if outer:  # the batch's context under the message's own (the message's wins)
            ctx = outer if not ctx else {**outer, **ctx}
        elif ctx is None:
            ctx = {}
        # the common case inline (a quarter of the cost per message): a track or page of a
        # known user with its own messageId and timestamp, a name already seen
        uid, mid, ts, mtype = m.user_id, m.message_id, m.timestamp, m.type
        if (
            ts is not None
            and type(uid) is str
            and type(mid) is str
            and 0 < len(uid) <= _MAX_ID
            and 0 < len(mid) <= _MAX_ID
            and m.original_timestamp is None
        ):
            if mtype == "track":
                name = m.event
                etype = names.get(name) if type(name) is str else None
                if etype is not None and etype not in _SLOW_TYPES:
                    props = m.properties if m.properties is not None else {}
                    shape = shapes.get(etype)
                    if shape is not None:
                        shape(props)
                    event = Event(mid, etype, uid, ts, props, ctx)
                    try:
                        validate(event, "")
                    except EventError as err:
                        raise _fields(err, _at(i), ()) from None
                    append(event)
                    continue
            elif mtype == "page" and m.name is None and m.category is None:
                event = Event(mid, "page_viewed", uid, ts, m.properties or {}, ctx)
                try:
                    validate(event, "")
                except EventError as err:
                    raise _fields(err, _at(i), ()) from None
                append(event)
                continue
        _one(m, raw, i, ctx, sent_at, received, out)
    return out


def write_key_of(body: bytes) -> str | None:
    """The body's ``writeKey`` (Segment's body authentication), or None (absent, not a
    string, or the body is not a JSON object)."""
    try:
        key = _write_key.decode(body).write_key
    except (msgspec.MsgspecError, RecursionError):
        return None
    return key if isinstance(key, str) and key else None
