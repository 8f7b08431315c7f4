"""The rule language: YAML files -> typed specs -> compiled, indexed rule sets."""
