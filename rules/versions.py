"""Earlier versions of deployed rules, kept so that an open flow finishes on the version
it entered with (docs/rules.md, "Deploys and open flows").

A deployed rule set carries an :data:`Archive`: for each of its rules, the specs of up to
``settings.versions_kept`` earlier versions, newest first. A deploy builds the next one
from the running set's :meth:`~rules.ruleset.RuleSet.history` (its rules' current specs in
front of its archive); the runtimes store it beside the files (embedded: SQLite; nudge
worker: the Redis record), so a restart compiles the same versions again. Settings are
not versioned: an archived rule is compiled with the running set's settings.

An open flow's definition is the one of its ``version`` (``FlowInstance.version``). A
rule with ``on_update: move`` moves its older flows onto the current version instead, by
the name of the wait they are in (:func:`place`); one it cannot place stays on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from rules.compiler import CompiledRule, Wait, compile_rule
from rules.exceptions import RuleError
from rules.fields import lenient_fields
from rules.loader import Positions, parse_specs
from rules.spec import IfStep, RuleSpec, Settings, Step, WaitStep

__all__ = [
    "Archive",
    "compile_archive",
    "history_of",
    "move_errors",
    "place",
    "retained",
    "spec_json",
]

logger = logging.getLogger(__name__)

Archive = dict[str, list[dict[str, Any]]]
"""Rule id -> the specs (JSON form, :func:`spec_json`) of its earlier versions, newest
first, one per version."""


def spec_json(spec: RuleSpec) -> dict[str, Any]:
    """A rule spec as JSON-able data that ``RuleSpec.model_validate`` reads back."""
    return spec.model_dump(mode="json", by_alias=True)


def _version_of(entry: Mapping[str, Any]) -> int | None:
    v = entry.get("version", 1) if isinstance(entry, Mapping) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _behaviour(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A spec without what does not change what it does (its description)."""
    return {k: v for k, v in entry.items() if k != "description"}


def retained(
    current: Mapping[str, CompiledRule],
    specs: Mapping[str, RuleSpec],
    candidates: Mapping[str, list[dict[str, Any]]] | None,
    keep: int,
) -> tuple[Archive, tuple[str, ...]]:
    """What a rule set keeps of ``candidates`` (an earlier set's history): for each of its
    rules, the earlier versions other than its own, newest first, the first entry of each
    version, at most ``keep``; rules no longer in the set keep nothing (their open flows
    end at their next timer, as before). Also returns the ids of the rules whose spec
    changed under an unchanged version (their open flows continue at their step index
    with the new steps: a version bump keeps them where they were)."""
    out: Archive = {}
    in_place: list[str] = []
    for rule_id, entries in (candidates or {}).items():
        rule = current.get(rule_id)
        if rule is None or not isinstance(entries, list):
            continue
        kept: list[dict[str, Any]] = []
        versions = {rule.version}
        for i, entry in enumerate(entries):
            v = _version_of(entry)
            if v is None:
                continue
            if v == rule.version:
                spec = specs.get(rule_id)
                if i == 0 and spec is not None and _behaviour(entry) != _behaviour(spec_json(spec)):
                    in_place.append(rule_id)
                continue
            if v in versions or len(kept) >= keep:
                continue
            versions.add(v)
            kept.append(entry)
        if kept:
            out[rule_id] = kept
    return out, tuple(sorted(in_place))


def compile_archive(
    archive: Archive, settings: Settings
) -> tuple[dict[str, tuple[CompiledRule, ...]], Archive]:
    """Compile the archived versions with ``settings``. A version that no longer compiles
    (a settings change it depended on) is logged and dropped, like one past
    ``versions_kept``. Returns the compiled versions per rule (newest first) and the
    archive of those that compiled. The field lint only warns (rules/fields.py
    ``lenient_fields``): each version was valid when it was deployed."""
    with lenient_fields():
        return _compile_archive(archive, settings)


def _compile_archive(
    archive: Archive, settings: Settings
) -> tuple[dict[str, tuple[CompiledRule, ...]], Archive]:
    compiled: dict[str, tuple[CompiledRule, ...]] = {}
    kept: Archive = {}
    for rule_id, entries in archive.items():
        rules: list[CompiledRule] = []
        good: list[dict[str, Any]] = []
        for entry in entries:
            where = f"<rule {rule_id} version {entry.get('version')}>"
            try:
                spec = RuleSpec.model_validate(entry)
            except ValidationError as err:
                logger.warning("%s: archived version does not load; dropped: %s", where, err)
                continue
            rule, errors = compile_rule(spec, Positions(where), settings)
            if rule is None or spec.id != rule_id:
                logger.warning(
                    "%s: archived version does not compile; dropped: %s",
                    where,
                    "; ".join(e.message for e in errors) or "another rule id",
                )
                continue
            rules.append(rule)
            good.append(entry)
        if rules:
            compiled[rule_id] = tuple(rules)
            kept[rule_id] = good
    return compiled, kept


def place(old: CompiledRule, new: CompiledRule, pc: int) -> int | None:
    """Where an open flow of ``old`` standing at ``pc`` continues in ``new``
    (``on_update: move``): right after the wait of the same name as the wait it is in
    (the op before ``pc``; a send held by quiet hours counts as standing right after the
    wait before it). None when that op is not a named wait, or ``new`` has no wait of
    that name: the flow stays on ``old``."""
    if pc <= 0 or pc > len(old.ops):
        return None
    op = old.ops[pc - 1]
    if not isinstance(op, Wait) or op.name is None:
        return None
    for i, other in enumerate(new.ops):
        if isinstance(other, Wait) and other.name == op.name:
            return i + 1
    return None


def _waits(steps: list[Step], key: tuple[str | int, ...]) -> Iterator[tuple[Any, ...]]:
    for i, step in enumerate(steps):
        k = (*key, i)
        if isinstance(step, WaitStep):
            if step.name is None:
                yield k
        elif isinstance(step, IfStep):
            yield from _waits(step.then, (*k, "then"))
            yield from _waits(step.else_, (*k, "else"))


def move_errors(spec: RuleSpec, pos: Positions) -> list[RuleError]:
    """``on_update: move`` places open flows by the name of the wait they are in: every
    wait of such a rule needs a ``name`` (an error at each one without)."""
    if spec.on_update != "move":
        return []
    return [
        pos.error(
            k,
            "on_update: move places open flows by the name of the wait they are in: "
            "give this wait a name",
        )
        for k in _waits(spec.steps, ("steps",))
    ]


def history_of(
    sources: Iterable[tuple[str, str]], archive: Mapping[str, list[dict[str, Any]]] | None
) -> Archive:
    """``RuleSet.history()`` of a stored rule set without compiling it: each enabled
    rule's spec (the first of an id) in front of its archived versions. What does not
    parse is left out (a stored set was valid when deployed)."""
    out: Archive = {}
    for path, text in sources:
        for spec, _ in parse_specs(path, text).rules:
            if spec.enabled and spec.id not in out:
                out[spec.id] = [spec_json(spec), *(archive or {}).get(spec.id, ())]
    return out
