"""Load-test tooling: a synthetic storefront traffic generator, an independent oracle of the
stock recipes' semantics, and an action-log diff (see docs/semantics.md)."""
