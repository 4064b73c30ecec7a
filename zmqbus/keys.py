"""CURVE keys: read them in any form a user gives, write new pairs.

A key is 32 octets; zmqbus passes it on as its 40-character Z85 text, the form
``zmq.curve_keypair()`` returns. Certificate files are pyzmq's ``zmq.auth``
format: ``NAME.key`` holds the public key, ``NAME.key_secret`` both.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

__all__ = ["KeyPair", "keygen", "load_keypair", "load_public_key", "load_secret_key"]

KeyPair = tuple[bytes, bytes]  # (public, secret), Z85

_Z85_LEN = 40


def _z85(value: bytes | str, what: str) -> bytes | None:
    # Z85 text, or 32 raw octets (encoded); None if ``value`` is neither.
    if isinstance(value, str) and os.path.isfile(value):
        return None  # a key file whose path is 40 characters long, not key text
    raw = value.encode("ascii", "replace") if isinstance(value, str) else bytes(value)
    if len(raw) == _Z85_LEN:
        try:
            if len(z85.decode(raw)) == 32:
                return raw
        except (ValueError, KeyError, IndexError):
            raise ValueError(f"{what} is not valid Z85 text") from None
    if len(raw) == 32 and not isinstance(value, str):
        return z85.encode(raw)
    return None


def _certificate(path: str | os.PathLike[str], what: str) -> tuple[bytes, bytes | None]:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{what}: no key file at {str(file)!r}")
    try:
        public, secret = zmq.auth.load_certificate(file)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{what}: {file} is not a zmq.auth certificate: {exc}") from None
    if public is None:
        raise ValueError(f"{what}: {file} holds no public key")
    return public, secret


def load_public_key(value: bytes | str | os.PathLike[str], what: str = "public key") -> bytes:
    """The Z85 text of a public key given as Z85 text, 32 raw octets, or a
    certificate file path. ``ValueError`` (``TypeError``) if it is none."""
    if not isinstance(value, bytes | bytearray | str | os.PathLike):
        raise TypeError(f"{what} must be Z85 text, 32 bytes or a key file path")
    if not isinstance(value, os.PathLike):
        key = _z85(value, what)
        if key is not None:
            return key
        if isinstance(value, bytes | bytearray):
            raise ValueError(f"{what} must be 40 characters of Z85 or 32 bytes")
    return _certificate(value, what)[0]


def load_secret_key(value: bytes | str | os.PathLike[str], what: str = "secret key") -> bytes:
    """The Z85 text of a secret key given as Z85 text, 32 raw octets, or a
    secret certificate file path (``NAME.key_secret``)."""
    return load_keypair(value, what)[1]


def load_keypair(
    value: tuple[bytes | str, bytes | str] | bytes | str | os.PathLike[str],
    what: str = "key",
) -> KeyPair:
    """(public, secret) as Z85 text, from a pair of keys, a secret key alone
    (its public key derived), or a secret certificate file path."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"{what} must be a (public, secret) pair")
        public = load_public_key(value[0], f"{what} (public)")
        secret = _z85(value[1], f"{what} (secret)")
        if secret is None:
            raise ValueError(f"{what} (secret) must be 40 characters of Z85 or 32 bytes")
        if zmq.curve_public(secret) != public:
            raise ValueError(f"{what}: the public key is not the secret key's")
        return public, secret
    if not isinstance(value, bytes | bytearray | str | os.PathLike):
        raise TypeError(f"{what} must be a (public, secret) pair, a secret key or a key file path")
    if not isinstance(value, os.PathLike):
        secret = _z85(value, what)
        if secret is not None:
            return zmq.curve_public(secret), secret
        if isinstance(value, bytes | bytearray):
            raise ValueError(f"{what} must be 40 characters of Z85 or 32 bytes")
    public, secret = _certificate(value, what)
    if secret is None:
        raise ValueError(f"{what}: {value} holds no secret key (use NAME.key_secret)")
    return public, secret


def keygen(name: str, directory: str | os.PathLike[str] = ".") -> tuple[Path, Path]:
    """Write a new key pair as ``DIRECTORY/NAME.key`` (public) and
    ``NAME.key_secret`` (both, readable by the owner only); return their paths."""
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ValueError(f"not a file name: {name!r}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = (Path(f) for f in zmq.auth.create_certificates(folder, name))
    secret.chmod(0o600)
    return public, secret
