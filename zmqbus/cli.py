"""The ``zmqbus`` command: run a broker, publish, subscribe, manage durable
streams and their consumers, or see a demo.

This is the one module of the package that prints and configures logging.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, NoReturn

import zmq

from ._endpoints import bind_endpoint
from ._logfmt import handler as _log_handler
from ._version import __version__
from .broker import DEFAULT_BIND, Broker
from .bus import Bus, Consumer
from .config import (
    LOG_FORMATS,
    MAX_HWM,
    MAX_MESSAGE_SIZE,
    SYNC_MODES,
    BrokerConfig,
    dump_config,
    load_config,
    metrics_address,
)
from .errors import (
    AuthenticationError,
    ConnectTimeout,
    ConsumerNotFound,
    HandlerError,
    MessageTooLarge,
    PublishTimeout,
    RequestTimeout,
    StreamError,
    StreamExists,
    StreamNotFound,
    SubscriptionClosed,
    ZmqbusError,
)
from .keys import keygen, load_keypair, load_public_key
from .limits import Limits
from .message import Message, PublishResult
from .store import StoreError
from .streams import ConsumerInfo, StreamInfo, check_name
from .topics import validate_pattern, validate_topic
from .users import ANONYMOUS

__all__ = ["main"]

log = logging.getLogger("zmqbus.cli")

# Exit codes, one meaning each across subcommands.
EXIT_OK = 0
EXIT_FAILED = 1  # a handler raised (pub), the broker could not bind, another runtime error
EXIT_USAGE = 2  # bad input: arguments, UUID, header, topic or pattern, message too large
EXIT_UNREACHABLE = 3  # the broker did not answer the handshake within --connect-timeout
EXIT_TIMEOUT = 4  # sub, consumer next: --count not reached in time; pub: not confirmed in time
EXIT_NOT_FOUND = 5  # stream, consumer: no such stream, consumer or stored message
EXIT_CONFLICT = 6  # stream add, consumer add: the name exists with another config, or overlaps

DEFAULT_ADDRESS = DEFAULT_BIND
ENV_ADDRESS = "ZMQBUS_ADDRESS"
ENV_CHANNEL = "ZMQBUS_CHANNEL"

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter

_LIMIT_HELP = {
    "max_peers": "joined peers at once; HELLO beyond gets 503",
    "max_connections": "open connections; past it the oldest unjoined are closed",
    "hello_timeout_seconds": "how long a connection may stay open without a joined peer",
    "max_channels": "channels at once; a HELLO opening one more gets 503",
    "max_subscriptions_per_peer": "open subscriptions of one peer; SUBSCRIBE beyond gets 429",
    "max_subscriptions_per_channel": "open subscriptions of one channel; 429 beyond",
    "max_pattern_tokens": "tokens of one SUBSCRIBE pattern; 429 beyond",
    "max_pending_per_peer": "unACKed confirmed deliveries of one peer; the oldest expires",
    "topic_cache_bytes": "bytes of the topic-to-targets caches, all channels",
    "stats_per_second": "STATS one connection may ask per second; 429 beyond",
    "max_queued_bytes": "bytes queued to (or from) one peer; sets the high-water marks",
    "idle_probe_seconds": "silence after which a peer without heartbeats is probed",
    "max_streams": "durable streams at once; a stream add beyond gets 429",
    "max_consumers": "consumers of one stream; 429 beyond",
    "max_ack_pending": "the most unacknowledged deliveries a consumer may ask for",
}

_STREAM_WAIT = 5.0  # seconds the broker has to answer a stream or consumer command

_LIMIT_UNITS = frozenset(f"[--{name.replace('_', '-')} N]" for name in _LIMIT_HELP)

_EPILOG = f"""\
exit codes:
  {EXIT_OK}  success (sub: --count reached, or --timeout without --count, or Ctrl-C;
     broker: stopped by SIGINT or SIGTERM)
  {EXIT_FAILED}  pub: a subscriber's handler raised (errors on stderr);
     broker: could not bind; any other runtime failure
  {EXIT_USAGE}  bad input: arguments, channel UUID, header, topic or pattern, message too large
  {EXIT_UNREACHABLE}  the broker did not answer within --connect-timeout
  {EXIT_TIMEOUT}  timed out: sub or consumer next got fewer than --count messages within
     --timeout; pub was not confirmed by every subscriber within --timeout;
     the broker did not answer a stream or consumer command within {_STREAM_WAIT:g}s
  {EXIT_NOT_FOUND}  stream, consumer: no such stream, consumer, or message (stream get)
  {EXIT_CONFLICT}  stream add, consumer add: the name exists with another config, or it
     overlaps: the subjects another stream's, the filter (on a work_queue
     stream) another consumer's

environment:
  {ENV_ADDRESS}  default for --address, and for broker --bind (else {DEFAULT_ADDRESS})
  {ENV_CHANNEL}  default for --channel
