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
    "_streams",
    "store",
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
    # A package (store/) is the union of its modules, whose relative imports
    # start one level deeper.
    package = ROOT / module
    files = sorted(package.glob("*.py")) if package.is_dir() else [ROOT / f"{module}.py"]
    names: set[str] = set()
    for file in files:
        bases = {1: f"zmqbus.{module}.", 2: "zmqbus."} if package.is_dir() else {1: "zmqbus."}
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: `from .x import y` or `from . import x`
                    base = bases[node.level]
                    if node.module:
                        names.add(base + node.module)
                    else:
                        names.update(base + a.name for a in node.names)
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
