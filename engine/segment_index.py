"""Who is in each segment, for the segments API, the CLI and the gauge (docs/segments.md).

The pure core keeps a customer's memberships in their state; this index turns them around
(segment -> members) for one runtime, so listing a segment never walks or
inflates the states (MemoryStore keeps idle customers packed). It is built at recovery
from the recovered states and then follows the journal replay and live processing through
each Output's ``segment_changes``; erasures and identity hand-overs (an anonymous id
merged into a known customer loses its memberships without an exit) drop the customer.

Entries and exits are also counted per minute for the last 24 hours. After a restart
those counts start from the states: an entry is counted if the customer is still a
member and entered within 24 hours, an exit if it is the customer's last exit from the
segment (``segments_left``) within 24 hours; entries that were followed by an exit before
the restart, and earlier exits of a customer who left twice, are not counted again.

Memory: one dict entry per membership (customer id -> entered at ms), about 100 bytes
(the entry, the int; the id string is shared with the state only when it is the same
object): 1M members of a segment ~100 MB. Only segments of the current rule set are kept;
a segment removed by a deploy is dropped with its members. A segment added by a deploy
fills as the background backfill (engine/embedded/segment_backfill.py on ``nudge run``,
engine/distributed/backfill.py on the workers) reaches each
customer; one removed and added back before the backfill reached a customer whose state
still holds the old membership lists that customer only at its next change.

The distributed ingest keeps one too (engine/distributed/segments.py), open
(``SegmentIndex(None)``): fed from the segments topic with :meth:`~SegmentIndex.enter` and
:meth:`~SegmentIndex.leave`, it keeps every segment a record names, whatever rule set the
ingest knows of yet (a worker may run a newer one), and the API lists those of the deployed
rule set. Nothing here is specific to one runtime.

Paging in customer id order uses a sorted snapshot of the ids, made on first use and
kept while the members added since stay few (``_Members``): pages cost a bisection, not a
sort of the whole segment.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from engine.output import Output
from rules.ruleset import RuleSet
from state.customer import CustomerState

__all__ = ["WINDOW_MS", "SegmentIndex", "SegmentStats"]

WINDOW_MS = 86_400_000
"""Entries and exits are counted over this window (24 hours)."""
_MINUTE = 60_000
_MERGED = "customer_merged"


class _Members:
    """One segment's members (customer id -> entered at ms), its per-minute entry and
    exit counts, and a sorted snapshot of the ids for paging: ``added`` holds the members
    added since the snapshot that it lacks; members removed since are still in it and
    skipped when paging."""

    __slots__ = ("added", "entered", "exited", "members", "snapshot")

    def __init__(self) -> None:
        self.members: dict[str, int] = {}
        self.entered: Counter[int] = Counter()
        self.exited: Counter[int] = Counter()
        self.snapshot: list[str] | None = None
        self.added: set[str] = set()

    def add(self, cid: str, at: int) -> None:
        self.members[cid] = at
        snap = self.snapshot
        if snap is not None:
            i = bisect_left(snap, cid)
            if i == len(snap) or snap[i] != cid:
                self.added.add(cid)
                if len(self.added) > max(1024, len(snap) >> 4):
                    self.snapshot = None  # sorting anew is cheaper than merging so many
                    self.added = set()

    def remove(self, cid: str) -> bool:
        if self.members.pop(cid, None) is None:
            return False
        self.added.discard(cid)
        return True

    def page(self, after: str | None, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` members in id order, ids after ``after``."""
        if self.snapshot is None:
            self.snapshot = sorted(self.members)
            self.added = set()
        snap, members = self.snapshot, self.members
        start = 0 if after is None else bisect_right(snap, after)
        page: list[str] = []
        i, n = start, len(snap)
        while i < n and len(page) < limit:
            cid = snap[i]
            i += 1
            if cid in members:
                page.append(cid)
        if self.added:
            extra = sorted(c for c in self.added if after is None or c > after)[:limit]
            page = sorted(page + extra)[:limit]
        return [(cid, members[cid]) for cid in page]


def _count(buckets: Counter[int], now: int) -> int:
    """Changes in the 24 hours up to ``now`` (to the minute); drops older buckets."""
    oldest = (now - WINDOW_MS) // _MINUTE + 1
    stale = [b for b in buckets if b < oldest]
    for b in stale:
        del buckets[b]
    return sum(buckets.values())


class SegmentStats(NamedTuple):
    """One segment's figures as listed: size, entries and exits in the last 24 hours."""

    id: str
    size: int
    entered_24h: int
    exited_24h: int