"""


class _UsageError(Exception):
    """Bad input found after argument parsing (exit 2)."""


# --- argument types ---------------------------------------------------------------


def _arg_uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def _arg_topic(text: str) -> str:
    try:
        return validate_topic(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _arg_pattern(text: str) -> str:
    try:
        return validate_pattern(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _arg_header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"header must be KEY=VALUE with a non-empty KEY: {text!r}")
    return key, value


def _arg_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _arg_seconds_or_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number of seconds: {text!r}")
    return value


def _arg_name(text: str) -> str:
    try:
        return check_name(text, "name")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _arg_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _arg_log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise argparse.ArgumentTypeError(f"not a log level: {text!r}")
    return level


# --- parser -----------------------------------------------------------------------


def _log_level_parent(default: str) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--log-level",
        type=_arg_log_level,
        default=default,
        metavar="LEVEL",
        help=f"DEBUG, INFO, WARNING, ERROR or CRITICAL (default {default})",
    )
    parent.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        metavar="FORMAT",
        help="text, or json: one JSON object per line with ts, level, logger, message "
        "and exc_info (default text)",
    )
    return parent


def _client_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    env_channel = os.environ.get(ENV_CHANNEL)
    parent.add_argument(
        "--channel",
        type=_arg_uuid,
        default=env_channel,  # a str default goes through type= too
        required=not env_channel,
        metavar="UUID",
        help=f"channel ID (a UUID); default ${ENV_CHANNEL}",
    )
    _add_address(parent)
    _add_keys(parent)
    parent.add_argument(
        "--connect-timeout",
        type=_arg_seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for the broker's handshake (default 5)",
    )
    return parent


def _add_keys(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server-key",
        metavar="FILE",
        help="the broker's CURVE public key (its NAME.key file, or Z85 text), for a broker "
        "with authentication",
    )
    parser.add_argument(
        "--key",
        metavar="FILE",
        help="this client's CURVE secret key file (NAME.key_secret, from zmqbus keygen)",
    )


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=os.environ.get(ENV_ADDRESS, DEFAULT_ADDRESS),
        metavar="ADDR",
        help=f"broker endpoint (default ${ENV_ADDRESS} or {DEFAULT_ADDRESS})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``zmqbus`` command."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="zmqbus",
        description="A pub/sub message bus on ZeroMQ and msgpack.",
        epilog=_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"zmqbus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    client = _client_parent()
    quiet = _log_level_parent("WARNING")

    p = sub.add_parser(
        "broker",
        parents=[_log_level_parent("INFO")],
        help="run a broker in the foreground",
        description="Run a broker in the foreground until SIGINT (Ctrl-C) or SIGTERM.",
        epilog=_EPILOG,
        formatter_class=fmt,
    )
    # Options default to None: a flag given wins over the config file, which
    # wins over the defaults (see _effective_config).
    p.set_defaults(log_level=None, log_format=None)
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML file of these options, the secret key and the users (see README: Security)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the configuration the broker would run with (flags over --config over "
        "defaults) as TOML and exit, binding nothing; the secret key as its file's path",
    )
    p.add_argument(
        "--bind",
        metavar="ADDR",
        help=f"endpoint to bind; port 0 picks a free port (default ${ENV_ADDRESS} or "
        f"{DEFAULT_BIND})",
    )
    p.add_argument(
        "--secret-key",
        metavar="FILE",
        help="the broker's CURVE secret key file (zmqbus keygen): encryption on, and only "
        "the config file's users admitted",
    )
    p.add_argument(
        "--max-message-size",
        type=_arg_positive_int,
        metavar="N",
        help="largest encoded message body in bytes (default 1048576)",
    )
    p.add_argument(
        "--hwm",
        type=_arg_positive_int,
        metavar="N",
        help="messages queued to one peer before the broker drops for it (default 100000; "
        "see README: Limits)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where durable file streams live (SQLite); without it, memory streams only",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (pip install "
        "'zmqbus[metrics]'; a bare PORT means 127.0.0.1)",
    )
    p.add_argument(
        "--metrics-per-channel",
        action=argparse.BooleanOptionalAction,
        help="label peers and subscriptions by channel too (unbounded: channels are many)",
    )
    p.add_argument(
        "--sync",
        choices=SYNC_MODES,
        help="full: stream commits survive power loss too, at their cost (default normal: "
        "they survive the broker process dying)",
    )
    limits = p.add_argument_group("limits (see README: Limits)")
    for name, default in Limits().as_dict().items():
        limits.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=_arg_positive_int,
            metavar="N",
            help=f"{_LIMIT_HELP[name]} (default {default})",
        )
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser(
        "keygen",
        parents=[quiet],
        help="write a CURVE key pair",
        description="Write a new CURVE key pair: DIR/NAME.key (the public key, to share) and "
        "DIR/NAME.key_secret (both keys, readable by its owner only).",
        epilog=_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("name", metavar="NAME", help="e.g. broker, or a user's name")
    p.add_argument("--dir", default=".", metavar="DIR", help="folder to write to (default .)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser(
        "pub",
        parents=[client, quiet],
        help="publish one message",
        description="Publish one message and print what it reached.",
        epilog=_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("topic", type=_arg_topic, metavar="TOPIC", help="e.g. orders.created")
    p.add_argument("data", metavar="DATA", help="payload text, or - to read bytes from stdin")
    p.add_argument(
        "--header",
        type=_arg_header,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a message header; repeat for more",
    )
    p.add_argument(
        "--no-confirm",
        action="store_true",
        help="fire and forget: do not wait for subscribers to confirm",
    )
    p.add_argument(
        "--timeout",
        type=_arg_seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for confirmation (default 5)",
    )
    p.set_defaults(func=cmd_pub)

    p = sub.add_parser(
        "sub",
        parents=[client, quiet],
        help="print messages matching a pattern",
        description=(
            "Subscribe and print one line per message: TOPIC HEADERS-JSON PAYLOAD.\n"
            "The payload is decoded as UTF-8, undecodable bytes as \\xNN, control\n"
            "characters escaped; --json gives the exact bytes (base64). Once the\n"
            "broker has confirmed the subscription, 'subscribed to PATTERN ...' is\n"
            "written to stderr; with --background the command returns then, so a\n"
            "script can publish on the next line."
        ),
        epilog=_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("pattern", type=_arg_pattern, metavar="PATTERN", help="e.g. orders.* or audit.>")
    p.add_argument("--count", type=_arg_positive_int, metavar="N", help="exit after N messages")
    p.add_argument(
        "--timeout",
        type=_arg_seconds,
        metavar="S",
        help="exit after S seconds (exit code 4 if --count was not reached)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line: id, topic, headers, timestamp, payload (base64)",
    )
    p.add_argument(
        "--buffer",
        type=_arg_positive_int,
        default=10_000,
        metavar="N",
        help="messages buffered before new ones are dropped (default 10000)",
    )
    p.add_argument(
        "--background",
        action="store_true",
        help="return once the broker holds the subscription (exit 0; on failure before "
        "that, its exit code) and go on in a child process",
    )
    p.set_defaults(func=cmd_sub)

    _add_stream_commands(sub, [client, quiet])
    _add_consumer_commands(sub, [client, quiet])

    p = sub.add_parser(
        "demo",
        parents=[quiet],
        help="a tour in one process: broker, buses, wildcards, errors, latency",
        description="Run an embedded broker and buses in this process and show the features.",
        formatter_class=fmt,
    )
    p.add_argument(
        "--count",
        type=_arg_positive_int,
        default=2000,
        metavar="N",
        help="confirmed round trips for the latency summary (default 2000)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "bench",
        parents=[quiet],
        help="measure publish latency and throughput in one process",
        description="Run an embedded broker and two buses in this process and measure "
        "confirmed round trips (latency) and fire-and-forget publishes (throughput), with a "
        "progress bar on a terminal.",
        formatter_class=fmt,
    )
    p.add_argument(
        "--count",
        type=_arg_positive_int,
        default=5000,
        metavar="N",
        help="messages per measurement (default 5000)",
    )
    p.add_argument(
        "--size",
        type=_arg_positive_int,
        default=64,
        metavar="BYTES",
        help="payload size (default 64)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "stats",
        help="print a broker's counters as JSON",
        description="Ask a running broker for its statistics (the STATS command) and print "
        "them as JSON: peers, channels, subscriptions, queue groups, message counters, "
        "drops and errors by code.",
        formatter_class=fmt,
    )
    _add_address(p)
    _add_keys(p)
    p.add_argument(
        "--timeout",
        type=_arg_seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for the answer (default 5); then exit 3",
    )
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "top",
        help="a live view of a broker: rates, channels, peers, slow consumers, refusals",
        description=(
            "Show a broker's STATS full screen, refreshed every --interval: message\n"
            "rates (from counter deltas), peers, channels, subscriptions, connections,\n"
            "streams, slow consumers and refusals, and the busiest channels and peers\n"
            "(up to 20 each) with their messages in and out per second. Keys: s sorts\n"
            "the tables by the next column (in/s, out/s, dropped, dropped/s, name),\n"
            "q quits (Ctrl-C too). --once prints one frame as text, made of two\n"
            "snapshots --interval apart so that it has rates, and exits 0; output that\n"
            "is not a terminal gets a frame per interval. A broker that does not\n"
            f"answer, or refuses the key, exits {EXIT_UNREACHABLE}. Needs rich\n"
            "(pip install 'zmqbus[top]')."
        ),
        formatter_class=fmt,
    )
    _add_address(p)
    _add_keys(p)
    p.add_argument(
        "--timeout",
        type=_arg_seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for each answer (default 5); no first answer: exit 3",
    )
    p.add_argument(
        "--interval",
        type=_arg_seconds,
        default=1.0,
        metavar="S",
        help="seconds between refreshes (default 1)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="print one frame (two snapshots --interval apart, for the rates) and exit",
    )
    p.add_argument(
        "--sort",
        # As zmqbus.top.SORTS (not imported here: top needs rich); "peer" is
        # the first spelling of "name".
        type=lambda key: "name" if key == "peer" else key,
        choices=("in", "out", "dropped", "rate", "name"),
        default="in",
        help="first sort of the channel, peer and slow-consumer tables: messages in or out "
        "per second, messages dropped, dropped per second, or name (default in); a table "
        "without that column keeps its own order (channels: in/s; slow consumers: dropped)",
    )
    p.set_defaults(func=cmd_top)

    p = sub.add_parser(
        "version",
        help="print the versions of zmqbus and its dependencies",
        description="Print the versions of zmqbus, pyzmq, libzmq, msgpack and Python.",
    )
    p.set_defaults(func=cmd_version)
    # Set after the subcommands exist: argparse derives their prog from this usage.
    parser.usage = "\n       ".join(synopsis(sub.choices))
    return parser


def _group_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, what: str
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    """The ``zmqbus NAME`` command whose own commands manage ``what``."""
    p = sub.add_parser(
        name,
        help=f"manage durable {what}",
        description=f"Inspect and repair the durable {what} of a channel. Each command\n"
        f"takes the client options pub and sub take; see zmqbus {name} COMMAND --help.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return p, p.add_subparsers(dest="action", metavar="COMMAND", required=True)


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    parents: list[argparse.ArgumentParser],
    text: str,
    description: str,
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        parents=parents,
        help=text,
        description=description,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_json(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--json", action="store_true", help=text)


def _add_stream_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    top, commands = _group_parser(sub, "stream", "streams")
    p = _command(
        commands,
        "add",
        parents,
        "make a stream",
        "Make a stream that stores every message published on the channel whose topic\n"
        "matches one of --subjects, and print it as stream info does. The same add\n"
        f"again is no error; another config under the name exits {EXIT_CONFLICT}, as do subjects\n"
        "overlapping another stream's.",
    )
    p.add_argument("name", type=_arg_name, metavar="NAME", help="1 to 64 of A-Z a-z 0-9 _ -")
    p.add_argument(
        "--subjects",
        type=_arg_pattern,
        nargs="+",
        required=True,
        metavar="PAT",
        help="the topic patterns it stores, e.g. orders.>",
    )
    # Options not given default to None and are left out: the API's defaults hold.
    limits = (
        ("--max-msgs", "messages kept"),
        ("--max-bytes", "bytes kept (topics and bodies)"),
    )
    for flag, text in limits:
        p.add_argument(
            flag, type=_arg_positive_int, metavar="N", help=f"most {text} (default no limit)"
        )
    p.add_argument(
        "--max-age",
        type=_arg_seconds,
        metavar="S",
        help="seconds a message is kept (default no limit)",
    )
    p.add_argument(
        "--max-msg-size",
        type=_arg_positive_int,
        metavar="N",
        help="largest body stored, in bytes (default no limit but the broker's own)",
    )
    p.add_argument(
        "--discard",
        choices=("old", "new"),
        help="at a limit, drop the oldest message, or refuse the new one (default old)",
    )
    p.add_argument(
        "--retention",
        choices=("limits", "work_queue", "interest"),
        help="keep messages until a limit (limits, the default), until a consumer acks "
        "them (work_queue), or until every consumer has (interest)",
    )
    p.add_argument(
        "--storage",
        choices=("file", "memory"),
        help="file (the default; needs a broker with --data-dir) or memory",
    )
    p.add_argument(
        "--duplicate-window",
        type=_arg_seconds_or_zero,
        metavar="S",
        help="seconds a message id is remembered to drop retries (default 120; 0: off)",
    )
    _add_json(p, "print it as a JSON object")
    p.set_defaults(func=cmd_stream_add)

    p = _command(
        commands,
        "info",
        parents,
        "describe a stream",
        "Print a stream's state and config, one 'key: value' line each (--json: an\n"
        "object; times in seconds).",
    )
    p.add_argument("name", type=_arg_name, metavar="NAME", help="the stream")
    _add_json(p, "print it as a JSON object")
    p.set_defaults(func=cmd_stream_info)

    p = _command(
        commands,
        "ls",
        parents,
        "list the channel's streams",
        "Print one line per stream of the channel: its name, subjects, messages, bytes,\n"
        "first and last sequence, consumers and storage (--json: an array of what\n"
        "stream info --json prints).",
    )
    _add_json(p, "print a JSON array")
    p.set_defaults(func=cmd_stream_ls)

    p = _command(
        commands,
        "rm",
        parents,
        "delete a stream",
        "Delete a stream with its messages and its consumers.",
    )
    p.add_argument("name", type=_arg_name, metavar="NAME", help="the stream")
    p.set_defaults(func=cmd_stream_rm)

    p = _command(
        commands,
        "purge",
        parents,
        "remove every message of a stream",
        "Remove every message of a stream and print how many went; the stream, its\n"
        "consumers and its sequence numbers go on.",
    )
    p.add_argument("name", type=_arg_name, metavar="NAME", help="the stream")
    p.set_defaults(func=cmd_stream_purge)

    p = _command(
        commands,
        "get",
        parents,
        "print one stored message",
        "Print the message stored at SEQ as sub prints one: TOPIC HEADERS-JSON PAYLOAD,\n"
        "or with --json an object that also has stream and seq. Nothing is acked.",
    )
    p.add_argument("name", type=_arg_name, metavar="NAME", help="the stream")
    p.add_argument("seq", type=_arg_positive_int, metavar="SEQ", help="its sequence number")
    _add_json(p, "a JSON object: id, topic, headers, timestamp, payload (base64), stream, seq")
    p.set_defaults(func=cmd_stream_get)
    # Set after its commands exist: argparse derives their prog from this usage.
    top.usage = "\n       ".join(synopsis(commands.choices, prog="zmqbus stream"))


def _add_consumer_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    top, commands = _group_parser(sub, "consumer", "consumers of streams")
    p = _command(
        commands,
        "add",
        parents,
        "make a durable consumer",
        "Make a durable consumer of STREAM without binding it, and print it as consumer\n"
        "info does. The same add again is no error; another config under the name\n"
        f"exits {EXIT_CONFLICT}.",
    )
    p.add_argument("stream", type=_arg_name, metavar="STREAM", help="the stream it reads")
    p.add_argument("durable", type=_arg_name, metavar="DURABLE", help="the consumer's name")
    p.add_argument("--filter", type=_arg_pattern, metavar="PAT", help="only topics matching PAT")
    p.add_argument(
        "--deliver",
        choices=("all", "new", "last"),
        help="start at the oldest message (all, the default), after the newest (new), "
        "or at the newest (last)",
    )
    p.add_argument(
        "--start-seq", type=_arg_positive_int, metavar="N", help="start at sequence N instead"
    )
    p.add_argument(
        "--ack-wait",
        type=_arg_seconds,
        metavar="S",
        help="seconds before an unacked message is delivered again (default 30)",
    )
    p.add_argument(
        "--max-deliver",
        type=_arg_positive_int,
        metavar="N",
        help="deliveries of a message before it is dead (default no limit)",
    )
    p.add_argument(
        "--backoff",
        type=_arg_seconds_or_zero,
        nargs="+",
        metavar="S",
        help="seconds to wait, once --ack-wait ran out or on a nak, before the 2nd, 3rd... "
        "delivery, the last repeating (default none)",
    )
    p.add_argument(
        "--dead-letter",
        type=_arg_topic,
        metavar="TOPIC",
        help="publish a dead message (past --max-deliver) on TOPIC",
    )
    p.add_argument(
        "--max-ack-pending",
        type=_arg_positive_int,
        metavar="N",
        help="most messages delivered and not acked at once (default 1000)",
    )
    _add_json(p, "print it as a JSON object")
    p.set_defaults(func=cmd_consumer_add)

    p = _command(
        commands,
        "info",
        parents,
        "describe a consumer",
        "Print a durable consumer's state and config, one 'key: value' line each\n"
        "(--json: an object; times in seconds).",
    )
    p.add_argument("stream", type=_arg_name, metavar="STREAM", help="the stream")
    p.add_argument("durable", type=_arg_name, metavar="DURABLE", help="the consumer")
    _add_json(p, "print it as a JSON object")
    p.set_defaults(func=cmd_consumer_info)

    p = _command(
        commands,
        "ls",
        parents,
        "list a stream's consumers",
        "Print one line per consumer of STREAM: its name ((ephemeral) for one without),\n"
        "delivered, ack floor, pending, waiting (binds), redelivered and filter (--json:\n"
        "an array of what consumer info --json prints).",
    )
    p.add_argument("stream", type=_arg_name, metavar="STREAM", help="the stream")
    _add_json(p, "print a JSON array")
    p.set_defaults(func=cmd_consumer_ls)

    p = _command(
        commands,
        "rm",
        parents,
        "delete a durable consumer",
        "Delete a durable consumer and its position.",
    )
    p.add_argument("stream", type=_arg_name, metavar="STREAM", help="the stream")
    p.add_argument("durable", type=_arg_name, metavar="DURABLE", help="the consumer")
    p.set_defaults(func=cmd_consumer_rm)

    p = _command(
        commands,
        "next",
        parents,
        "take messages from a durable consumer",
        "Look the durable consumer up (as consumer info does), bind it as it is, take\n"
        "up to --count messages, print each as sub does (--json adds stream, seq and\n"
        "deliveries), ack each once printed (unless --no-ack), unbind and exit 0; exit 4\n"
        "if fewer than --count came within --timeout. What the bind holds unacked when\n"
        "it unbinds (with --no-ack, what it printed) is delivered again at once to the\n"
        "consumer's next bind. The broker sends a bind up to the consumer's\n"
        "max_ack_pending messages: those beyond --count go back too, each counted as a\n"
        "delivery (mind its max_deliver).",
    )
    p.add_argument("stream", type=_arg_name, metavar="STREAM", help="the stream")
    p.add_argument("durable", type=_arg_name, metavar="DURABLE", help="the consumer")
    p.add_argument(
        "--count",
        type=_arg_positive_int,
        default=1,
        metavar="N",
        help="messages to take (default 1)",
    )
    p.add_argument(
        "--timeout",
        type=_arg_seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for them (default 5; then exit 4)",
    )
    p.add_argument(
        "--no-ack",
        action="store_true",
        help="leave them unacked: the broker delivers them again",
    )
    _add_json(
        p,
        "one JSON object per line: id, topic, headers, timestamp, payload (base64), "
        "stream, seq, deliveries",
    )
    p.set_defaults(func=cmd_consumer_next)
    top.usage = "\n       ".join(synopsis(commands.choices, prog="zmqbus consumer"))


# A bracketed option (one nesting deep, as in [--backoff S [S ...]]), a required
# option with its value (and its repeats: --subjects PAT [PAT ...]), or one word.
_USAGE_UNIT = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]|-\S+ (?![-\[])\S+(?: \[\S+ \.\.\.\])?|\S+")


def _subcommands(parser: argparse.ArgumentParser) -> list[str] | None:
    """The names of ``parser``'s own commands, None if it has none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return None


