"""The layering the project holds to: protocol, routing and client core are sans-IO."""

from __future__ import annotations

import ast
import pathlib

import pytest

import zmqbus

ROOT = pathlib.Path(zmqbus.__file__).parent
SANS_IO = {
    "_batching",
    "_channel",
    "_connection",
    "_connections",
    "users",
    "_deadlines",
    "_fastpath",
    "_groups",
    "_peer",
    "_rates",
    "limits",
    "_pending",
    "_subscriptions",
    "protocol",
    "topics",
    "_routing",
    "_client",
    "errors",
    "message",
    "_validate",
    "_version",
}


def _imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from .x import y` or `from . import x`
                if node.module:
                    names.add("zmqbus." + node.module)
                else:
                    names.update("zmqbus." + a.name for a in node.names)
            elif node.module:
                names.add(node.module)
    return names


@pytest.mark.parametrize("module", sorted(SANS_IO))
def test_sans_io_modules_touch_no_socket(module: str) -> None:
    imports = _imports(module)
    assert not {n for n in imports if n.split(".")[0] in ("zmq", "socket", "asyncio", "selectors")}
    internal = {n.split(".")[1] for n in imports if n.startswith("zmqbus.")}
    assert internal <= SANS_IO, internal - SANS_IO


def test_library_never_prints() -> None:
    offenders = [
        p.name
        for p in ROOT.glob("*.py")
        if p.name not in ("cli.py", "__main__.py") and "print(" in p.read_text()
    ]
    assert offenders == []
