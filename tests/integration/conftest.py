"""Temporary conftest: loads the server fixtures for tests/integration.

``pytest_plugins`` is only allowed in the top-level conftest (pytest >= 8 errors
on it here when the whole suite is collected), so the fixtures are imported
instead, unless the top-level tests/conftest.py already registered the plugin
(``pytest_plugins = ["tests.support.fixtures"]``), in which case this is a no-op.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # plain `pytest` (not `python -m pytest`) does not add the repo root
    sys.path.insert(0, _ROOT)

if "tests.support.fixtures" not in sys.modules:
    from tests.support.fixtures import *  # noqa: F403