def synopsis(
    commands: dict[str, argparse.ArgumentParser], width: int = 72, prog: str = "zmqbus"
) -> list[str]:
    """The synopsis of ``prog``, one command after another, from each command's own
    usage: positionals first, options as that usage lists them, wrapped to ``width``
    columns (never inside an option). A command with commands of its own stands
    as ``prog NAME {THEIR,NAMES} ...``; its --help gives their synopsis."""
    lines: list[str] = []
    for name, command in commands.items():
        nested = _subcommands(command)
        if nested is not None:
            units = ["{" + ",".join(nested) + "}", "..."]
            options: list[str] = []
        else:
            units, options = _usage_units(command)
        head = f"{prog} {name}"
        line = head
        for unit in [u for u in units if u not in options] + options:
            if len(line) + 1 + len(unit) > width and line.strip() != head:
                lines.append(line)
                line = " " * len(head)
            line += f" {unit}"
        lines.append(line)
    if prog == "zmqbus":
        lines.append("zmqbus --version")
    lines.append(f"{prog} [COMMAND] --help")
    return lines


def _usage_units(command: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """The units of ``command``'s usage (without its prog and -h), and which of
    them are options."""
    # One space between words, however argparse wrapped it for this terminal.
    usage = " ".join(command.format_usage().split()[1:])  # without "usage:"
    words = len(command.prog.split())
    units: list[str] = _USAGE_UNIT.findall(usage)[words:]  # without "zmqbus NAME"
    units.remove("[-h]")
    # Required options first (stable: otherwise as the usage lists them).
    options = [u for u in units if u.startswith("-")] + [u for u in units if u.startswith("[")]
    if command.prog == "zmqbus broker":
        # The broker's limit options are many: one unit here, each in its --help.
        kept = [u for u in options if u not in _LIMIT_UNITS]
        units = [u for u in units if u not in _LIMIT_UNITS] + ["[LIMITS]"]
        options = [*kept, "[LIMITS]"]
    return units, options


# --- helpers ----------------------------------------------------------------------


def _configure_logging(level: str, log_format: str = "text") -> None:
    # Library code logs to "zmqbus..." loggers; this decides where and how.
    logging.basicConfig(level=level, handlers=[_log_handler(sys.stderr, log_format)])


def _err(prog: str, text: str) -> None:
    print(f"{prog}: {text}", file=sys.stderr, flush=True)


def _connect(args: argparse.Namespace) -> Bus:
    """A bus per the common options that logs getting the broker back (the bus
    itself logs losing it); raises _UsageError for a bad address."""

    def reconnected() -> None:
        # WARNING, like the loss it answers: at the default level only warnings show.
        log.warning("reconnected to the broker at %s", args.address)

    try:
        return Bus(
            args.address,
            args.channel,
            connect_timeout=args.connect_timeout,
            on_reconnected=reconnected,
            server_key=args.server_key,
            key=args.key,
        )
    except (TypeError, ValueError) as exc:
        raise _UsageError(str(exc)) from None


def _format_result(result: PublishResult) -> str:
    if not result.confirmed:
        return "sent (not confirmed)"
    return (
        f"delivered={result.delivered} dropped={result.dropped} "
        f"failed={result.failed} buses={result.buses}"
    )


# Control characters (and DEL) as escapes, so one message is one line.
_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def _payload_text(payload: bytes) -> str:
    return payload.decode("utf-8", "backslashreplace").translate(_ESCAPES)


def format_message(msg: Message, *, as_json: bool = False) -> str:
    """One line for ``msg``: ``TOPIC HEADERS-JSON PAYLOAD`` or a JSON object (with
    ``stream``, ``seq`` and, if delivered by a consumer, ``deliveries`` for a
    message read from a stream)."""
    if as_json:
        return json.dumps(
            {
                "id": str(msg.id),
                "topic": msg.topic,
                "headers": msg.headers,
                "timestamp": msg.timestamp.isoformat(),
                "payload": base64.b64encode(msg.payload).decode("ascii"),
                # From a stream (stream get, consumer next): where, and how often.
                **_stream_fields(msg),
            },
            ensure_ascii=False,
        )
    headers = json.dumps(msg.headers, ensure_ascii=False, separators=(",", ":"))
    return f"{msg.topic} {headers} {_payload_text(msg.payload)}"


def _stream_fields(msg: Message) -> dict[str, object]:
    if msg.stream is None:
        return {}
    fields: dict[str, object] = {"stream": msg.stream, "seq": msg.seq}
    if msg.deliveries:  # 0: read with stream get, not delivered
        fields["deliveries"] = msg.deliveries
    return fields


def _raise_interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


# --- broker -----------------------------------------------------------------------


def cmd_broker(args: argparse.Namespace) -> int:
    try:
        config = _effective_config(args)
    except (TypeError, ValueError) as exc:
        _err("zmqbus broker", str(exc))
        return EXIT_USAGE
    if args.print_config:
        # Nothing bound or opened; the secret key shows as its file's path only.
        source = f"{args.config} over " if args.config else ""
        print(f"# zmqbus broker --print-config: flags over {source}the defaults")
        print(dump_config(config), end="")
        return EXIT_OK
    assert config.log_level is not None and config.log_format is not None
    _configure_logging(config.log_level, config.log_format)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    waited = stop_signals | {signal.SIGHUP}
    # Block the signals before any thread exists (the broker's, and zmq's own
    # I/O threads, which start with the context) so every thread inherits the mask
    # and the signals stay pending for sigwait() below: idling costs nothing.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    _return_big_frees()
    try:
        try:
            broker = _broker_from(config)
        except (TypeError, ValueError) as exc:
            _err("zmqbus broker", str(exc))
            return EXIT_USAGE
        except StoreError as exc:
            log.error("cannot open the stream store: %s", exc)
            return EXIT_FAILED
        except ImportError as exc:  # --metrics without prometheus_client
            _err("zmqbus broker", str(exc))
            return EXIT_FAILED
        try:
            broker.start()
        except zmq.ZMQError as exc:
            log.error("cannot bind %s: %s", broker.endpoint, exc)
            return EXIT_FAILED
        except (RuntimeError, OSError) as exc:  # OSError: the metrics port is taken
            log.error("cannot start the broker on %s: %s", broker.endpoint, exc)
            return EXIT_FAILED
        if broker.metrics_address is not None:
            log.info("metrics on http://%s/metrics", broker.metrics_address)
        log.info(
            "zmqbus %s broker ready (pid %d); stop with Ctrl-C or SIGTERM, reload users with "
            "SIGHUP",
            __version__,
            os.getpid(),
        )
        _sd_notify(f"READY=1\nSTATUS=listening on {broker.address}")
        while (signum := signal.sigwait(waited)) == signal.SIGHUP:
            _reload_users(broker, args.config)
        log.info("received %s, stopping", signal.Signals(signum).name)
        _sd_notify("STOPPING=1")
        broker.stop()
        return EXIT_OK
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _sd_notify(state: str) -> None:
    # systemd's Type=notify: a datagram to $NOTIFY_SOCKET (a path, or "@name" in
    # the abstract namespace). Without it, nothing to do.
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.connect(address)
            notify.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)