class SegmentIndex:
    """Segment id -> members, for the segments of the current rule set (``ruleset``
    None: open, for every segment a change names). Not thread-safe: used on the
    runtime's event loop (every change comes from a partition running there, or from
    the ingest's topic consumer).
    """

    def __init__(self, ruleset: RuleSet | None) -> None:
        self._segs: dict[str, _Members] = {}
        self.open = ruleset is None
        if ruleset is not None:
            self.set_ruleset(ruleset)

    # --- keeping it -------------------------------------------------------------------
    def set_ruleset(self, ruleset: RuleSet) -> None:
        """Follow a deploy: keep the segments still defined, add the new ones (empty until
        their members change), drop the removed ones with their members."""
        ids = [seg.id for seg in ruleset.segments]
        self._segs = {sid: self._segs.get(sid) or _Members() for sid in ids}

    def load(self, states: Iterable[CustomerState], now: int) -> None:
        """Add the memberships of recovered states (before the journal replay)."""
        segs = self._segs
        oldest = now - WINDOW_MS
        for st in states:
            if st.segments:
                for sid, at in st.segments.items():
                    m = segs.get(sid)
                    if m is not None:
                        m.members[st.customer_id] = at
                        if at > oldest:
                            m.entered[at // _MINUTE] += 1
            if st.segments_left:
                for sid, at in st.segments_left.items():
                    m = segs.get(sid)
                    if m is not None and at > oldest:
                        m.exited[at // _MINUTE] += 1

    def apply(self, out: Output) -> None:
        """Follow one input's output: its membership changes, and an identity hand-over
        (the anonymous id's memberships went with its state to the known customer, whose
        own changes follow when the merge is processed)."""
        segs = self._segs
        for cid, sid, entered, at in out.segment_changes:
            m = segs.get(sid)
            if m is None:
                continue
            if entered:
                m.add(cid, at)
                m.entered[at // _MINUTE] += 1
            elif m.remove(cid):
                m.exited[at // _MINUTE] += 1
        if out.forwards:
            for ev in out.forwards:
                if ev.type == _MERGED:
                    self.drop(out.customer_id)
                    break

    def enter(self, segment_id: str, customer_id: str, at: int) -> None:
        """The customer entered the segment at ``at`` (a record of the segments topic).
        Idempotent: the same entry seen again (a reprocessing) is not counted again."""
        m = self._segs.get(segment_id)
        if m is None:
            if not self.open:
                return
            m = self._segs[segment_id] = _Members()
        if m.members.get(customer_id) == at:
            return
        m.add(customer_id, at)
        m.entered[at // _MINUTE] += 1

    def leave(self, segment_id: str, customer_id: str, at: int, *, counted: bool = True) -> None:
        """The customer left the segment at ``at`` (``counted``: an exit; else dropped,
        an identity hand-over). Nothing when not a member."""
        m = self._segs.get(segment_id)
        if m is not None and m.remove(customer_id) and counted:
            m.exited[at // _MINUTE] += 1

    def drop(self, customer_id: str) -> None:
        """Remove a customer from every segment (erased, or merged into another), without
        counting exits: the customer is gone, not changed."""
        for m in self._segs.values():
            m.remove(customer_id)

    # --- reading it -------------------------------------------------------------------
    def __contains__(self, segment_id: object) -> bool:
        return segment_id in self._segs

    def sizes(self) -> dict[str, int]:
        """Segment id -> members, for every segment of the current rule set."""
        return {sid: len(m.members) for sid, m in self._segs.items()}

    def _get(self, segment_id: str) -> _Members:
        """The segment's members; an open index has none yet for a segment no record
        named (an empty one, not kept)."""
        m = self._segs.get(segment_id)
        if m is None:
            if not self.open:
                raise KeyError(segment_id)
            return _Members()
        return m

    def size(self, segment_id: str) -> int:
        m = self._segs.get(segment_id)
        return 0 if m is None else len(m.members)

    def stats(self, segment_id: str, now: int) -> SegmentStats:
        m = self._get(segment_id)
        return SegmentStats(
            segment_id, len(m.members), _count(m.entered, now), _count(m.exited, now)
        )

    def since(self, segment_id: str, customer_id: str) -> int | None:
        """When the customer entered the segment (ms), None when not a member."""
        return self._get(segment_id).members.get(customer_id)

    def page(self, segment_id: str, after: str | None, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` (customer id, entered at) in id order, ids after ``after``
        (the last id of the previous page; None: from the start)."""
        return self._get(segment_id).page(after, limit)

    def snapshot(self, segment_id: str) -> tuple[list[str], list[int]]:
        """Every member's id and entry time now, side by side, in no particular order (a
        copy: the segment may change while it is written out). Two flat lists rather
        than a list of pairs: 1M pairs are 1M objects the cyclic GC then walks (a 300 ms
        stall of the loop measured in load_tests/bench_segment_export.py)."""
        members = self._get(segment_id).members
        return list(members), list(members.values())
