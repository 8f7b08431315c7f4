"""RFM scores: recency, frequency and monetary quintiles against the current customer base.

Every customer with at least one order gets three scores from 1 to 5 (5 is best):

- **R**, recency: whole days since the last order, ``(now_ms - last_order) // DAY_MS``
  (0 for an order today or a last order stamped in the future). *Fewer* days is better,
  so the most recent fifth of the base scores R=5.
- **F**, frequency: the number of orders (``CustomerState.orders``).
- **M**, monetary: total spend (``CustomerState.revenue``), the common practice. Average
  order value stays available as ``customer.aov`` for rules that want it; scoring on AOV
  would rank a one-order big spender above a loyal customer, which is not what the named
  groups below describe.

Scores are cut by :class:`RfmBoundaries`, the four inner quintile cut points of each
metric over the base (the values at the 20/40/60/80 % ranks, "lower" order statistic:
``sorted_values[floor(k * (n - 1) / 5)]`` for k = 1..4, as ``numpy.quantile(...,
method="lower")``). The bins are closed on the right along each metric's value axis,
``(-inf, c1], (c1, c2], (c2, c3], (c3, c4], (c4, +inf)``, so a value *equal to a cut
point belongs to the bin below it*: F and M are ``1 + #{cuts < value}``, R is
``5 - #{cut days < days}``. Consequences, all deliberate and tested:

- scores are deterministic and monotone (more orders or more spend never lowers F or M,
  more days since the last order never raises R);
- ties never inflate the top for F and M: when 60 % of the base has one order, every
  one-order customer is F=1 (F=2 may then be empty), never F=4;
- for R a tie at a cut goes to the *more recent* score: everyone who ordered today is R=5
  even if they are more than a fifth of the base.

The named group comes from R and FM, the floor of the average of F and M
(``(f + m) // 2``: half a point is not yet earned), through :data:`GROUP_TABLE`, the
widely published R x FM grid (docs/rfm.md). Every one of the 25 cells holds exactly one
group.

:class:`RfmBuilder` computes boundaries from a scan of the base, one customer at a time:
recency and frequency are counted per distinct value (days, order counts), so their cut
points are exact at any base size; revenue is kept and sorted up to ``exact_limit``
customers (50,000 by default: 8 bytes a customer, 400 KB at most), past that it goes into
a DDSketch (``ddsketch``: relative accuracy ``RELATIVE_ACCURACY`` = 0.5 % on every
quantile value, a few KB whatever the base size, mergeable and independent of insertion
order). Everything here is pure: no I/O, no
clock; the caller passes ``now_ms`` and decides when to refresh (:func:`needs_refresh`).
"""

from __future__ import annotations

import itertools
import math
import sys
from array import array
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import msgspec
from ddsketch import DDSketch
from ddsketch.store import DenseStore

from engine.exceptions import NudgeError
from state.customer import CustomerState

__all__ = [
    "DAY_MS",
    "EXACT_LIMIT",
    "FORMAT_VERSION",
    "GROUPS",
    "GROUP_LABELS",
    "GROUP_TABLE",
    "REFRESH_EVERY_MS",
    "RELATIVE_ACCURACY",
    "BoundariesError",
    "Rfm",
    "RfmBoundaries",
    "RfmBuilder",
    "SummaryError",
    "group_of",
    "needs_refresh",
    "next_group_change",
    "next_score_change",
    "recency_days",
    "score",
]

DAY_MS: Final = 86_400_000
EXACT_LIMIT: Final = 50_000
"""Bases up to this many customers (with orders) get exact monetary quintiles; larger ones
a sketch. Recency and frequency are exact at any size (counted per distinct value)."""
RELATIVE_ACCURACY: Final = 0.005
"""DDSketch guarantee: every sketched monetary cut point is within 0.5 % of the exact
order statistic's value (then rounded to cents)."""
REFRESH_EVERY_MS: Final = DAY_MS
"""Default schedule: recompute the boundaries once a day (and on demand)."""
FORMAT_VERSION: Final = 1
"""Version of the ``RfmBoundaries.to_dict`` layout, stored with the boundaries."""

GROUPS: Final = (
    "champions",
    "loyal",
    "potential_loyalist",
    "new",
    "promising",
    "need_attention",
    "about_to_sleep",
    "at_risk",
    "cannot_lose",
    "hibernating",
    "lost",
)
"""The group names, as ``customer.rfm.group`` shows them (snake case for CEL)."""

