"""The broker's configuration file (TOML): ``zmqbus broker --config FILE``.

::

    bind = "tcp://0.0.0.0:9090"
    secret_key = "certs/broker.key_secret"   # CURVE on; paths are from this file's folder
    max_message_size = 1048576

    [limits]                                  # any field of zmqbus.Limits
    max_peers = 10000

    [[users]]                                 # any field of zmqbus.User
    name = "billing"
    public_key = "certs/billing.key"          # or the Z85 text
    publish = ["orders.>"]
    subscribe = ["orders.created", "billing.*"]

Every key is checked: an unknown one, or a value of the wrong type, is a
``ValueError`` naming it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .limits import Limits
from .users import User

__all__ = ["BrokerConfig", "load_config"]

_TOP = {
    "bind",
    "secret_key",
    "max_message_size",
    "hwm",
    "limits",
    "users",
    "data_dir",
    "sync",
    "metrics",
    "metrics_per_channel",
}
_USER_FIELDS = {f.name for f in dataclasses.fields(User) if f.init and not f.name.startswith("_")}
_LIMIT_FIELDS = {f.name for f in dataclasses.fields(Limits)}


@dataclass
class BrokerConfig:
    """What a configuration file sets (None: not set there)."""

    bind: str | None = None
    secret_key: Path | None = None
    max_message_size: int | None = None
    hwm: int | None = None
    limits: dict[str, int] = field(default_factory=dict)
    users: list[User] | None = None
    data_dir: Path | None = None
    sync: str | None = None
    metrics: str | None = None
    metrics_per_channel: bool = False


def _path(value: object, base: Path, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a file path (a string)")
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
    return value


def _user(entry: object, base: Path, index: int) -> User:
    what = f"users[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{what} must be a table")
    unknown = set(entry) - _USER_FIELDS
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {sorted(unknown)}")
    fields: dict[str, Any] = dict(entry)
    key = fields.get("public_key")
    if isinstance(key, str) and len(key) != 40:  # not Z85 text: a certificate file
        fields["public_key"] = _path(key, base, f"{what}.public_key")
    try:
        return User(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: {exc}") from None


def load_config(path: str | os.PathLike[str]) -> BrokerConfig:
    """Read and check the broker configuration file at ``path``."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {file}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{file} is not valid TOML: {exc}") from None
    unknown = set(data) - _TOP
    if unknown:
        raise ValueError(f"{file}: unknown key(s) {sorted(unknown)}")
    base = file.parent
    config = BrokerConfig()
    if "bind" in data:
        if not isinstance(data["bind"], str):
            raise ValueError(f"{file}: bind must be a string")
        config.bind = data["bind"]
    if "secret_key" in data:
        config.secret_key = _path(data["secret_key"], base, "secret_key")
    if "data_dir" in data:
        config.data_dir = _path(data["data_dir"], base, "data_dir")
    if "metrics" in data:
        if not isinstance(data["metrics"], str):
            raise ValueError(f"{file}: metrics must be a string, HOST:PORT")
        config.metrics = data["metrics"]
    if "metrics_per_channel" in data:
        if not isinstance(data["metrics_per_channel"], bool):
            raise ValueError(f"{file}: metrics_per_channel must be true or false")
        config.metrics_per_channel = data["metrics_per_channel"]
    if "sync" in data:
        if data["sync"] not in ("normal", "full"):
            raise ValueError(f"{file}: sync must be 'normal' or 'full'")
        config.sync = data["sync"]
    if "max_message_size" in data:
        config.max_message_size = _int(data["max_message_size"], "max_message_size")
    if "hwm" in data:
        config.hwm = _int(data["hwm"], "hwm")
    limits = data.get("limits", {})
    if not isinstance(limits, dict):
        raise ValueError(f"{file}: [limits] must be a table")
    unknown = set(limits) - _LIMIT_FIELDS
    if unknown:
        raise ValueError(f"{file}: unknown limit(s) {sorted(unknown)}")
    config.limits = {name: _int(value, f"limits.{name}") for name, value in limits.items()}
    if "users" in data:
        users = data["users"]
        if not isinstance(users, list):
            raise ValueError(f"{file}: users must be an array of tables ([[users]])")
        config.users = [_user(entry, base, i) for i, entry in enumerate(users)]
    return config
