"""Fast paths that lean on other libraries' private details, in one place.

Each is checked when this module is imported and replaced by its public
equivalent if the check fails, or for all of them when the environment sets
``ZMQBUS_PURE=1`` (CI runs the whole suite once that way). ``ACTIVE`` says
which are in use. This module imports no socket library: pyzmq is passed in
by the modules that own sockets, so protocol code can use it too.

- pyzmq: the Cython backend's unbound ``Socket.send``/``Socket.get`` skip the
  Python wrapper's routing-id handling and flag conversions (as much again as
  the send itself on the hot path).
- uuid: a ``UUID`` built from its 128-bit int without ``UUID.__init__``'s
  argument parsing (a third of the cost of an id on the receive path).
- dataclasses: a frozen dataclass filled through its instance ``__dict__``
  instead of ``object.__setattr__`` per field (more than the rest of the
  receive path's Python code together).

Apart from these, ``compiled()`` gives the compiled twin of the hot paths
(``zmqbus._speedups``, built from ``_speedups.pyx`` by ``pip install`` where a
C compiler is found), or None: not built, older than its source, or
``ZMQBUS_PURE_PYTHON=1``. ``ZMQBUS_PURE=1`` turns both off: the public
fallbacks above and the pure twins.
"""

from __future__ import annotations

import importlib
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "ACTIVE",
    "PURE",
    "PURE_PYTHON",
    "PURE_TWINS",
    "compiled",
    "dict_writes_work",
    "implementation",
    "socket_calls",
    "twin",
    "uuid_from_bytes",
]

log = logging.getLogger("zmqbus.fastpath")


def _set_in_env(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


# Every private-API fast path off (and the compiled twins): the strictest run.
PURE = _set_in_env("ZMQBUS_PURE")
# The compiled twins off, the pure-Python fast paths on: a machine without a
# C compiler, as fast as Python alone goes.
PURE_PYTHON = PURE or _set_in_env("ZMQBUS_PURE_PYTHON")

# Which fast paths are in use (False: the public fallback), for tests and reports.
ACTIVE: dict[str, bool] = {}

_new = object.__new__
_set = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


def _uuid_fast(raw: bytes) -> uuid.UUID:
    u = _new(uuid.UUID)
    _set(u, "int", int.from_bytes(raw, "big"))
    _set(u, "is_safe", _SAFE_UNKNOWN)
    return u


def _uuid_public(raw: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=raw)


def _uuid_fast_works() -> bool:
    try:
        for raw in (bytes(16), b"\xff" * 16, os.urandom(16)):
            a, b = _uuid_fast(raw), uuid.UUID(bytes=raw)
            if (a, hash(a), str(a), a.bytes, a.is_safe) != (b, hash(b), str(b), raw, b.is_safe):
                return False
    except Exception:
        return False
    return True


ACTIVE["uuid"] = not PURE and _uuid_fast_works()
uuid_from_bytes: Callable[[bytes], uuid.UUID] = _uuid_fast if ACTIVE["uuid"] else _uuid_public
uuid_from_bytes.__doc__ = "``uuid.UUID(bytes=raw)`` for 16 bytes: the same value, cheaper."


def dict_writes_work(cls: type, **fields: Any) -> bool:
    """Whether an instance of ``cls`` (a frozen dataclass) made by
    ``object.__new__`` and filled through its ``__dict__`` reads back every
    field in ``fields`` (names and sample values); always False when pure."""
    ok = False
    if not PURE:
        try:
            obj: Any = _new(cls)
            obj.__dict__.update(fields)
            ok = all(getattr(obj, name) is value for name, value in fields.items())
        except Exception:
            ok = False
    ACTIVE[f"dict_writes:{cls.__name__}"] = ok
    return ok


SocketSend = Callable[[Any, bytes, int], Any]
SocketGet = Callable[[Any, int], Any]


def socket_calls(zmq: Any) -> tuple[SocketSend, SocketGet]:
    """``(send, get)`` for sockets of the pyzmq module ``zmq``, called as
    ``send(sock, data, flags)`` and ``get(sock, option)``: the backend's
    unbound methods if pyzmq still layers its ``Socket`` on them, else the
    public ``Socket.send`` and ``Socket.getsockopt``."""
    backend = getattr(getattr(zmq, "backend", None), "Socket", None)
    fast = (
        not PURE
        and isinstance(backend, type)
        and issubclass(zmq.Socket, backend)
        and callable(getattr(backend, "send", None))
        and callable(getattr(backend, "get", None))
    )
    ACTIVE["zmq_backend"] = fast
    if fast:
        return backend.send, backend.get  # type: ignore[union-attr]
    return zmq.Socket.send, zmq.Socket.getsockopt


_UNSET: Any = object()
_compiled: Any = _UNSET


def _load_compiled() -> Any:
    if PURE_PYTHON:
        return None
    try:
        module = importlib.import_module("zmqbus._speedups")
    except ImportError:
        return None
    built = getattr(module, "__file__", None)
    source = os.path.join(os.path.dirname(__file__), "_speedups.pyx")
    if built and os.path.exists(source) and os.path.getmtime(source) > os.path.getmtime(built):
        # An editable install whose .pyx changed since the build: the build is
        # stale, and may not match the pure code it must equal.
        log.warning("zmqbus._speedups is older than _speedups.pyx: rebuild it; pure Python used")
        return None
    return module


def compiled() -> Any:
    """The compiled module ``zmqbus._speedups``, or None (see the module)."""
    global _compiled
    if _compiled is _UNSET:
        _compiled = _load_compiled()
        ACTIVE["compiled"] = _compiled is not None
    return _compiled


def implementation() -> str:
    """Which twin of the hot paths is in use: ``"compiled"`` or ``"pure"``."""
    return "compiled" if compiled() is not None else "pure"


F = TypeVar("F", bound=Callable[..., Any])

# Every pure function that has a compiled twin, by name: the reference the
# twin must equal (tests/test_speedups.py), and what it hands odd input to.
PURE_TWINS: dict[str, Callable[..., Any]] = {}


def twin(pure: F) -> F:
    """``pure``'s compiled twin of the same name if the compiled module is in
    use, else ``pure`` itself; ``pure`` is kept in ``PURE_TWINS``."""
    PURE_TWINS[pure.__name__] = pure
    module = compiled()
    fast: F | None = getattr(module, pure.__name__, None) if module is not None else None
    return fast if fast is not None else pure
