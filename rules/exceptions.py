"""Rule-file errors. Every error names file, line and column (1-based)."""

from __future__ import annotations

from engine.exceptions import NudgeError

__all__ = ["RuleError", "RuleErrors"]


class RuleError(NudgeError):
    """One problem in a rule file, printed as ``file:line:col: message``."""

    def __init__(self, path: str, line: int, column: int, message: str) -> None:
        super().__init__(f"{path}:{line}:{column}: {message}")
        self.path = path
        self.line = line
        self.column = column
        self.message = message

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.path,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }


class RuleErrors(NudgeError):
    """All the problems found in a rule set; the set is rejected whole."""

    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