def _reload_users(broker: Broker, config_file: str | None) -> None:
    # SIGHUP: the users of the config file replace those in force (revoking
    # removed keys); anything wrong with the file leaves the old ones.
    if not config_file:
        log.warning("SIGHUP: the broker has no --config file to reload; ignored")
        return
    try:
        config = load_config(config_file)
        if config.users is None and broker.public_key is not None:
            raise ValueError(f"{config_file} lists no users ([[users]]): it would admit no one")
        broker.set_users(config.users or [])
    except (TypeError, ValueError) as exc:
        log.error("SIGHUP: reload failed, the users in force stay: %s", exc)
        return
    log.info("SIGHUP: users reloaded from %s (other settings take a restart)", config_file)


def _effective_config(args: argparse.Namespace) -> BrokerConfig:
    """Every setting the broker runs with: a flag given wins over the --config
    file, which wins over the defaults. ValueError for a bad value, or a bad
    combination; one of the file's names the file."""
    file = load_config(args.config) if args.config else BrokerConfig()
    where = f"{args.config}: " if args.config else ""

    def given(flag: Any, setting: Any, default: Any) -> Any:
        return flag if flag is not None else setting if setting is not None else default

    limits = Limits().as_dict() | file.limits
    limits.update({name: getattr(args, name) for name in limits if getattr(args, name) is not None})
    flagged_key = args.secret_key is not None
    secret = Path(os.path.abspath(args.secret_key)) if flagged_key else file.secret_key
    data_dir = Path(os.path.abspath(args.data_dir)) if args.data_dir else file.data_dir
    config = BrokerConfig(
        bind=bind_endpoint(
            given(args.bind, file.bind, os.environ.get(ENV_ADDRESS) or DEFAULT_BIND)
        ),
        secret_key=secret,
        max_message_size=given(args.max_message_size, file.max_message_size, 1 << 20),
        hwm=given(args.hwm, file.hwm, 100_000),
        limits=limits,
        users=file.users,
        data_dir=data_dir,
        sync=given(args.sync, file.sync, "normal"),
        metrics=None,
        metrics_per_channel=given(args.metrics_per_channel, file.metrics_per_channel, False),
        log_level=given(args.log_level, file.log_level, "INFO"),
        log_format=given(args.log_format, file.log_format, "text"),
    )
    metrics = given(args.metrics, file.metrics, None)
    if metrics is not None:
        config.metrics = metrics_address(metrics, "--metrics" if args.metrics else "metrics")
    for name, top in (("max_message_size", MAX_MESSAGE_SIZE), ("hwm", MAX_HWM)):
        if getattr(config, name) > top:
            raise ValueError(f"--{name.replace('_', '-')} must be at most {top}")
    if config.metrics_per_channel and config.metrics is None:
        src = "" if args.metrics_per_channel else where
        raise ValueError(f"{src}metrics_per_channel needs metrics (or --metrics HOST:PORT)")
    users = config.users
    if secret is not None:
        if users is None:
            raise ValueError("a secret key needs users: list them in the --config file ([[users]])")
        load_keypair(secret, f"{'' if flagged_key else where}secret_key")
    for i, user in enumerate(users or ()):
        if secret is None and user.name != ANONYMOUS:
            raise ValueError(
                f"{where}users[{i}] ({user.name!r}): users other than 'anonymous' need CURVE: "
                "set secret_key (or --secret-key)"
            )
        if user.public_key is not None:
            load_public_key(user.public_key, f"{where}users[{i}].public_key")
    return config