GROUP_LABELS: Final = {
    "champions": "Champions",
    "loyal": "Loyal",
    "potential_loyalist": "Potential Loyalist",
    "new": "New Customers",
    "promising": "Promising",
    "need_attention": "Need Attention",
    "about_to_sleep": "About To Sleep",
    "at_risk": "At Risk",
    "cannot_lose": "Can't Lose Them",
    "hibernating": "Hibernating",
    "lost": "Lost",
}
"""Marketer-facing labels of the groups."""

# The R x FM grid (docs/rfm.md has the same table). Rows R = 5..1, columns FM = 1..5.
_GRID: Final = (
    (5, ("new", "potential_loyalist", "potential_loyalist", "champions", "champions")),
    (4, ("promising", "potential_loyalist", "potential_loyalist", "champions", "champions")),
    (3, ("about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal")),
    (2, ("hibernating", "hibernating", "at_risk", "at_risk", "cannot_lose")),
    (1, ("lost", "lost", "at_risk", "at_risk", "cannot_lose")),
)

GROUP_TABLE: Final[dict[tuple[int, int], str]] = {
    (r, fm): group for r, row in _GRID for fm, group in enumerate(row, start=1)
}
"""(R, FM) -> group, for R and FM in 1..5: all 25 cells, one group each."""

_QUINTILES: Final = (0.2, 0.4, 0.6, 0.8)

Cuts = tuple[int, int, int, int]
MoneyCuts = tuple[float, float, float, float]


class BoundariesError(NudgeError, ValueError):
    """Stored boundaries that cannot be read; ``field`` is the JSON path at fault."""

    def __init__(self, message: str, *, field: str = "$") -> None:
        super().__init__(f"{field}: {message}")
        self.message = message
        self.field = field


class SummaryError(NudgeError, ValueError):
    """A serialised builder (:meth:`RfmBuilder.to_bytes`) that cannot be read."""


@dataclass(frozen=True, slots=True)
class Rfm:
    """One customer's scores: ``r``, ``f``, ``m`` in 1..5, ``score`` their digits
    (``"545"``) and ``group`` one of :data:`GROUPS`."""

    r: int
    f: int
    m: int
    score: str
    group: str

    @property
    def fm(self) -> int:
        """The FM column of the group grid: ``(f + m) // 2``."""
        return (self.f + self.m) // 2

    def to_dict(self) -> dict[str, Any]:
        """``{"r", "f", "m", "score", "group"}``, as ``customer.rfm`` exposes them."""
        return {"r": self.r, "f": self.f, "m": self.m, "score": self.score, "group": self.group}


def group_of(r: int, fm: int) -> str:
    """The named group of cell (R, FM) of :data:`GROUP_TABLE`."""
    return GROUP_TABLE[(r, fm)]


