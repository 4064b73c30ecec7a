"""The broker's configuration file (TOML): ``zmqbus broker --config FILE``.

::

    bind = "tcp://0.0.0.0:9090"
    secret_key = "certs/broker.key_secret"   # CURVE on; paths are from this file's folder
    data_dir = "/var/lib/zmqbus"             # durable file streams (SQLite)
    sync = "normal"                          # or "full"
    max_message_size = 1048576
    hwm = 100000
    metrics = "127.0.0.1:9464"               # Prometheus; a bare port means 127.0.0.1
    metrics_per_channel = false
    log_level = "INFO"                       # DEBUG, INFO, WARNING, ERROR, CRITICAL
    log_format = "text"                      # or "json": one object per line

    [limits]                                  # any field of zmqbus.Limits
    max_peers = 10000

    [[users]]                                 # any field of zmqbus.User
    name = "billing"
    public_key = "certs/billing.key"          # or the Z85 text
    publish = ["orders.>"]
    subscribe = ["orders.created", "billing.*"]

Every key is checked: an unknown one, or a value of the wrong type or out of
range, is a ``ValueError`` naming the file and the key. ``dump_config`` writes
a (complete) configuration back as TOML that ``load_config`` reads.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._endpoints import bind_endpoint
from .limits import Limits
from .users import User

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_HWM",
    "MAX_MESSAGE_SIZE",
    "SYNC_MODES",
    "BrokerConfig",
    "dump_config",
    "load_config",
    "metrics_address",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
SYNC_MODES = ("normal", "full")
# The largest max_message_size a WELCOME can carry (a bus refuses a broker beyond it).
MAX_MESSAGE_SIZE = 0xFFFF_FFFF
# libzmq's high-water marks are C ints.
MAX_HWM = 0x7FFF_FFFF

_TOP = (
    "bind",
    "data_dir",
    "sync",
    "secret_key",
    "max_message_size",
    "hwm",
    "metrics",
    "metrics_per_channel",
    "log_level",
    "log_format",
    "limits",
    "users",
)
_USER_FIELDS = [f.name for f in dataclasses.fields(User) if f.init and not f.name.startswith("_")]
_LIMIT_FIELDS = [f.name for f in dataclasses.fields(Limits)]
_Z85_LEN = 40


@dataclass
class BrokerConfig:
    """What a configuration file sets (None: not set there); or, filled in by
    ``zmqbus broker``, what the broker runs with."""

    bind: str | None = None
    secret_key: Path | None = None
    max_message_size: int | None = None
    hwm: int | None = None
    limits: dict[str, int] = field(default_factory=dict)
    users: list[User] | None = None
    data_dir: Path | None = None
    sync: str | None = None
    metrics: str | None = None
    metrics_per_channel: bool | None = None
    log_level: str | None = None
    log_format: str | None = None


# --- checks -------------------------------------------------------------------------


def _unknown(keys: Iterable[str], known: Iterable[str], what: str) -> str | None:
    unknown = sorted(set(keys) - set(known))
    if not unknown:
        return None
    hints = [
        f"{close[0]!r} for {key!r}"
        for key in unknown
        if (close := difflib.get_close_matches(key, list(known), n=1))
    ]
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    return f"unknown {what}(s) {unknown}{hint}"


def _path(value: object, base: Path, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a file path (a non-empty string), not {value!r}")
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _int(value: object, what: str, maximum: int | None = None) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{what} must be at most {maximum}, not {value}")
    return value


def _choice(value: object, what: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
    text = value.upper() if upper and isinstance(value, str) else value
    if not isinstance(text, str) or text not in choices:
        names = " or ".join(map(repr, choices)) if len(choices) == 2 else ", ".join(choices)
        raise ValueError(f"{what} must be {names}, not {value!r}")
    return text


def metrics_address(value: object, what: str = "metrics") -> str:
    """``value`` checked as the metrics endpoint, ``host:port`` (``[::1]:port``
    for IPv6; port 0: any free one) or a bare port, which is the loopback's:
    returned as ``127.0.0.1:PORT``."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string 'host:port' or a port, not {value!r}")
    host, sep, port = value.strip().rpartition(":")
    if not port.isdigit() or int(port) > 65535 or (sep and not host.strip("[]")):
        raise ValueError(
            f"{what} must be 'host:port' (port 0: any free one) or a port, not {value!r}"
        )
    return value.strip() if sep else f"127.0.0.1:{int(port)}"


def _public_key(value: object, base: Path, what: str) -> str | Path:
    # Z85 text (40 characters, unless a file of that name exists), else a file.
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a key file path or Z85 text, not {value!r}")
    path = _path(value, base, what)
    return value if len(value) == _Z85_LEN and not path.is_file() else path


