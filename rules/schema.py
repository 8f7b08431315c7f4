"""The published JSON Schema for rule files, generated from the pydantic specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rules.spec import RuleSpec, SegmentSpec, Settings

__all__ = ["SCHEMA_PATH", "rule_schema"]

SCHEMA_PATH = Path(__file__).parent / "schema" / "rule.schema.json"


def rule_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) for one rule, segment or settings document."""
    rule = RuleSpec.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    settings = Settings.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    segment = SegmentSpec.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs = {**rule.pop("$defs", {}), **settings.pop("$defs", {}), **segment.pop("$defs", {})}
    defs["RuleSpec"] = rule
    defs["Settings"] = settings
    defs["SegmentSpec"] = segment
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://nudge.dev/schema/rule.schema.json",
        "title": "Nudge rule file document",
        "oneOf": [
            {"$ref": "#/$defs/RuleSpec"},
            {"$ref": "#/$defs/Settings"},
            {"$ref": "#/$defs/SegmentSpec"},
        ],
        "$defs": defs,
    }