# only 125 possible results: built once, shared (score() allocates nothing)
_RFM: Final = tuple(
    Rfm(r, f, m, f"{r}{f}{m}", GROUP_TABLE[(r, (f + m) // 2)])
    for r in range(1, 6)
    for f in range(1, 6)
    for m in range(1, 6)
)


def recency_days(last_order: int, now_ms: int) -> int:
    """Whole days from ``last_order`` to ``now_ms`` (ms); 0 when the order is in the
    future (clock skew between sources)."""
    return max(0, (now_ms - last_order) // DAY_MS)


def _money(revenue: float) -> float:
    # a non-finite revenue (a bad refund upstream) must not poison the sort or the sketch
    return revenue if math.isfinite(revenue) else 0.0


@dataclass(frozen=True, slots=True)
class RfmBoundaries:
    """The four inner quintile cut points of each metric, ascending in the metric's own
    units: ``recency`` in days since the last order, ``frequency`` in orders,
    ``monetary`` in revenue. ``customers`` is the base size they were computed from,
    ``computed_at`` the scan's ``now_ms``, ``exact`` whether the monetary cut points are
    exact order statistics (False: from a sketch with ``relative_accuracy``; recency and
    frequency are always exact)."""

    recency: Cuts
    frequency: Cuts
    monetary: MoneyCuts
    customers: int
    computed_at: int
    exact: bool
    relative_accuracy: float | None = None

    def __post_init__(self) -> None:
        for name in ("recency", "frequency", "monetary"):
            cuts = getattr(self, name)
            if len(cuts) != 4 or any(a > b for a, b in itertools.pairwise(cuts)):
                raise BoundariesError("expected 4 ascending cut points", field=f"$.{name}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (stored with the state; ``from_dict`` reads it back)."""
        return {
            "version": FORMAT_VERSION,
            "recency_days": list(self.recency),
            "frequency": list(self.frequency),
            "monetary": list(self.monetary),
            "monetary_basis": "revenue",
            "customers": self.customers,
            "computed_at": self.computed_at,
            "exact": self.exact,
            "relative_accuracy": self.relative_accuracy,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> RfmBoundaries:
        """Boundaries ``to_dict`` wrote; :class:`BoundariesError` names the bad field."""
        if not isinstance(raw, dict):
            raise BoundariesError("expected an object")
        if raw.get("version") != FORMAT_VERSION:
            raise BoundariesError(f"unknown version {raw.get('version')!r}", field="$.version")
        if raw.get("monetary_basis", "revenue") != "revenue":
            raise BoundariesError("only 'revenue' is supported", field="$.monetary_basis")

        def ints(key: str) -> Cuts:
            v = raw.get(key)
            if not isinstance(v, list) or len(v) != 4 or not all(_is_int(x) for x in v):
                raise BoundariesError("expected 4 integers", field=f"$.{key}")
            return (v[0], v[1], v[2], v[3])

        def floats(key: str) -> MoneyCuts:
            v = raw.get(key)
            if not isinstance(v, list) or len(v) != 4 or not all(_is_num(x) for x in v):
                raise BoundariesError("expected 4 numbers", field=f"$.{key}")
            return (float(v[0]), float(v[1]), float(v[2]), float(v[3]))

        customers, computed_at = raw.get("customers"), raw.get("computed_at")
        exact, acc = raw.get("exact"), raw.get("relative_accuracy")
        if not _is_int(customers) or customers < 0:
            raise BoundariesError("expected a count", field="$.customers")
        if not _is_int(computed_at):
            raise BoundariesError("expected epoch ms", field="$.computed_at")
        if not isinstance(exact, bool):
            raise BoundariesError("expected a boolean", field="$.exact")
        if acc is not None and not _is_num(acc):
            raise BoundariesError("expected a number or null", field="$.relative_accuracy")
        return cls(
            recency=ints("recency_days"),
            frequency=ints("frequency"),
            monetary=floats("monetary"),
            customers=customers,
            computed_at=computed_at,
            exact=exact,
            relative_accuracy=None if acc is None else float(acc),
        )


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def next_score_change(bounds: RfmBoundaries, st: CustomerState, now_ms: int) -> int | None:
    """The first instant after ``now_ms`` at which the customer's scores change with no
    event (None: never): only R moves with time, one step down each time the whole days
    since the last order pass a recency cut point (at ``last_order + (cut + 1) days``)."""
    last = st.last_order
    if st.orders <= 0 or last is None or bounds.customers == 0:
        return None
    days = recency_days(last, now_ms)
    i = bisect_left(bounds.recency, days)
    if i == len(bounds.recency):
        return None  # R is 1 already
    return last + (bounds.recency[i] + 1) * DAY_MS


def next_group_change(bounds: RfmBoundaries, st: CustomerState, now_ms: int) -> int | None:
    """The first instant after ``now_ms`` at which the customer's named group changes
    with no event (None: never): the first of the instants R drops
    (:func:`next_score_change`) where the (R, FM) cell lands in another group. R 5 -> 4
    keeps potential loyalists and champions where they are, for instance."""
    now = score(bounds, st, now_ms)
    if now is None:
        return None
    at: int | None = now_ms
    while at is not None:
        at = next_score_change(bounds, st, at)
        if at is not None:
            later = score(bounds, st, at)
            if later is None or later.group != now.group:
                return at
    return None


def score(bounds: RfmBoundaries, st: CustomerState, now_ms: int) -> Rfm | None:
    """The customer's RFM scores against ``bounds`` at ``now_ms``; None for a customer
    without orders (or boundaries of an empty base). Pure; the result is one of 125
    shared immutable values (nothing per call but the arithmetic).

    Recency is measured at ``now_ms``, against cut points measured at
    ``bounds.computed_at``: between refreshes a customer who does not order can only drop
    in R, one who orders climbs at once."""
    last = st.last_order
    if st.orders <= 0 or last is None or bounds.customers == 0:
        return None
    r = 5 - bisect_left(bounds.recency, recency_days(last, now_ms))
    f = bisect_left(bounds.frequency, st.orders)
    m = bisect_left(bounds.monetary, _money(st.revenue))
    return _RFM[(r - 1) * 25 + f * 5 + m]


def needs_refresh(
    bounds: RfmBoundaries | None, now_ms: int, every_ms: int = REFRESH_EVERY_MS
) -> bool:
    """True when there are no boundaries yet or they are ``every_ms`` old (the
    schedule); an on-demand refresh simply rebuilds whatever this says."""
    return bounds is None or now_ms - bounds.computed_at >= every_ms


class RfmBuilder:
    """Computes :class:`RfmBoundaries` from a scan of the base.

    Feed every customer once with :meth:`add` (customers without orders are skipped),
    passing the same ``now_ms`` (the scan's reference time) to every ``add`` and to
    :meth:`build`: recency is measured in days at ``add``, so a scan that takes minutes
    does not age the customers it reads last.

    Recency and frequency are integers with few distinct values (days since the last
    order, order counts), so they are counted per value: exact at any base size, memory
    bounded by the number of distinct values. Revenue is kept (8 bytes a customer) up to
    ``exact_limit`` customers and sorted by :meth:`build`; the customer after that moves
    it into a DDSketch (relative accuracy ``relative_accuracy``, a few KB) and the
    builder's memory stops growing. Builders of disjoint parts of the base (partitions)
    combine with :meth:`merge`; the result does not depend on the order of customers nor
    on how they were split.
    """

    __slots__ = (
        "_count",
        "_days",
        "_orders",
        "_revenue",
        "_sketch",
        "exact_limit",
        "relative_accuracy",
    )

    def __init__(
        self, *, exact_limit: int = EXACT_LIMIT, relative_accuracy: float = RELATIVE_ACCURACY
    ) -> None:
        if exact_limit < 0:
            raise ValueError("exact_limit must be >= 0")
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError("relative_accuracy must be in (0, 1)")
        self.exact_limit = exact_limit
        self.relative_accuracy = relative_accuracy
        self._count = 0
        self._days: Counter[int] = Counter()
        self._orders: Counter[int] = Counter()
        self._revenue = array("d")
        self._sketch: DDSketch | None = None

    def __len__(self) -> int:
        """Customers added (with orders)."""
        return self._count

    @property
    def exact(self) -> bool:
        """Whether :meth:`build` will give exact monetary cut points (recency and
        frequency always are)."""
        return self._sketch is None

    def add(self, st: CustomerState, now_ms: int) -> bool:
        """Count one customer; False (ignored) when it has no orders."""
        last = st.last_order
        if st.orders <= 0 or last is None:
            return False
        self._days[recency_days(last, now_ms)] += 1
        self._orders[st.orders] += 1
        self._count += 1
        sketch = self._sketch
        if sketch is not None:
            sketch.add(_money(st.revenue))
        else:
            self._revenue.append(_money(st.revenue))
            if self._count > self.exact_limit:
                self._to_sketch()
        return True

    def merge(self, other: RfmBuilder) -> None:
        """Add the customers ``other`` counted (a disjoint part of the base)."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot merge builders with different relative accuracy")
        total = self._count + other._count
        self._days.update(other._days)
        self._orders.update(other._orders)
        if self._sketch is None and other._sketch is None and total <= self.exact_limit:
            self._revenue.extend(other._revenue)
        else:
            sketch = self._to_sketch()
            if other._sketch is None:
                for v in other._revenue:
                    sketch.add(v)
            else:
                sketch.merge(other._sketch)
        self._count = total

    def build(self, now_ms: int) -> RfmBoundaries:
        """The boundaries of everything added so far, stamped ``computed_at=now_ms``.
        An empty base gives all-zero cut points with ``customers=0`` (``score`` then
        returns None). The builder can go on adding and build again."""
        n = self._count
        if n == 0:
            return RfmBoundaries((0, 0, 0, 0), (0, 0, 0, 0), (0.0, 0.0, 0.0, 0.0), 0, now_ms, True)
        d = _counted_quintiles(self._days, n)
        o = _counted_quintiles(self._orders, n)
        if self._sketch is None:
            v = _lower_quintiles(sorted(self._revenue))
            money = (v[0], v[1], v[2], v[3])
        else:
            # within relative_accuracy of the order statistic's value; rounded to cents
            # (rounding is monotone: the cuts stay ascending)
            q = [round(_quantile(self._sketch, q), 2) for q in _QUINTILES]
            money = (q[0], q[1], q[2], q[3])
        exact = self._sketch is None
        return RfmBoundaries(
            recency=(d[0], d[1], d[2], d[3]),
            frequency=(o[0], o[1], o[2], o[3]),
            monetary=money,
            customers=n,
            computed_at=now_ms,
            exact=exact,
            relative_accuracy=None if exact else self.relative_accuracy,
        )

    def to_bytes(self, *, sketch: bool = False) -> bytes:
        """The builder's counts as bytes (MessagePack) that :meth:`from_bytes` reads back,
        to merge builders of different processes (the distributed runtime publishes one
        per partition). Exact revenues are 8 bytes a customer; ``sketch=True`` moves them
        into the sketch first (this builder too: it is then no longer exact), a few KB
        whatever the size, for a part of a base known to exceed ``exact_limit`` anyway:
        merged, both forms give the same sketch."""
        if sketch:
            self._to_sketch()
        sk = self._sketch
        return _encode_summary(
            _Summary(
                version=_SUMMARY_VERSION,
                count=self._count,
                relative_accuracy=self.relative_accuracy,
                exact_limit=self.exact_limit,
                days=sorted(self._days.items()),
                orders=sorted(self._orders.items()),
                revenue=None if sk is not None else _le(self._revenue).tobytes(),
                sketch=None if sk is None else _sketch_fields(sk),
            )
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> RfmBuilder:
        """A builder :meth:`to_bytes` wrote (raises :class:`SummaryError`)."""
        try:
            s = _decode_summary(raw)
        except msgspec.MsgspecError as err:
            raise SummaryError(f"not an RFM summary: {err}") from None
        if s.version != _SUMMARY_VERSION:
            raise SummaryError(f"unknown summary version {s.version!r}")
        try:
            b = cls(exact_limit=s.exact_limit, relative_accuracy=s.relative_accuracy)
        except ValueError as err:
            raise SummaryError(str(err)) from None
        b._count = s.count
        b._days = Counter(dict(s.days))
        b._orders = Counter(dict(s.orders))
        if s.sketch is not None:
            b._sketch = _sketch_from(s.sketch, s.relative_accuracy)
        elif s.revenue is not None:
            b._revenue = _le(array("d", s.revenue))
        if sum(b._days.values()) != s.count or sum(b._orders.values()) != s.count:
            raise SummaryError("counts do not add up to the customers")
        return b

    def _to_sketch(self) -> DDSketch:
        if self._sketch is None:
            sketch = DDSketch(self.relative_accuracy)
            for v in self._revenue:
                sketch.add(v)
            self._sketch = sketch
            self._revenue = array("d")
        return self._sketch


_SUMMARY_VERSION: Final = 1


class _Store(msgspec.Struct, array_like=True):
    offset: int
    bins: bytes  # float64 little-endian, one per key from ``offset``


class _Sketch(msgspec.Struct, array_like=True):
    positive: _Store
    negative: _Store
    zero: float
    total: float
    min: float
    max: float


class _Summary(msgspec.Struct, array_like=True):
    version: int
    count: int
    relative_accuracy: float
    exact_limit: int
    days: list[tuple[int, int]]
    orders: list[tuple[int, int]]
    revenue: bytes | None
    sketch: _Sketch | None


_encode_summary = msgspec.msgpack.Encoder().encode
_decode_summary = msgspec.msgpack.Decoder(_Summary).decode


def _le(values: array[float]) -> array[float]:
    # serialised doubles are little-endian whatever the machine
    if sys.byteorder == "big":  # pragma: no cover - no big-endian CI
        values = array("d", values)
        values.byteswap()
    return values


def _store_fields(store: DenseStore) -> _Store:
    if store.count == 0:
        return _Store(0, b"")
    return _Store(store.offset, _le(array("d", store.bins)).tobytes())


def _sketch_fields(sk: DDSketch) -> _Sketch:
    return _Sketch(
        _store_fields(sk._store),
        _store_fields(sk._negative_store),
        float(sk._zero_count),
        float(sk._sum),
        float(sk._min),
        float(sk._max),
    )


def _sketch_from(f: _Sketch, relative_accuracy: float) -> DDSketch:
    sk = DDSketch(relative_accuracy)
    for store, fields in ((sk._store, f.positive), (sk._negative_store, f.negative)):
        for i, w in enumerate(_le(array("d", fields.bins))):
            if w:
                store.add(fields.offset + i, w)
    sk._zero_count = f.zero
    sk._count = sk._store.count + sk._negative_store.count + f.zero
    sk._sum, sk._min, sk._max = f.total, f.min, f.max
    return sk


def _counted_quintiles(counts: Counter[int], n: int) -> list[int]:
    # the same order statistics as _lower_quintiles, from (value, count) pairs
    ranks = [k * (n - 1) // 5 for k in (1, 2, 3, 4)]
    out: list[int] = []
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        while len(out) < 4 and ranks[len(out)] < seen:
            out.append(value)
    return out


def _lower_quintiles(xs: list[float]) -> list[float]:
    # the "lower" order statistic at ranks k(n-1)/5, integer arithmetic (no float rounding)
    n = len(xs)
    return [xs[k * (n - 1) // 5] for k in (1, 2, 3, 4)]


def _quantile(sketch: DDSketch, q: float) -> float:
    value = sketch.get_quantile_value(q)
    if value is None:  # pragma: no cover - never empty when called
        raise ValueError("empty sketch")
    return float(value)
