"""A rule set: every rule of a deployment compiled, validated whole and indexed by event type.

Loading is all-or-nothing: one error anywhere and :class:`RuleErrors` lists them all (file,
line, column); the caller keeps its previous rule set. A deployed set also carries earlier
versions of its rules for the flows still open on them (rules/versions.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rules.compiler import CompiledRule, compile_rule
from rules.durations import parse_cap, parse_duration
from rules.exceptions import RuleError, RuleErrors
from rules.fields import lenient_fields
from rules.loader import Positions, SourceDoc, parse_specs, rule_files
from rules.segments import CompiledSegment, compile_segment
from rules.spec import RuleSpec, SegmentSpec, Settings
from rules.versions import Archive, compile_archive, move_errors, place, retained, spec_json
from state.windows import Thresholds, WindowSpec, watch, watch_thresholds

if TYPE_CHECKING:
    from state.customer import FlowInstance

__all__ = [
    "RECIPES_DIR",
    "RuleSet",
    "TypePlan",
    "load_ruleset",
    "load_stored",
    "load_texts",
    "segments_digest",
]

RECIPES_DIR = Path(__file__).parent / "recipes"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TypePlan:
    """What the processor does with an event of one type, beyond the profile update: one
    lookup per event instead of one per index."""

    seen: tuple[str, ...]  # ids of the rules whose open instances record the type in seen
    exits: tuple[CompiledRule, ...]  # rules with an exit_on for the type, priority order
    triggers: tuple[CompiledRule, ...]  # rules it triggers, priority order
    goal: bool  # some rule's experiment goal is this type
    counted: bool  # kept in the windowed counters


@dataclass
class RuleSet:
    """Compiled rules plus the indexes the processor uses on every event."""

    rules: dict[str, CompiledRule]
    settings: Settings
    digest: str
    by_trigger: dict[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    by_exit: dict[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    goal_types: frozenset[str] = frozenset()
    counted: frozenset[str] = frozenset()
    channel_caps: dict[str, tuple[int, int]] = field(default_factory=dict)
    lateness: int = 0
    future_tolerance: int = 0
    max_cap_period: int = 0
    plans: dict[str, TypePlan] = field(default_factory=dict)
    default_plan: TypePlan = TypePlan((), (), (), False, False)  # any type not in ``plans``
    segments: tuple[CompiledSegment, ...] = ()  # in file order
    # event type -> the segments its processing can change; other types: ``segments_any``
    segment_plan: dict[str, tuple[CompiledSegment, ...]] = field(default_factory=dict)
    segments_any: tuple[CompiledSegment, ...] = ()
    # the segments time alone can move (count() windows, RFM and predictions, or reading
    # anything): what the segment timer evaluates
    segments_timed: tuple[CompiledSegment, ...] = ()
    segments_timed_counts: tuple[CompiledSegment, ...] = ()  # of those: counts, anything
    segments_timed_rfm: tuple[CompiledSegment, ...] = ()  # of the others: reading rfm
    segments_timed_all: tuple[CompiledSegment, ...] = ()  # the two above
    segment_counts: tuple[tuple[str, str], ...] = ()  # every (type, window) they count
    segment_count_types: frozenset[str] = frozenset()  # the types of those
    # of those, the ones no segment they can change reads the population for, and that
    # can only turn none of them false (engine/segments.py's path for a counted event)
    segment_quiet: frozenset[str] = frozenset()
    segment_windows: WindowSpec = field(default_factory=dict)  # the same, for next_change_of
    # the same with the counts' thresholds, for next_crossing (the segment timer)
    segment_thresholds: Thresholds = field(default_factory=dict)
    segment_ids: frozenset[str] = frozenset()
    # the (segment id, entered?) changes a rule triggers or exits on: only those become
    # ``segment_entered:<id>`` / ``segment_exited:<id>`` inputs for the rules
    segment_inputs: frozenset[tuple[str, bool]] = frozenset()
    # a hash of the segments' ids and conditions (None: no segments), and of the
    # population the segments reading it were evaluated against (``use_population``);
    # a customer state evaluated under another one needs a backfill
    # (CustomerState.segments_digest)
    segments_digest: str | None = None
    # the population-dependent customer fields the segments read ("rfm", "predicted")
    segments_population: frozenset[str] = frozenset()
    segments_rfm: bool = False  # some segment reads customer.rfm
    # every segment reading customer.rfm is an RFM-group one (``CompiledSegment.rfm_group``)
    # and none reads anything: time matters to them only when the group changes
    segments_rfm_groups: bool = False
    # the segments reading customer.predicted (when they turn is searched:
    # engine/segment_flips.py)
    segments_predicted: tuple[CompiledSegment, ...] = ()
    _conditions_digest: str | None = field(default=None, init=False, repr=False)
    _population_key: str = field(default="", init=False, repr=False)
    # (rule id, channel) -> the send needs an address; the runtimes add what their sinks
    # need (``require_addresses``), settings.require_address covers every rule
    address_required: Callable[[str, str], bool] | None = None
    # earlier versions of the rules, kept for the flows still open on them
    # (rules/versions.py): rule id -> compiled versions, newest first, and their specs
    retired: dict[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    archive: Archive = field(default_factory=dict)
    specs: dict[str, RuleSpec] = field(default_factory=dict)  # the current rules' specs
    # ids of the rules with ``on_update: move``
    moving: frozenset[str] = frozenset()
    # ids of the rules whose spec changed without a version bump (against the history
    # this set was loaded with)
    changed_in_place: tuple[str, ...] = ()

    def history(self) -> Archive:
        """What the next deploy keeps versions from: each rule's current spec in front
        of its archived ones (``load_texts(..., archive=rs.history())``)."""
        return {
            rid: [spec_json(spec), *self.archive.get(rid, ())] for rid, spec in self.specs.items()
        }

    def version_of(self, rule_id: str, version: int) -> CompiledRule | None:
        """Version ``version`` of rule ``rule_id``: the current one or a kept earlier one
        (None: not kept, or the rule is gone)."""
        rule = self.rules.get(rule_id)
        if rule is None or rule.version == version:
            return rule
        for old in self.retired.get(rule_id, ()):
            if old.version == version:
                return old
        return None

    def flow_rule(self, inst: FlowInstance) -> CompiledRule | None:
        """The definition open flow ``inst`` runs on: its own version while kept (None
        when not: the flow ends at its next timer, like one of a removed rule). A rule
        with ``on_update: move`` moves an older flow onto its current version here
        (``inst.pc`` and ``inst.version`` rewritten: rules/versions.py ``place``); one it
        cannot place stays on its own version."""
        rule = self.rules.get(inst.rule_id)
        if rule is None or rule.version == inst.version:
            return rule
        old = self.version_of(inst.rule_id, inst.version)
        if old is not None and inst.rule_id in self.moving:
            pc = place(old, rule, inst.pc)
            if pc is not None:
                inst.pc = pc
                inst.version = rule.version
                return rule
        return old

    def require_addresses(self, needs: Callable[[str, str], bool]) -> None:
        """Sends of (rule id, channel) for which ``needs`` is true require an address
        too (a runtime passes its router's: provider sinks cannot send without one)."""
        self.address_required = needs

    def needs_address(self, rule_id: str, channel: str) -> bool:
        """Whether a send of ``rule_id`` on ``channel`` is suppressed without an address."""
        if channel in self.settings.require_address:
            return True
        need = self.address_required
        return need is not None and need(rule_id, channel)

    def use_population(self, key: str) -> bool:
        """Mark the segments as evaluated against the population ``key``
        (engine/intelligence/population.py ``Population.key`` of
        ``segments_population``): when segments read it and the key changed, the digest
        changes, so the runtime's backfill re-evaluates every customer against the new
        boundaries or model. Returns whether the digest changed."""
        if not self.segments_population or key == self._population_key:
            return False
        self._population_key = key
        base = self._conditions_digest
        self.segments_digest = (
            None if base is None else hashlib.sha256(f"{base}|{key}".encode()).hexdigest()[:16]
        )
        return True

    def seen_rules(self, event_type: str) -> tuple[str, ...]:
        """Ids of the rules whose open flow instances record ``event_type`` in ``seen``."""
        return self.plans.get(event_type, self.default_plan).seen

    def __post_init__(self) -> None:
        order = sorted(self.rules.values(), key=CompiledRule.sort_key)
        retired = [old for r in order for old in self.retired.get(r.id, ())]
        trig: dict[str, list[CompiledRule]] = {}
        exits: dict[str, list[CompiledRule]] = {}
        for r in order:
            trig.setdefault(r.trigger, []).append(r)
            # a kept version's exits too: its open flows leave on them (the processor
            # tests the exits of the flow's own version, ``flow_rule``)
            olds = self.retired.get(r.id, ())
            for ev in {e for v in (r, *olds) for e, _ in v.exits}:
                exits.setdefault(ev, []).append(r)
        self.by_trigger = {k: tuple(v) for k, v in trig.items()}
        self.by_exit = {k: tuple(v) for k, v in exits.items()}
        self.goal_types = frozenset(r.goal[0] for r in (*order, *retired) if r.goal)
        # event type -> ids of the rules whose open instances record it in ``seen`` (in
        # any kept version); the rules that record every type are in each (and alone in
        # the default plan)
        seen_types: dict[str, frozenset[str] | None] = {}
        for r in order:
            recorded: frozenset[str] | None = r.seen_types
            for old in self.retired.get(r.id, ()):
                recorded = (
                    None
                    if recorded is None or old.seen_types is None
                    else recorded | old.seen_types
                )
            seen_types[r.id] = recorded
        seen_any = tuple(r.id for r in order if seen_types[r.id] is None)
        seen: dict[str, list[str]] = {}
        for r in order:
            for t in seen_types[r.id] or ():
                seen.setdefault(t, list(seen_any)).append(r.id)
        self.counted = frozenset(self.settings.counters).union(
            *(r.counted for r in (*order, *retired)),
            (t for seg in self.segments for t, _ in seg.counts),
        )
        types = set(self.by_trigger) | set(self.by_exit) | self.goal_types | set(seen)
        self.plans = {
            t: TypePlan(
                tuple(seen.get(t, seen_any)),
                self.by_exit.get(t, ()),
                self.by_trigger.get(t, ()),
                t in self.goal_types,
                t in self.counted,
            )
            for t in types | self.counted
        }
        self.default_plan = TypePlan(seen_any, (), (), False, False)
        self.channel_caps = {c: parse_cap(v) for c, v in self.settings.channel_caps.items()}
        self.lateness = parse_duration(self.settings.allowed_lateness)
        self.future_tolerance = parse_duration(self.settings.future_tolerance)
        self.segments_any = tuple(g for g in self.segments if g.inputs is None)
        self.segments_timed = tuple(
            g for g in self.segments if g.counts or g.inputs is None or g.population
        )
        # of those, the ones only time moving the population's fields can turn (RFM,
        # predictions, no count() and known inputs): the timer evaluates them only when
        # that is what came due (engine/processor.py on_timer)
        self.segments_timed_counts = tuple(
            g for g in self.segments_timed if g.counts or g.inputs is None
        )
        self.segments_timed_rfm = tuple(
            g
            for g in self.segments_timed
            if g not in self.segments_timed_counts and "rfm" in g.population
        )
        self.segments_timed_all = (*self.segments_timed_counts, *self.segments_timed_rfm)
        named = {t for g in self.segments for t in g.inputs or ()} | {"customer_merged"}
        self.segment_plan = {
            t: tuple(
                g
                for g in self.segments
                if g.inputs is None or t in g.inputs or t == "customer_merged"
            )
            for t in named
        }
        self.segment_counts = tuple(sorted({c for g in self.segments for c in g.counts}))
        self.segment_count_types = frozenset(t for t, _ in self.segment_counts)
        self.segment_windows = watch(self.segment_counts)
        self.segment_quiet = frozenset(
            t
            for t in self.segment_count_types
            if not any(
                g.population or g.falling is None or t in g.falling
                for g in self.segment_plan.get(t, self.segments_any)
            )
        )
        self.segment_thresholds = watch_thresholds(segment_thresholds(self.segments))
        self.segment_ids = frozenset(g.id for g in self.segments)
        self.segment_inputs = frozenset(
            (t.partition(":")[2], t.startswith("segment_entered:"))
            for t in set(self.by_trigger) | set(self.by_exit)
            if t.startswith(("segment_entered:", "segment_exited:"))
        )
        self.segments_population = frozenset().union(*(g.population for g in self.segments))
        self.segments_rfm = "rfm" in self.segments_population
        self.segments_rfm_groups = (
            self.segments_rfm
            and not self.segments_any
            and all(g.rfm_group is not None for g in self.segments if "rfm" in g.population)
        )
        self.segments_predicted = tuple(g for g in self.segments if "predicted" in g.population)
        self._conditions_digest = self.segments_digest = segments_digest(self.segments)
        periods = [p for _, p in self.channel_caps.values()]
        periods += [r.cap[1] for r in order if r.cap]
        self.max_cap_period = max(periods, default=0)


def segment_thresholds(
    segments: Iterable[CompiledSegment],
) -> dict[tuple[str, str], tuple[int, ...] | None]:
    """(type, window) -> the thresholds the segments compare its count with (None when
    one of them can turn at any drop of the count)."""
    out: dict[tuple[str, str], set[int] | None] = {}
    for seg in segments:
        for pair in seg.counts:
            limit = None if seg.thresholds is None else seg.thresholds.get(pair)
            held = out.get(pair, set())
            out[pair] = None if limit is None or held is None else held | {limit}
    return {k: None if v is None else tuple(sorted(v)) for k, v in out.items()}


def segments_digest(segments: Iterable[CompiledSegment]) -> str | None:
    """A hash of the segments' ids and conditions, in id order (their order, descriptions
    and the rules around them do not change anyone's membership); None when there are
    none."""
    pairs = sorted((g.id, g.condition.source) for g in segments)
    if not pairs:
        return None
    h = hashlib.sha256()
    for sid, source in pairs:
        h.update(sid.encode() + b"\0" + source.encode() + b"\0")
    return h.hexdigest()[:16]


def load_texts(
    sources: Iterable[tuple[str, str]], archive: Mapping[str, list[dict[str, Any]]] | None = None
) -> RuleSet:
    """Build a rule set from (path, text) pairs; raise RuleErrors with every error found.

    ``archive``: earlier versions to keep (a stored set's ``archive``, or the running
    set's ``history()`` at a deploy); the set keeps, for each of its rules, up to
    ``versions_kept`` versions other than its own (rules/versions.py ``retained``)."""
    errors: list[RuleError] = []
    specs: list[tuple[RuleSpec, SourceDoc]] = []
    settings: list[tuple[Settings, SourceDoc]] = []
    segment_specs: list[tuple[SegmentSpec, SourceDoc]] = []
    h = hashlib.sha256()
    for path, text in sources:
        h.update(path.encode() + b"\0" + text.encode() + b"\0")
        parsed = parse_specs(path, text)
        specs += parsed.rules
        settings += parsed.settings
        segment_specs += parsed.segments
        errors += parsed.errors
    if len(settings) > 1:
        errors.append(settings[1][1].positions.error((), "only one settings document allowed"))
    setting = settings[0][0] if settings else Settings(kind="settings")
    rules: dict[str, CompiledRule] = {}
    rule_specs: dict[str, RuleSpec] = {}
    seen: dict[str, Positions] = {}
    for spec, doc in specs:
        if spec.id in seen:
            first = seen[spec.id]
            line = first.marks.get((), (1, 1))[0]
            errors.append(
                doc.positions.error(
                    ("id",), f"duplicate rule id {spec.id!r} (first in {first.path}:{line})"
                )
            )
            continue
        seen[spec.id] = doc.positions
        compiled, errs = compile_rule(spec, doc.positions, setting)
        errors += errs + move_errors(spec, doc.positions)
        if compiled is not None and spec.enabled:
            rules[spec.id] = compiled
            rule_specs[spec.id] = spec
    segments: dict[str, CompiledSegment] = {}
    for seg, doc in segment_specs:
        if seg.id in segments:
            errors.append(doc.positions.error(("id",), f"duplicate segment id {seg.id!r}"))
            continue
        compiled_seg, errs = compile_segment(seg, doc.positions)
        errors += errs
        if compiled_seg is not None:
            segments[seg.id] = compiled_seg
    for r in rules.values():
        for etype in (r.trigger, *(e for e, _ in r.exits)):
            name = etype.partition(":")[2]
            if name and name not in segments:
                errors.append(RuleError("<rule set>", 1, 1, f"rule {r.id}: no segment {name!r}"))
    if errors:
        raise RuleErrors(errors)
    kept, in_place = retained(rules, rule_specs, archive, setting.versions_kept)
    for rule_id in in_place:
        logger.warning(
            "rule %s changed without a version bump: its open flows continue at their "
            "step index with the new steps",
            rule_id,
        )
    retired, kept = compile_archive(kept, setting)
    return RuleSet(
        rules=rules,
        settings=setting,
        digest=h.hexdigest()[:16],
        segments=tuple(segments.values()),
        retired=retired,
        archive=kept,
        specs=rule_specs,
        moving=frozenset(rid for rid, spec in rule_specs.items() if spec.on_update == "move"),
        changed_in_place=in_place,
    )


def load_stored(
    sources: Iterable[tuple[str, str]],
    version: int | None = None,
    archive: Mapping[str, list[dict[str, Any]]] | None = None,
) -> RuleSet:
    """A rule set already deployed (stored by the runtime, maybe by an earlier version of
    Nudge): like :func:`load_texts`, except that what the field lint finds (rules/
    fields.py: a field that cannot exist) is logged as a warning, not an error. The
    deploy was valid when it was made; refusing it now would stop the engine from
    starting after an upgrade. Such a condition evaluates false at run time, as before.
    ``archive``: the earlier versions stored with it (``RuleSet.archive``)."""
    with lenient_fields() as warnings:
        rs = load_texts(sources, archive)
    for message in sorted(set(warnings)):
        logger.warning(
            "deployed rule set%s: %s (allowed in a stored rule set; fix it in the next deploy)",
            "" if version is None else f" version {version}",
            message,
        )
    return rs


def load_ruleset(paths: Iterable[str | Path] | None = None) -> RuleSet:
    """Load rule files and directories (default: the stock recipes)."""
    names = [str(p) for p in paths] if paths is not None else [str(RECIPES_DIR)]
    sources = []
    errors = []
    for f in rule_files(names):
        try:
            sources.append((str(f), f.read_text(encoding="utf-8")))
        except OSError as err:
            errors.append(RuleError(str(f), 1, 1, f"cannot read: {err.strerror}"))
    if errors:
        raise RuleErrors(errors)
    return load_texts(sources)
