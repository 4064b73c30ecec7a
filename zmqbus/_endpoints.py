"""Turning user-given addresses into zmq endpoints."""

from __future__ import annotations

__all__ = ["bind_endpoint", "connect_endpoint"]

_SCHEMES = ("tcp://", "ipc://", "inproc://")


def _check_port(text: str, original: str) -> None:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"not a valid port in address {original!r}")


def _split_host_port(text: str) -> tuple[str, str] | None:
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(f"unsupported transport {scheme!r} in {text!r}: use tcp, ipc or inproc")
    host, sep, port = text.rpartition(":")
    if sep and host and "/" not in host:
        return host, port
    return None


def bind_endpoint(bind: object) -> str:
    """Endpoint for a broker to bind: ``tcp://host:port``, ``ipc://``, ``inproc://``,
    a bare port (``"9090"`` -> ``tcp://127.0.0.1:9090``) or ``host:port``."""
    if isinstance(bind, int) and not isinstance(bind, bool):
        bind = str(bind)
    if not isinstance(bind, str):
        raise TypeError(f"bind address must be str, not {type(bind).__name__}")
    if bind.startswith(_SCHEMES):
        if bind.startswith("tcp://"):
            _check_port(bind.rpartition(":")[2], bind)
        return bind
    if bind.isdigit():
        _check_port(bind, bind)
        return f"tcp://127.0.0.1:{bind}"
    split = _split_host_port(bind)
    if split is not None:
        _check_port(split[1], bind)
        return f"tcp://{bind}"
    raise ValueError(f"cannot bind to {bind!r}: use tcp://host:port, inproc://name or a port")


def connect_endpoint(address: object) -> str:
    """Endpoint for a bus to connect: a zmq endpoint, or ``host:port`` over tcp."""
    if not isinstance(address, str):
        raise TypeError(f"address must be str, not {type(address).__name__}")
    if address.startswith(_SCHEMES):
        if address.startswith("tcp://"):
            _check_port(address.rpartition(":")[2], address)
            if address.endswith(":0"):
                raise ValueError(f"cannot connect to port 0: {address!r}")
        return address
    split = _split_host_port(address)
    if split is not None:
        _check_port(split[1], address)
        return f"tcp://{address}"
    raise ValueError(f"cannot connect to {address!r}: use tcp://host:port or host:port")
