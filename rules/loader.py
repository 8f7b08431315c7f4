"""Reading rule files: YAML with positions, validated into specs, errors as file:line:col.

PyYAML's composer gives every node its start mark; we build plain Python data from the
node tree and remember where each path (``("steps", 2, "send")``) starts, so a pydantic
error location or a CEL syntax error maps back to a line and column in the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rules.exceptions import RuleError
from rules.expressions import Expression, ExpressionError
from rules.spec import RuleSpec, SegmentSpec, Settings

__all__ = [
    "ParsedFile",
    "Positions",
    "SourceDoc",
    "load_documents",
    "parse_specs",
    "rule_files",
]

PathKey = tuple[str | int, ...]


@dataclass
class Positions:
    """Where each value of one YAML document starts (1-based line and column)."""

    path: str
    marks: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    # scalar style per path: '' plain, "'" or '"' quoted, '|' or '>' block
    styles: dict[PathKey, str] = field(default_factory=dict)

    def locate(self, loc: tuple[Any, ...], data: Any) -> tuple[PathKey, tuple[int, int]]:
        """The deepest path along a pydantic ``loc`` that exists in the file, and where it
        starts. Union and tag names that pydantic inserts into ``loc`` are skipped."""
        best: PathKey = ()
        cur: PathKey = ()
        node = data
        for part in loc:
            if (isinstance(node, dict) and part in node) or (
                isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            ):
                node = node[part]
            else:
                continue  # a union/tag name pydantic inserts, not a key in the file
            cur = (*cur, part)
            if cur in self.marks:
                best = cur
        return best, self.marks.get(best, (1, 1))

    def error(self, key: PathKey, message: str, offset: int = 0, at_line: int = 1) -> RuleError:
        """A RuleError at ``key``; ``offset`` is a 1-based column inside the scalar's
        ``at_line``-th line (only a literal block, ``|``, keeps more than one)."""
        line, col = self.marks.get(key, (1, 1))
        if offset:
            style = self.styles.get(key, "")
            if style in ("", "'", '"'):
                col += offset - 1 + (1 if style else 0)
            elif style in ("|", ">"):
                # the block's lines start on the next line; its indentation is not kept,
                # so the column is within the line's text (best effort)
                line, col = line + at_line, offset
        return RuleError(self.path, line, col, message)


@dataclass
class SourceDoc:
    """One YAML document of a rule file, with positions."""

    data: Any
    positions: Positions


MAX_VALUES = 50_000
"""Values one document may build: aliases share one node, so ten lines of anchors can
expand to 9**9 values ("billion laughs") and hold the event loop for minutes."""


def _build(node: yaml.Node, key: PathKey, pos: Positions) -> Any:
    pos.marks[key] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if len(pos.marks) > MAX_VALUES:
        raise RuleError(
            pos.path,
            node.start_mark.line + 1,
            node.start_mark.column + 1,
            f"document has more than {MAX_VALUES:,} values (aliases expanded)",
        )
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k_node, v_node in node.value:
            k = _build_scalar(k_node)
            if k in out:
                raise RuleError(
                    pos.path,
                    k_node.start_mark.line + 1,
                    k_node.start_mark.column + 1,
                    f"duplicate key {k!r}",
                )
            out[k] = _build(v_node, (*key, k), pos)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, (*key, i), pos) for i, v in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    pos.styles[key] = node.style or ""
    return _build_scalar(node)


def _build_scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def load_documents(path: str, text: str) -> list[SourceDoc]:
    """Parse YAML text into documents with positions; syntax errors become RuleError."""
    docs: list[SourceDoc] = []
    try:
        for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
            pos = Positions(path)
            docs.append(SourceDoc(_build(node, (), pos), pos))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise RuleError(path, line, col, f"YAML syntax: {err.problem or err.context}") from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise RuleError(path, 1, 1, "YAML nesting too deep") from None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow (e.g. \x04)
        line = text.count("\n", 0, err.position) + 1
        col = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        raise RuleError(path, line, col, f"YAML: {err.reason} #x{err.character:04x}") from None
    return docs


def _pydantic_errors(err: ValidationError, doc: SourceDoc) -> list[RuleError]:
    out: dict[str, RuleError] = {}
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        key, (line, col) = doc.positions.locate(loc, doc.data)
        if e["type"] == "missing":
            key = (*key, loc[-1])  # name the missing field, positioned at its parent
        where = ".".join(str(p) for p in key)
        msg = e["msg"].removeprefix("Value error, ")
        error = RuleError(doc.positions.path, line, col, f"{where}: {msg}" if where else msg)
        out.setdefault(str(error), error)
    return list(out.values())


@dataclass
class ParsedFile:
    """The documents of one file by kind, and every error found in it."""

    rules: list[tuple[RuleSpec, SourceDoc]] = field(default_factory=list)
    settings: list[tuple[Settings, SourceDoc]] = field(default_factory=list)
    segments: list[tuple[SegmentSpec, SourceDoc]] = field(default_factory=list)
    errors: list[RuleError] = field(default_factory=list)


def parse_specs(path: str, text: str) -> ParsedFile:
    """Every rule, settings and segment document in one file, and every error found."""
    out = ParsedFile()
    rules, settings, segments, errors = out.rules, out.settings, out.segments, out.errors
    try:
        docs = load_documents(path, text)
    except RuleError as err:
        errors.append(err)
        return out
    for doc in docs:
        if not isinstance(doc.data, dict):
            errors.append(doc.positions.error((), "a rule document must be a mapping"))
            continue
        try:
            if doc.data.get("kind") == "settings":
                settings.append((Settings.model_validate(doc.data), doc))
            elif doc.data.get("kind") == "segment":
                segments.append((SegmentSpec.model_validate(doc.data), doc))
            else:
                rules.append((RuleSpec.model_validate(doc.data), doc))
        except ValidationError as err:
            errors.extend(_pydantic_errors(err, doc))
            errors.extend(_expression_errors(doc.data, (), doc.positions))
    return out


_EXPR_KEYS = frozenset({"when", "filter", "if", "condition"})


def _expression_errors(data: Any, key: PathKey, pos: Positions) -> list[RuleError]:
    """Syntax errors of the expressions in a document that failed validation, so one
    ``rules check`` run reports them too (a valid document's are checked when compiled)."""
    out: list[RuleError] = []
    items = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    for k, v in items:
        if k in _EXPR_KEYS and isinstance(v, str):
            try:
                Expression(v)
            except ExpressionError as err:
                out.extend(
                    pos.error((*key, k), f"expression: {one.message}", one.column, one.line)
                    for one in (err, *err.others)
                )
        else:
            out.extend(_expression_errors(v, (*key, k), pos))
    return out


def rule_files(paths: list[str]) -> list[Path]:
    """The .yaml/.yml files named, or found (sorted) under named directories."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            # hidden entries are skipped: a Kubernetes ConfigMap volume keeps a second copy
            # of every file under "..<timestamp>/"
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.suffix in (".yaml", ".yml")
                    and not any(part.startswith(".") for part in f.relative_to(p).parts)
                )
            )
        else:
            out.append(p)
    return out