def _broker_from(config: BrokerConfig) -> Broker:
    assert config.bind and config.max_message_size and config.hwm and config.sync
    return Broker(
        config.bind,
        max_message_size=config.max_message_size,
        hwm=config.hwm,
        limits=Limits(**config.limits),
        secret_key=config.secret_key,
        users=config.users,
        data_dir=config.data_dir,
        metrics=config.metrics,
        metrics_per_channel=bool(config.metrics_per_channel),
        sync=config.sync,  # type: ignore[arg-type]
    )


def cmd_keygen(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level, args.log_format)
    try:
        public, secret = keygen(args.name, args.dir)
    except (ValueError, OSError) as exc:
        _err("zmqbus keygen", str(exc))
        return EXIT_USAGE
    print(f"public key: {public}")
    print(f"secret key: {secret} (keep it private)")
    return EXIT_OK


def _return_big_frees() -> None:
    # glibc raises its mmap threshold after a big block is freed, so later big
    # frames (up to 32 MiB) come from the heap and stay with the process once
    # freed: a hostile peer's 200 MiB message left 120 MiB behind. A fixed
    # threshold keeps frames of 128 KiB and more mmapped, given back at free.
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        log.debug("not glibc: the allocator keeps its own policy")


# --- pub --------------------------------------------------------------------------