def _user(entry: object, base: Path, index: int) -> User:
    what = f"users[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{what} must be a table ([[users]]), not {entry!r}")
    unknown = _unknown(entry, _USER_FIELDS, "key")
    if unknown:
        raise ValueError(f"{what}: {unknown}")
    if "name" not in entry:
        raise ValueError(f"{what} needs a name")
    fields: dict[str, Any] = dict(entry)
    if "public_key" in fields:
        fields["public_key"] = _public_key(fields["public_key"], base, f"{what}.public_key")
    try:
        return User(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: {exc}") from None


def _users(value: object, base: Path) -> list[User]:
    if not isinstance(value, list):
        raise ValueError(f"users must be an array of tables ([[users]]), not {value!r}")
    users = [_user(entry, base, i) for i, entry in enumerate(value)]
    seen: set[str] = set()
    for i, user in enumerate(users):
        if user.name in seen:
            raise ValueError(f"users[{i}]: a second user named {user.name!r}")
        seen.add(user.name)
    return users


def _limits(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"limits must be a table ([limits]), not {value!r}")
    unknown = _unknown(value, _LIMIT_FIELDS, "limit")
    if unknown:
        raise ValueError(unknown)
    return {name: _int(number, f"limits.{name}") for name, number in value.items()}


def _check(data: dict[str, Any], base: Path) -> BrokerConfig:
    unknown = _unknown(data, _TOP, "key")
    if unknown:
        raise ValueError(unknown)
    config = BrokerConfig()
    if "bind" in data:
        bind = data["bind"]
        if not isinstance(bind, str) or not bind:
            raise ValueError(f"bind must be an address string (tcp://HOST:PORT), not {bind!r}")
        try:
            bind_endpoint(bind)
        except ValueError as exc:
            raise ValueError(f"bind: {exc}") from None
        config.bind = bind
    if "secret_key" in data:
        config.secret_key = _path(data["secret_key"], base, "secret_key")
    if "data_dir" in data:
        config.data_dir = _path(data["data_dir"], base, "data_dir")
    if "sync" in data:
        config.sync = _choice(data["sync"], "sync", SYNC_MODES)
    if "max_message_size" in data:
        config.max_message_size = _int(
            data["max_message_size"], "max_message_size", MAX_MESSAGE_SIZE
        )
    if "hwm" in data:
        config.hwm = _int(data["hwm"], "hwm", MAX_HWM)
    if "metrics" in data:
        metrics_address(data["metrics"])
        config.metrics = data["metrics"]
    if "metrics_per_channel" in data:
        if not isinstance(data["metrics_per_channel"], bool):
            raise ValueError(
                f"metrics_per_channel must be true or false, not {data['metrics_per_channel']!r}"
            )
        config.metrics_per_channel = data["metrics_per_channel"]
    if "log_level" in data:
        config.log_level = _choice(data["log_level"], "log_level", LOG_LEVELS, upper=True)
    if "log_format" in data:
        config.log_format = _choice(data["log_format"], "log_format", LOG_FORMATS)
    if "limits" in data:
        config.limits = _limits(data["limits"])
    if "users" in data:
        config.users = _users(data["users"], base)
    return config


def load_config(path: str | os.PathLike[str]) -> BrokerConfig:
    """Read and check the broker configuration file at ``path``; relative paths
    in it are from its folder (returned absolute)."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file} is not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{file} is not valid TOML: {exc}") from None
    try:
        return _check(data, Path(os.path.abspath(file)).parent)
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from None


# --- writing ------------------------------------------------------------------------


def _toml_str(text: str) -> str:
    # A TOML basic string: JSON's escapes are TOML's, but for DEL.
    return json.dumps(text, ensure_ascii=True).replace("\x7f", "\\u007f")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, os.PathLike):
        return _toml_str(os.fspath(value))
    if isinstance(value, Iterable):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _key_text(key: object) -> object:
    # A public key as a config file gives it: a path, or its Z85 text.
    if isinstance(key, bytes | bytearray):
        from zmq.utils import z85

        return (bytes(key) if len(key) == _Z85_LEN else z85.encode(bytes(key))).decode("ascii")
    return key


_UNSET = {
    "data_dir": "not set: durable streams in memory only",
    "secret_key": "not set: no CURVE; every peer is the user 'anonymous'",
    "metrics": "not set: no Prometheus endpoint",
}


def dump_config(config: BrokerConfig) -> str:
    """``config`` as TOML that ``load_config`` reads back to the same settings:
    the secret key as its file path (a ``Path``, never key material), users'
    public keys as their file paths or Z85 text. Keys not set are comments."""
    lines: list[str] = []
    for key in _TOP:
        if key in ("limits", "users"):
            continue
        value = getattr(config, key)
        if key == "secret_key" and value is not None and not isinstance(value, os.PathLike):
            raise TypeError("secret_key must be a file path: key material is never written")
        if value is None:
            lines.append(f"# {key} is {_UNSET.get(key, 'not set')}")
        else:
            lines.append(f"{key} = {_toml(value)}")
    if config.users == []:
        lines.append("users = []")
    if config.limits:
        lines += ["", "[limits]"]
        lines += [f"{name} = {_toml(value)}" for name, value in config.limits.items()]
    for user in config.users or ():
        lines += ["", "[[users]]"]
        for name in _USER_FIELDS:
            value = getattr(user, name)
            if name == "public_key":
                value = _key_text(value)
            if value is not None:
                lines.append(f"{name} = {_toml(value)}")
    return "\n".join(lines) + "\n"
