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
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["ACTIVE", "PURE", "dict_writes_work", "socket_calls", "uuid_from_bytes"]

PURE = os.environ.get("ZMQBUS_PURE", "") not in ("", "0")

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