def cmd_pub(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level, args.log_format)
    prog = "zmqbus pub"
    headers: dict[str, str] = {}
    for key, value in args.header:
        if key in headers:
            _err(prog, f"header {key!r} given twice")
            return EXIT_USAGE
        headers[key] = value
    payload = sys.stdin.buffer.read() if args.data == "-" else os.fsencode(args.data)
    try:
        bus = _connect(args)
    except _UsageError as exc:
        _err(prog, str(exc))
        return EXIT_USAGE
    except (ConnectTimeout, AuthenticationError) as exc:
        _err(prog, str(exc))
        return EXIT_UNREACHABLE
    try:
        result = bus.publish(
            args.topic, payload, headers, timeout=args.timeout, confirm=not args.no_confirm
        )
    except HandlerError as exc:
        # str(exc) already joins the error texts: a count, then each text once.
        noun = "handler" if len(exc.errors) == 1 else "handlers"
        _err(prog, f"{len(exc.errors)} {noun} failed:")
        for text in exc.errors:
            print(f"  {text}", file=sys.stderr)
        print(_format_result(exc.result), file=sys.stderr, flush=True)
        return EXIT_FAILED
    except MessageTooLarge as exc:
        _err(prog, str(exc))
        return EXIT_USAGE
    except PublishTimeout as exc:
        _err(prog, str(exc))
        return EXIT_TIMEOUT
    except ZmqbusError as exc:
        _err(prog, f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED
    finally:
        bus.close()
    print(_format_result(result), flush=True)
    return EXIT_OK


# --- sub --------------------------------------------------------------------------


def cmd_sub(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level, args.log_format)
    if not args.background:
        return _sub(args, None)
    # Fork before any bus, context or thread exists. The child subscribes and goes
    # on; the parent returns once the child writes to the pipe that it holds the
    # subscription, or with the child's exit code if it ended before that.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        return _sub(args, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        subscribed = pipe.read(1)
    if subscribed:
        return EXIT_OK
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def _sub(args: argparse.Namespace, ready_fd: int | None) -> int:
    """Run ``sub``; once subscribed, write a byte to ``ready_fd`` and close it."""
    prog = "zmqbus sub"
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    # SIGTERM ends the command like Ctrl-C: close the bus and exit 0.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        try:
            bus = _connect(args)
        except _UsageError as exc:
            _err(prog, str(exc))
            return EXIT_USAGE
        except (ConnectTimeout, AuthenticationError) as exc:
            _err(prog, str(exc))
            return EXIT_UNREACHABLE
        try:
            return _sub_loop(bus, args, deadline, ready_fd)
        finally:
            bus.close()
    except KeyboardInterrupt:
        return EXIT_OK


def _sub_loop(
    bus: Bus, args: argparse.Namespace, deadline: float | None, ready_fd: int | None
) -> int:
    prog = "zmqbus sub"
    try:
        sub = bus.subscribe(args.pattern, maxsize=args.buffer)
    except RequestTimeout as exc:
        _err(prog, str(exc))
        return EXIT_TIMEOUT
    where = "" if ready_fd is None else f" (in the background, pid {os.getpid()})"
    print(
        f"subscribed to {args.pattern} on channel {bus.channel_id}{where}",
        file=sys.stderr,
        flush=True,
    )
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    got = 0
    try:
        while args.count is None or got < args.count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            try:
                msg = sub.get(remaining)
            except TimeoutError:
                break
            print(format_message(msg, as_json=args.json), flush=True)
            got += 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head -1`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    if sub.dropped:
        log.warning("%d messages dropped: the buffer (--buffer) was full", sub.dropped)
    if args.count is not None and got < args.count:
        _err(prog, f"timed out after {args.timeout:g}s with {got} of {args.count} messages")
        return EXIT_TIMEOUT
    return EXIT_OK


# --- stream and consumer ----------------------------------------------------------


def _with_bus(args: argparse.Namespace, work: Callable[[Bus, str], int]) -> int:
    """Run ``work(bus, prog)`` on a bus per the client options, a stream or
    consumer command's errors made its exit code and a line on stderr."""
    _configure_logging(args.log_level, args.log_format)
    prog = f"zmqbus {args.command} {args.action}"
    try:
        bus = _connect(args)
    except _UsageError as exc:
        _err(prog, str(exc))
        return EXIT_USAGE
    except (ConnectTimeout, AuthenticationError) as exc:
        _err(prog, str(exc))
        return EXIT_UNREACHABLE
    try:
        return work(bus, prog)
    except (StreamNotFound, ConsumerNotFound) as exc:
        # The broker's text says "this channel": say which, for a wrong $ZMQBUS_CHANNEL.
        where = f"channel {bus.channel_id}"
        text = exc.detail.replace("this channel", where)
        _err(prog, text if where in text else f"{text} on {where}")
        return EXIT_NOT_FOUND
    except StreamExists as exc:
        _err(prog, exc.detail)
        return EXIT_CONFLICT
    except StreamError as exc:
        # 422: the broker found the arguments bad; 507: its store failed, or a
        # file stream on a broker without --data-dir.
        _err(prog, exc.detail)
        return EXIT_USAGE if exc.code == 422 else EXIT_FAILED
    except RequestTimeout as exc:
        _err(prog, str(exc))
        return EXIT_TIMEOUT
    except (TypeError, ValueError) as exc:
        _err(prog, str(exc))
        return EXIT_USAGE
    except ZmqbusError as exc:
        _err(prog, f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (e.g. `| head -1`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        bus.close()


def _print(text: str) -> None:
    print(text, flush=True)


def _print_json(value: object) -> None:
    _print(json.dumps(value, indent=2, ensure_ascii=False))


def _pairs(pairs: Sequence[tuple[str, object]]) -> str:
    """Aligned ``key: value`` lines."""
    width = max(len(key) for key, _ in pairs) + 1
    return "\n".join(f"{key + ':':<{width}} {value}".rstrip() for key, value in pairs)


def _limit(value: object) -> str:
    return "unlimited" if value in (-1, None) else str(value)


def _secs(value: object) -> str:
    return f"{value:g}s" if isinstance(value, int | float) else str(value)


_STREAM_SHOWN = (
    "retention",
    "storage",
    "max_msgs",
    "max_bytes",
    "max_age",
    "max_msg_size",
    "discard",
    "duplicate_window",
)


def _stream_text(info: StreamInfo) -> str:
    config = info.config
    pairs: list[tuple[str, object]] = [
        ("name", info.name),
        ("subjects", " ".join(info.subjects)),
        ("messages", info.messages),
        ("bytes", info.bytes),
        ("first_seq", info.first_seq),
        ("last_seq", info.last_seq),
        ("consumers", info.consumers),
    ]
    for key in _STREAM_SHOWN:
        if key not in config:
            continue
        value = config[key]
        if key in ("max_msgs", "max_bytes", "max_msg_size"):
            value = _limit(value)
        elif key == "max_age":
            value = "unlimited" if not value else _secs(value)
        elif key == "duplicate_window":
            value = "off" if not value else _secs(value)
        pairs.append((key, value))
    # What a newer broker reports and this command does not know, as it is.
    pairs += [(k, v) for k, v in config.items() if k not in (*_STREAM_SHOWN, "name", "subjects")]
    return _pairs(pairs)


def _stream_line(info: StreamInfo, width: int) -> str:
    return (
        f"{info.name:<{width}} subjects={','.join(info.subjects)} messages={info.messages} "
        f"bytes={info.bytes} first_seq={info.first_seq} last_seq={info.last_seq} "
        f"consumers={info.consumers} storage={info.config.get('storage', '?')}"
    )


def _stream_json(info: StreamInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


_CONSUMER_SHOWN = (
    "filter",
    "deliver",
    "start_seq",
    "start_time",
    "ack_wait",
    "max_deliver",
    "backoff",
    "dead_letter",
    "max_ack_pending",
)


def _consumer_text(info: ConsumerInfo) -> str:
    config = dict(info.config)
    pairs: list[tuple[str, object]] = [
        ("stream", info.stream),
        ("name", info.name or "(ephemeral)"),
        ("delivered", info.delivered),
        ("ack_floor", info.ack_floor),
        ("pending", info.pending),
        ("waiting", info.waiting),
        ("redelivered", info.redelivered),
    ]
    for key in _CONSUMER_SHOWN:
        if key not in config:
            continue
        value = config[key]
        if key in ("start_seq", "start_time") and not value:
            continue  # 0: it started where deliver says
        if key == "filter":
            value = value or "none (every message)"
        elif key == "start_time":
            value = datetime.fromtimestamp(value, UTC).isoformat()
        elif key == "ack_wait":
            value = _secs(value)
        elif key == "max_deliver":
            value = _limit(value)
        elif key == "backoff":
            value = " ".join(map(_secs, value)) if value else "none"
        elif key == "dead_letter":
            value = value or "none"
        pairs.append((key, value))
    known = (*_CONSUMER_SHOWN, "stream", "durable")
    pairs += [(k, v) for k, v in config.items() if k not in known]
    return _pairs(pairs)


def _consumer_line(info: ConsumerInfo, width: int) -> str:
    line = (
        f"{info.name or '(ephemeral)':<{width}} delivered={info.delivered} "
        f"ack_floor={info.ack_floor} pending={info.pending} waiting={info.waiting} "
        f"redelivered={info.redelivered}"
    )
    flt = info.config.get("filter")
    return f"{line} filter={flt}" if flt else line


def _consumer_json(info: ConsumerInfo) -> dict[str, Any]:
    out = dataclasses.asdict(info)
    out["config"] = dict(info.config)
    return out


def _show_stream(info: StreamInfo, *, as_json: bool) -> None:
    if as_json:
        _print_json(_stream_json(info))
    else:
        _print(_stream_text(info))


def _show_consumer(info: ConsumerInfo, *, as_json: bool) -> None:
    if as_json:
        _print_json(_consumer_json(info))
    else:
        _print(_consumer_text(info))


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The options among ``names`` given on the command line (the others keep
    the API's defaults)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def cmd_stream_add(args: argparse.Namespace) -> int:
    options = (
        "max_msgs", "max_bytes", "max_age", "max_msg_size", "discard", "retention",
        "storage", "duplicate_window",
    )  # fmt: skip

    def work(bus: Bus, prog: str) -> int:
        info = bus.add_stream(
            args.name, args.subjects, timeout=_STREAM_WAIT, **_given(args, options)
        )
        _show_stream(info, as_json=args.json)
        return EXIT_OK

    return _with_bus(args, work)


def cmd_stream_info(args: argparse.Namespace) -> int:
    def work(bus: Bus, prog: str) -> int:
        info = bus.stream_info(args.name, timeout=_STREAM_WAIT)
        _show_stream(info, as_json=args.json)
        return EXIT_OK

    return _with_bus(args, work)


def cmd_stream_ls(args: argparse.Namespace) -> int:
    def work(bus: Bus, prog: str) -> int:
        streams = bus.streams(timeout=_STREAM_WAIT)
        if args.json:
            _print_json([_stream_json(info) for info in streams])
        else:
            width = max((len(info.name) for info in streams), default=0)
            for info in streams:
                _print(_stream_line(info, width))
        return EXIT_OK

    return _with_bus(args, work)


def cmd_stream_rm(args: argparse.Namespace) -> int:
    def work(bus: Bus, prog: str) -> int:
        bus.delete_stream(args.name, timeout=_STREAM_WAIT)
        _print(f"deleted stream {args.name}")
        return EXIT_OK

    return _with_bus(args, work)


def cmd_stream_purge(args: argparse.Namespace) -> int:
    def work(bus: Bus, prog: str) -> int:
        purged = bus.purge_stream(args.name, timeout=_STREAM_WAIT)
        noun = "message" if purged == 1 else "messages"
        _print(f"purged {purged} {noun} from stream {args.name}")
        return EXIT_OK

    return _with_bus(args, work)


def cmd_stream_get(args: argparse.Namespace) -> int:
    def work(bus: Bus, prog: str) -> int:
        msg = bus.get_message(args.name, args.seq, timeout=_STREAM_WAIT)
        _print(format_message(msg, as_json=args.json))
        return EXIT_OK

    return _with_bus(args, work)


def cmd_consumer_add(args: argparse.Namespace) -> int:
    options = (
        "filter", "deliver", "start_seq", "ack_wait", "max_deliver", "backoff", "dead_letter",
        "max_ack_pending",
    )  # fmt: skip

    def work(bus: Bus, prog: str) -> int:
        info = bus.add_consumer(
            args.stream, args.durable, timeout=_STREAM_WAIT, **_given(args, options)
        )
        _show_consumer(info, as_json=args.json)
        return EXIT_OK

    return _with_bus(args, work)


def cmd_consumer_info(args: argparse.Namespace) -> int:
    def work(bus: Bus, prog: str) -> int:
        info = bus.consumer_info(args.stream, args.durable, timeout=_STREAM_WAIT)
        _show_consumer(info, as_json=args.json)
        return EXIT_OK

    return _with_bus(args, work)


def cmd_consumer_ls(args: argparse.Namespace) -> int:
    def work(bus: Bus, prog: str) -> int:
        consumers = bus.consumers(args.stream, timeout=_STREAM_WAIT)
        if args.json:
            _print_json([_consumer_json(info) for info in consumers])
        else:
            width = max((len(info.name or "(ephemeral)") for info in consumers), default=0)
            for info in consumers:
                _print(_consumer_line(info, width))
        return EXIT_OK

    return _with_bus(args, work)


def cmd_consumer_rm(args: argparse.Namespace) -> int:
    def work(bus: Bus, prog: str) -> int:
        bus.delete_consumer(args.stream, args.durable, timeout=_STREAM_WAIT)
        _print(f"deleted consumer {args.durable} of stream {args.stream}")
        return EXIT_OK

    return _with_bus(args, work)


def _binding(config: dict[str, Any]) -> dict[str, Any]:
    """``consume`` options that bind the durable whose config (as the broker
    reports it) is ``config``: the broker refuses a bind asking for another
    config. Where it starts only counts when it is made, so it is left out."""
    seconds = config  # ConsumerInfo.config has seconds, as consume takes
    options = {
        "filter": seconds.get("filter"),
        "ack_wait": seconds.get("ack_wait"),
        "max_deliver": seconds.get("max_deliver"),
        "backoff": seconds.get("backoff") or None,
        "dead_letter": seconds.get("dead_letter"),
        "max_ack_pending": seconds.get("max_ack_pending"),
    }
    return {key: value for key, value in options.items() if value is not None}


def cmd_consumer_next(args: argparse.Namespace) -> int:
    # SIGTERM ends the command like Ctrl-C, the bus closed: what it held unacked
    # goes back to the consumer at once.
    signal.signal(signal.SIGTERM, _raise_interrupt)

    def work(bus: Bus, prog: str) -> int:
        # Looked up first: consume() would make a durable it does not find.
        info = bus.consumer_info(args.stream, args.durable, timeout=_STREAM_WAIT)
        consumer = bus.consume(
            args.stream,
            maxsize=args.count,  # more are not taken: they go back at the unbind
            timeout=_STREAM_WAIT,
            durable=args.durable,
            **_binding(info.config),
        )
        try:
            got = _take(consumer, args)
        finally:
            with contextlib.suppress(ZmqbusError):  # the bus's close unbinds it too
                consumer.unsubscribe(timeout=_STREAM_WAIT)
        if got < args.count:
            _err(prog, f"timed out after {args.timeout:g}s with {got} of {args.count} messages")
            return EXIT_TIMEOUT
        return EXIT_OK

    return _with_bus(args, work)


def _take(consumer: Consumer, args: argparse.Namespace) -> int:
    """Print (and ack) up to ``args.count`` messages of ``consumer`` within
    ``args.timeout``; how many."""
    deadline = time.monotonic() + args.timeout
    got = 0
    while got < args.count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            msg = consumer.get(remaining)
        except (TimeoutError, SubscriptionClosed):
            break
        # Acked once written: a message the output did not take is delivered again.
        _print(format_message(msg, as_json=args.json))
        if not args.no_ack:
            msg.ack()
        got += 1
    return got


# --- demo -------------------------------------------------------------------------


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    # Nearest rank: the smallest value with at least q of the values at or below it.
    n = len(sorted_values)
    rank = max(1, min(n, -int(-q * n // 1)))
    return sorted_values[rank - 1]


def cmd_demo(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level, args.log_format)
    out: Callable[..., None] = print
    channel = uuid.uuid4()
    with Broker("tcp://127.0.0.1:0") as broker:
        out(f"zmqbus {__version__} demo: broker on {broker.address}, channel {channel}")
        pub = Bus(broker.address, channel)
        alice = Bus(broker.address, channel)
        bob = Bus(broker.address, channel)
        try:
            _demo_features(out, pub, alice, bob)
            _demo_latency(out, pub, alice, args.count)
        finally:
            for bus in (pub, alice, bob):
                bus.close()
    return EXIT_OK


def _demo_features(out: Callable[..., None], pub: Bus, alice: Bus, bob: Bus) -> None:
    out("\n== 1. basic pub/sub (queue subscription) ==")
    sub = alice.subscribe("orders.created")
    res = pub.publish("orders.created", b'{"id": 123}')
    msg = sub.get(timeout=5)
    out(f"published orders.created -> {_format_result(res)}")
    out(f"alice got {msg.topic}: {_payload_text(msg.payload)}")
    sub.unsubscribe()

    out("\n== 2. fan-out: two subscribers, both get every message ==")
    sub_a = alice.subscribe("orders.paid")
    sub_b = bob.subscribe("orders.paid")
    res = pub.publish("orders.paid", b"order 123 paid")
    out(f"published orders.paid -> {_format_result(res)}")
    out(f"alice got: {_payload_text(sub_a.get(timeout=5).payload)}")
    out(f"bob   got: {_payload_text(sub_b.get(timeout=5).payload)}")
    alice.unsubscribe("orders.paid")
    bob.unsubscribe("orders.paid")

    out("\n== 3. headers ==")
    sub = bob.subscribe("user.activity")
    pub.publish("user.activity", b"new message", {"user_id": "123", "source": "api"})
    msg = sub.get(timeout=5)
    out(f"bob got {msg.topic} headers={msg.headers} payload={_payload_text(msg.payload)}")
    sub.unsubscribe()

    out("\n== 4. wildcards: audit.> matches one or more tokens, * exactly one ==")
    deep = alice.subscribe("audit.>")
    one = bob.subscribe("audit.*")
    for topic in ("audit.user.login", "audit.order.created", "audit.logout"):
        res = pub.publish(topic, b"{}")
        out(f"published {topic:<20} -> {_format_result(res)}")
    out(f"alice (audit.>) got: {', '.join(deep.get(timeout=5).topic for _ in range(3))}")
    out(f"bob   (audit.*) got: {one.get(timeout=5).topic}")
    deep.unsubscribe()
    one.unsubscribe()

    out("\n== 5. a handler raises; the publisher gets HandlerError ==")

    def charge(msg: Message) -> None:
        raise ValueError(f"card declined for {msg.payload.decode()}")

    handler_sub = alice.subscribe("payments.charge", charge)
    try:
        pub.publish("payments.charge", b"order 123")
        out("unexpected: no error")
    except HandlerError as exc:
        out(f"publish raised HandlerError: {exc}")
        out(f"  errors={exc.errors} result: {_format_result(exc.result)}")
    handler_sub.unsubscribe()

    out("\n== 6. fire and forget (confirm=False) ==")
    sub = bob.subscribe("metrics.cpu")
    res = pub.publish("metrics.cpu", b"42", confirm=False)
    out(f"published metrics.cpu -> {_format_result(res)}; bob got {sub.get(timeout=5).payload!r}")
    sub.unsubscribe()


def _demo_latency(out: Callable[..., None], pub: Bus, alice: Bus, count: int) -> None:
    out(f"\n== 7. latency: {count} confirmed publishes to a handler subscription ==")
    us, rate = _round_trips(pub, alice, count, b"x" * 64, lambda done: None)
    out(
        "round trip (publish -> broker -> handler -> confirm):  "
        f"p50 {_percentile(us, 0.50):.0f} µs  p90 {_percentile(us, 0.90):.0f} µs  "
        f"p99 {_percentile(us, 0.99):.0f} µs  max {us[-1]:.0f} µs"
    )
    out(f"throughput, one publish at a time: {rate:,.0f} msgs/s")
    out(_machine_line())


def _machine_line() -> str:
    return (
        f"machine: broker, publisher and subscriber run in ONE process sharing the GIL, "
        f"on {os.cpu_count()} cores ({platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()})"
    )


def _round_trips(
    pub: Bus, sub_bus: Bus, count: int, payload: bytes, step: Callable[[int], None]
) -> tuple[list[float], float]:
    """``count`` confirmed publishes to a handler subscription of ``sub_bus``:
    (sorted round trips in µs, msgs/s). ``step(n)`` after each."""
    sub = sub_bus.subscribe("bench.ping", lambda msg: None)
    for _ in range(min(200, count)):  # warm up
        pub.publish("bench.ping", payload)
    samples: list[float] = []
    perf = time.perf_counter
    start = perf()
    for n in range(1, count + 1):
        t0 = perf()
        pub.publish("bench.ping", payload)
        samples.append(perf() - t0)
        step(n)
    elapsed = perf() - start
    sub.unsubscribe()
    return sorted(s * 1e6 for s in samples), count / elapsed


def _fire_and_forget(
    pub: Bus, sub_bus: Bus, count: int, payload: bytes, step: Callable[[int], None]
) -> float:
    """``count`` unconfirmed publishes, timed until the subscriber has them all: msgs/s."""
    sub = sub_bus.subscribe("bench.flood", maxsize=count)
    start = time.perf_counter()
    for n in range(1, count + 1):
        pub.publish("bench.flood", payload, confirm=False)
        if n % 100 == 0:
            step(n // 2)
    for n in range(count):
        sub.get(timeout=30)
        if n % 100 == 0:
            step(count // 2 + n // 2)
    step(count)
    rate = count / (time.perf_counter() - start)
    sub.unsubscribe()
    return rate


class _Progress:
    """A rich progress bar on a terminal; a plain line per quarter otherwise."""

    def __init__(self, out: Callable[..., None]) -> None:
        self._out = out
        self._bar: Any = None
        if sys.stderr.isatty():
            try:
                from rich.progress import Progress
            except ImportError:
                pass
            else:
                self._bar = Progress(transient=True)
                self._bar.start()
        self._task: Any = None
        self._total = 0
        self._told = 0

    def begin(self, what: str, total: int) -> Callable[[int], None]:
        self._total = total
        self._told = 0
        if self._bar is not None:
            self._task = self._bar.add_task(what, total=total)
            return lambda n: self._bar.update(self._task, completed=n)
        self._out(f"bench: {what}", file=sys.stderr)
        return self._plain

    def _plain(self, n: int) -> None:
        quarter = n * 4 // self._total
        if quarter > self._told:
            self._told = quarter
            self._out(f"bench:   {n}/{self._total}", file=sys.stderr)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def cmd_bench(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level, args.log_format)
    out: Callable[..., None] = print
    payload = b"x" * args.size
    progress = _Progress(out)
    try:
        with Broker("tcp://127.0.0.1:0") as broker:
            channel = uuid.uuid4()
            with Bus(broker.address, channel) as pub, Bus(broker.address, channel) as sub:
                step = progress.begin(f"{args.count} confirmed round trips", args.count)
                us, rate = _round_trips(pub, sub, args.count, payload, step)
                step = progress.begin(f"{args.count} fire-and-forget publishes", args.count)
                flood = _fire_and_forget(pub, sub, args.count, payload, step)
    finally:
        progress.end()
    out(f"zmqbus {__version__} bench: {args.count} messages of {args.size} bytes")
    out(
        f"confirmed, one at a time: {rate:,.0f} msgs/s; round trip p50 "
        f"{_percentile(us, 0.50):.0f} µs  p90 {_percentile(us, 0.90):.0f} µs  "
        f"p99 {_percentile(us, 0.99):.0f} µs  max {us[-1]:.0f} µs"
    )
    out(f"fire-and-forget, to a queue subscription: {flood:,.0f} msgs/s")
    out(_machine_line())
    return EXIT_OK


# --- version ----------------------------------------------------------------------


def _dist_version(name: str) -> str:
    try:
        return dist_version(name)
    except PackageNotFoundError:
        return "unknown"


def cmd_stats(args: argparse.Namespace) -> int:
    from .admin import broker_stats

    try:
        stats = broker_stats(
            args.address, timeout=args.timeout, server_key=args.server_key, key=args.key
        )
    except (ValueError, TypeError) as exc:
        print(f"zmqbus stats: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConnectTimeout, AuthenticationError) as exc:
        print(f"zmqbus stats: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(stats, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    try:
        from . import top
    except ModuleNotFoundError as exc:
        if exc.name != "rich":
            raise
        _err("zmqbus top", "needs rich: pip install 'zmqbus[top]'")
        return EXIT_FAILED

    def fetch() -> top.Snapshot:
        return top.fetch(
            args.address, timeout=args.timeout, server_key=args.server_key, key=args.key
        )

    tty = sys.stdout.isatty()
    view = top.View(args.address, interval=args.interval, sort=args.sort, ascii=not tty)
    session = top.Top(fetch, view)
    try:
        session.refresh(first=True)
    except (ValueError, TypeError) as exc:
        _err("zmqbus top", str(exc))
        return EXIT_USAGE
    except (ConnectTimeout, AuthenticationError) as exc:
        _err("zmqbus top", str(exc))
        return EXIT_UNREACHABLE
    except ZmqbusError as exc:
        _err("zmqbus top", str(exc))
        return EXIT_FAILED
    try:
        if tty and not args.once:
            from rich.console import Console

            top.run_live(session, Console(), sys.stdin)
            return EXIT_OK
        width = shutil.get_terminal_size((100, 24)).columns
        for frame in top.frames(session, once=args.once, width=width, color=tty):
            print(frame + ("" if args.once else "\n"), flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends it, as q does
    except BrokenPipeError:
        # The reader went away (zmqbus top | head): stop quietly; nothing more can be written.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    print(
        f"zmqbus {__version__} (pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}, "
        f"msgpack {_dist_version('msgpack')}, Python {platform.python_version()})"
    )
    return EXIT_OK


# --- entry point ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zmqbus`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    finally:
        # Threads of ours are done; make sure anything buffered is written.
        _flush_quietly()


def _flush_quietly() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
