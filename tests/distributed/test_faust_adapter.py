"""Pins the private faust behaviour engine/distributed/faust_adapter.py relies on: a faust
upgrade that renames or rewrites it fails here, not in production.

Two checks. Every private name the adapter reads or calls on faust's objects exists in
the installed faust (a rename fails it). And the upstream methods the adapter replaces
or mirrors (``_drain_messages``, which it overrides; ``ack``, which ``_ack_records``
does per batch; ...) still have the source the adapter was written against: when one
changes, read the new version, port what changed into the adapter, then record the new
fingerprint here.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import textwrap
from pathlib import Path

import pytest

faust = pytest.importorskip("faust")

ADAPTER = Path(__file__).resolve().parents[2] / "engine" / "distributed" / "faust_adapter.py"

UPSTREAM = {
    # overridden by BatchConsumer._drain_messages (the batch path)
    "faust.transport.consumer.Consumer._drain_messages": "8f35dd7a11144daa",
    # mirrored per batch by BatchConsumer._ack_records
    "faust.transport.consumer.Consumer.ack": "5548cf0f75843f73",
    # called for offset gaps, as faust's loop calls it
    "faust.transport.consumer.Consumer._add_gap": "f1cc1db634f5ea09",
    # the fetch the batch loop awaits
    "faust.transport.consumer.Consumer._wait_next_records": "ba40cd3671328d3b",
    # BatchApp swaps the transport through it
    "faust.app.base.App._new_transport": "11beddacb9fee5b0",
    # producer_of: the started aiokafka producer
    "faust.transport.drivers.aiokafka.Producer._ensure_producer": "04016bd22147281a",
}

FAUST_CLASSES = (
    "faust.transport.consumer.Consumer",
    "faust.transport.drivers.aiokafka.Consumer",
    "faust.transport.drivers.aiokafka.Producer",
    "faust.app.base.App",
)


def _resolve(dotted: str) -> object:
    mod, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(mod), name)


def _fingerprint(obj: object) -> str:
    src = textwrap.dedent(inspect.getsource(obj))  # type: ignore[arg-type]
    return hashlib.sha256(src.encode()).hexdigest()[:16]


@pytest.mark.parametrize("dotted", sorted(UPSTREAM))
def test_upstream_methods_are_the_ones_the_adapter_was_written_against(dotted: str) -> None:
    mod_cls, _, meth = dotted.rpartition(".")
    got = _fingerprint(getattr(_resolve(mod_cls), meth))
    assert got == UPSTREAM[dotted], (
        f"{dotted} changed upstream (faust-streaming {faust.__version__}): port the change "
        f"into engine/distributed/faust_adapter.py, then pin {got!r} here"
    )


def _private_names_used(tree: ast.Module) -> set[str]:
    """``_name`` attributes the adapter reads or calls (not dunders)."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }


def _own_names(tree: ast.Module) -> set[str]:
    """Names the adapter defines itself: its methods and the attributes it assigns."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            own.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr not in _faust_attrs():
                    own.add(t.attr)
    return own


@functools.cache
def _faust_attrs() -> frozenset[str]:
    """Every attribute and method name faust's consumer, producer and app define."""
    names: set[str] = set()
    for dotted in FAUST_CLASSES:
        cls = _resolve(dotted)
        for klass in inspect.getmro(cls):  # type: ignore[arg-type]
            if not klass.__module__.startswith(("faust", "mode")):
                continue
            names.update(vars(klass))
            try:
                src = textwrap.dedent(inspect.getsource(klass))
            except (OSError, TypeError):
                continue
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    names.add(node.target.id)
    return frozenset(names)


def test_every_private_name_the_adapter_uses_exists_in_faust() -> None:
    tree = ast.parse(ADAPTER.read_text())
    used = _private_names_used(tree)
    faust_names = _faust_attrs()
    theirs = used - (_own_names(tree) - faust_names)
    missing = sorted(n for n in theirs if n not in faust_names)
    assert not missing, f"faust {faust.__version__} no longer has {missing}"
    # what this test guards: the adapter does rely on faust's private state
    assert {"_committed_offset", "_read_offset", "_acked", "_ensure_producer"} <= theirs


def test_the_adapter_is_the_only_module_touching_faust_privates() -> None:
    """Outside the adapter, no module of the distributed runtime reads a private name
    that faust defines on another object than its own ``self``."""
    faust_names = _faust_attrs()
    root = ADAPTER.parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path == ADAPTER:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr in faust_names
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            ):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}: {node.attr}")
            elif (  # getattr(consumer, "_committed_offset", ...)
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in faust_names
                and str(node.args[1].value).startswith("_")
            ):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}: {node.args[1].value}")
    assert not offenders, offenders
