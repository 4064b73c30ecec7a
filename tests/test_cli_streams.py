"""The ``zmqbus stream`` and ``zmqbus consumer`` commands, run as real
subprocesses (``python -m zmqbus``) against a broker on loopback with a store.

Each command runs to completion before the next starts: what one did (a
message taken and not acked, a consumer made) is on the broker when it has
exited, so nothing here sleeps.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import free_port, run

from zmqbus import Broker, Bus, User
from zmqbus.cli import main
from zmqbus.keys import keygen

pytestmark = pytest.mark.timeout(60)

CHANNEL = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker on a free loopback port that keeps file streams in ``tmp_path``."""
    with Broker("tcp://127.0.0.1:0", data_dir=tmp_path / "data") as b:
        yield b


def zb(broker: Broker, channel: uuid.UUID, *args: str) -> subprocess.CompletedProcess[str]:
    """``zmqbus ARGS`` on ``broker`` and ``channel``, run to completion."""
    return run(*args, "--address", broker.address, "--channel", str(channel))


def ok(r: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded quietly on stderr."""
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stderr == "", r.stderr
    return r.stdout


def fails(r: subprocess.CompletedProcess[str], code: int, complaint: str) -> None:
    """The command exited ``code`` with ``complaint`` on stderr and nothing on stdout."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert complaint in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""


def pairs(text: str) -> dict[str, str]:
    """Aligned ``key: value`` lines as a dict; every value starts in one column."""
    lines = text.splitlines()
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines}
    assert len(columns) == 1, lines
    return {key: value.strip() for key, value in (line.split(":", 1) for line in lines)}


def publish(broker: Broker, channel: uuid.UUID, topic: str, payload: bytes, **kw: Any) -> int:
    """Publish into a stream through a bus of the test; the sequence stored."""
    with Bus(broker.address, channel) as bus:
        result = bus.publish(topic, payload, **kw)
    assert result.seq is not None, result
    return result.seq


def stream(broker: Broker, channel: uuid.UUID, name: str, *subjects: str, **kw: Any) -> None:
    with Bus(broker.address, channel) as bus:
        bus.add_stream(name, list(subjects), **kw)


# --- stream -------------------------------------------------------------------------


def test_stream_add_info_ls_purge_rm(broker: Broker, channel: uuid.UUID) -> None:
    add = ("stream", "add", "ORDERS", "--subjects", "orders.>", "refunds.*", "--max-msgs", "100")
    made = ok(zb(broker, channel, *add))
    info = pairs(made)
    assert info["name"] == "ORDERS"
    assert info["subjects"] == "orders.> refunds.*"
    assert (info["messages"], info["first_seq"], info["last_seq"]) == ("0", "1", "0")
    assert (info["max_msgs"], info["max_bytes"], info["storage"]) == ("100", "unlimited", "file")
    assert info["duplicate_window"] == "120s"
    # The same add again is no error, and says the same.
    assert ok(zb(broker, channel, *add)) == made

    publish(broker, channel, "orders.created", b"1")
    publish(broker, channel, "refunds.issued", b"2")
    info = pairs(ok(zb(broker, channel, "stream", "info", "ORDERS")))
    assert (info["messages"], info["last_seq"], info["consumers"]) == ("2", "2", "0")
    as_json = json.loads(ok(zb(broker, channel, "stream", "info", "ORDERS", "--json")))
    assert as_json["name"] == "ORDERS" and as_json["subjects"] == ["orders.>", "refunds.*"]
    assert (as_json["messages"], as_json["first_seq"], as_json["last_seq"]) == (2, 1, 2)
    assert as_json["config"]["max_msgs"] == 100 and as_json["config"]["retention"] == "limits"

    stream(broker, channel, "AUDIT", "audit.>", storage="memory")
    listed = ok(zb(broker, channel, "stream", "ls")).splitlines()
    assert sorted(listed) == [
        "AUDIT  subjects=audit.> messages=0 bytes=0 first_seq=1 last_seq=0 consumers=0 "
        "storage=memory",
        f"ORDERS subjects=orders.>,refunds.* messages=2 bytes={as_json['bytes']} first_seq=1 "
        "last_seq=2 consumers=0 storage=file",
    ]
    listed_json = json.loads(ok(zb(broker, channel, "stream", "ls", "--json")))
    assert sorted(s["name"] for s in listed_json) == ["AUDIT", "ORDERS"]
    assert next(s for s in listed_json if s["name"] == "ORDERS") == as_json

    purged = ok(zb(broker, channel, "stream", "purge", "ORDERS"))
    assert purged == "purged 2 messages from stream ORDERS\n"
    after = json.loads(ok(zb(broker, channel, "stream", "info", "ORDERS", "--json")))
    assert (after["messages"], after["last_seq"]) == (0, 2)  # sequences go on

    assert ok(zb(broker, channel, "stream", "rm", "ORDERS")) == "deleted stream ORDERS\n"
    assert ok(zb(broker, channel, "stream", "rm", "AUDIT")) == "deleted stream AUDIT\n"
    assert ok(zb(broker, channel, "stream", "ls")) == ""
    assert json.loads(ok(zb(broker, channel, "stream", "ls", "--json"))) == []


def test_stream_add_takes_every_option(broker: Broker, channel: uuid.UUID) -> None:
    r = zb(
        broker, channel, "stream", "add", "JOBS", "--subjects", "jobs.>",
        "--max-msgs", "10", "--max-bytes", "4096", "--max-age", "60", "--max-msg-size", "512",
        "--discard", "new", "--retention", "work_queue", "--storage", "memory",
        "--duplicate-window", "0", "--json",
    )  # fmt: skip
    config = json.loads(ok(r))["config"]
    assert config == {
        "name": "JOBS",
        "subjects": ["jobs.>"],
        "max_msgs": 10,
        "max_bytes": 4096,
        "max_age": 60.0,
        "max_msg_size": 512,
        "discard": "new",
        "retention": "work_queue",
        "storage": "memory",
        "duplicate_window": 0.0,
    }
    info = pairs(ok(zb(broker, channel, "stream", "info", "JOBS")))
    assert (info["max_age"], info["duplicate_window"], info["discard"]) == ("60s", "off", "new")


def test_a_file_stream_on_a_broker_without_a_store_exits_1(channel: uuid.UUID) -> None:
    with Broker("tcp://127.0.0.1:0") as memory_only:
        r = zb(memory_only, channel, "stream", "add", "S", "--subjects", "s.>")
    fails(r, 1, "zmqbus stream add: file streams need a data_dir")


def test_stream_get_prints_as_sub_does(broker: Broker, channel: uuid.UUID) -> None:
    stream(broker, channel, "ORDERS", "orders.>")
    msg_id = uuid.uuid4()
    publish(broker, channel, "orders.created", b'{"id": 1}', headers={"source": "cli"})
    publish(broker, channel, "orders.odd", b"caf\xc3\xa9\n\xff", msg_id=msg_id)
    got = zb(broker, channel, "stream", "get", "ORDERS", "1")
    assert ok(got) == 'orders.created {"source":"cli"} {"id": 1}\n'
    # One line however odd the payload; --json has its exact bytes.
    assert ok(zb(broker, channel, "stream", "get", "ORDERS", "2")) == "orders.odd {} café\\n\\xff\n"
    obj = json.loads(ok(zb(broker, channel, "stream", "get", "ORDERS", "2", "--json")))
    assert obj["id"] == str(msg_id)
    assert (obj["topic"], obj["headers"], obj["stream"], obj["seq"]) == (
        "orders.odd",
        {},
        "ORDERS",
        2,
    )
    assert base64.b64decode(obj["payload"]) == b"caf\xc3\xa9\n\xff"
    assert "deliveries" not in obj  # read, not delivered
    fails(
        zb(broker, channel, "stream", "get", "ORDERS", "3"),
        5,
        f"zmqbus stream get: stream 'ORDERS' has no message 3 on channel {channel}",
    )


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("stream", "info", "NOPE"), "zmqbus stream info: no stream 'NOPE' on channel {ch}"),
        (("stream", "rm", "NOPE"), "zmqbus stream rm: no stream 'NOPE' on channel {ch}"),
        (("stream", "purge", "NOPE"), "zmqbus stream purge: no stream 'NOPE' on channel {ch}"),
        (("stream", "get", "NOPE", "1"), "zmqbus stream get: no stream 'NOPE' on channel {ch}"),
        (("consumer", "add", "NOPE", "d"), "zmqbus consumer add: no stream 'NOPE' on channel"),
        (("consumer", "ls", "NOPE"), "zmqbus consumer ls: no stream 'NOPE' on channel {ch}"),
        (("consumer", "info", "S", "nobody"), "stream 'S' has no consumer 'nobody' on channel"),
        (("consumer", "rm", "S", "nobody"), "stream 'S' has no consumer 'nobody' on channel {ch}"),
        (("consumer", "next", "S", "nobody"), "consumer next: stream 'S' has no consumer"),
        (("consumer", "next", "NOPE", "d"), "consumer next: no stream 'NOPE' on channel {ch}"),
    ],
)
def test_unknown_stream_or_consumer_exits_5(
    broker: Broker, channel: uuid.UUID, args: tuple[str, ...], complaint: str
) -> None:
    stream(broker, channel, "S", "s.>")
    fails(zb(broker, channel, *args), 5, complaint.format(ch=channel))
    # consumer next must not have made the durable it did not find.
    with Bus(broker.address, channel) as bus:
        assert bus.consumers("S") == []


def test_another_config_or_an_overlap_exits_6(broker: Broker, channel: uuid.UUID) -> None:
    with Bus(broker.address, channel) as bus:
        bus.add_stream("S", ["s.>"])
        bus.add_consumer("S", "d", ack_wait=5)
    fails(
        zb(broker, channel, "stream", "add", "S", "--subjects", "t.>"),
        6,
        "zmqbus stream add: stream 'S' exists with another config",
    )
    fails(
        zb(broker, channel, "stream", "add", "T", "--subjects", "s.eu"),
        6,
        "zmqbus stream add: subjects 's.eu' overlap 's.>' of stream 'S'",
    )
    fails(
        zb(broker, channel, "consumer", "add", "S", "d", "--ack-wait", "6"),
        6,
        "zmqbus consumer add: consumer 'd' exists with another config",
    )
    # The same consumer again is no error.
    assert pairs(ok(zb(broker, channel, "consumer", "add", "S", "d", "--ack-wait", "5")))


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("stream", "add", "bad.name", "--subjects", "x"), "1 to 64 of A-Z a-z 0-9 _ -"),
        (("stream", "add", "S"), "the following arguments are required: --subjects"),
        (("stream", "add", "S", "--subjects", "a.>.b"), "'>' may only be the last token"),
        (("stream", "add", "S", "--subjects", "a", "--discard", "maybe"), "invalid choice"),
        (("stream", "add", "S", "--subjects", "a", "--max-msgs", "0"), "at least 1"),
        (("stream", "add", "S", "--subjects", "a", "--duplicate-window", "-1"), "0 or a positive"),
        (("stream", "get", "S", "0"), "at least 1"),
        (("stream", "frob"), "invalid choice: 'frob'"),
        (("consumer", "add", "S", "d", "--ack-wait", "0"), "must be a positive number"),
        (("consumer", "add", "S", "d", "--backoff", "1", "-1"), "0 or a positive"),
        (("consumer", "add", "S", "d", "--deliver", "first"), "invalid choice: 'first'"),
        (("consumer", "add", "S", "d", "--dead-letter", "dlq.*"), "cannot publish to a pattern"),
        (("consumer", "next", "S", "d", "--count", "0"), "at least 1"),
        (("consumer", "next", "S"), "the following arguments are required: DURABLE"),
        (("consumer", "ls", "S", "--channel", "xyz"), "not a UUID"),
    ],
)
def test_bad_arguments_exit_2(args: tuple[str, ...], complaint: str) -> None:
    # The address is never reachable: bad input must be refused before connecting.
    address = f"tcp://127.0.0.1:{free_port()}"
    if "--channel" not in args:
        args = (*args, "--channel", CHANNEL)
    r = run(*args, "--address", address, "--connect-timeout", "0.5")
    fails(r, 2, complaint)


@pytest.mark.parametrize(
    "args", [("stream",), ("consumer",), ("stream", "ls"), ("consumer", "next", "S", "d")]
)
def test_missing_command_or_channel_exits_2(args: tuple[str, ...]) -> None:
    fails(run(*args), 2, "the following arguments are required:")


@pytest.mark.parametrize("args", [("stream", "ls"), ("consumer", "next", "S", "d")])
def test_unreachable_broker_exits_3(args: tuple[str, ...]) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    r = run(*args, "--channel", CHANNEL, "--address", address, "--connect-timeout", "0.5")
    fails(r, 3, f"no answer from broker at {address} within 0.5s")


def test_keys_refused_exits_3_and_stream_rights_are_the_users(tmp_path: Path) -> None:
    server_public, server_secret = keygen("broker", tmp_path)
    ops_public, ops_secret = keygen("ops", tmp_path)
    app_public, app_secret = keygen("app", tmp_path)
    _, stranger = keygen("stranger", tmp_path / "elsewhere")
    users = [User("ops", ops_public, streams=True), User("app", app_public)]
    add = ("stream", "add", "S", "--subjects", "s.>", "--storage", "memory", "--channel", CHANNEL)
    with Broker("tcp://127.0.0.1:0", secret_key=server_secret, users=users) as secure:

        def as_user(secret: Path, *args: str) -> subprocess.CompletedProcess[str]:
            keys = ("--server-key", str(server_public), "--key", str(secret))
            return run(*args, "--address", secure.address, *keys)

        fails(as_user(stranger, *add), 3, f"broker at {secure.address} refused the connection")
        fails(as_user(app_secret, *add), 1, "zmqbus stream add: PermissionDenied: [401]")
        assert pairs(ok(as_user(ops_secret, *add)))["name"] == "S"
        assert ok(as_user(ops_secret, "stream", "ls", "--channel", CHANNEL)).startswith("S ")
        # Every stream and consumer command asks for the right, consumer next too
        # (it looks the consumer up first).
        denied = "PermissionDenied: [401] user 'app' may not manage streams"
        fails(as_user(app_secret, "stream", "ls", "--channel", CHANNEL), 1, denied)
        next_ = ("consumer", "next", "S", "d", "--channel", CHANNEL)
        fails(as_user(app_secret, *next_), 1, denied)


# --- consumer -----------------------------------------------------------------------


def test_consumer_add_info_ls_rm(broker: Broker, channel: uuid.UUID) -> None:
    stream(broker, channel, "ORDERS", "orders.>", "dlq.>")
    made = ok(
        zb(
            broker, channel, "consumer", "add", "ORDERS", "billing", "--filter", "orders.eu.*",
            "--ack-wait", "0.5", "--max-deliver", "3", "--backoff", "0.1", "1",
            "--dead-letter", "dlq.billing", "--max-ack-pending", "10",
        )
    )  # fmt: skip
    info = pairs(made)
    assert (info["stream"], info["name"], info["filter"]) == ("ORDERS", "billing", "orders.eu.*")
    assert (info["ack_wait"], info["max_deliver"], info["backoff"]) == ("0.5s", "3", "0.1s 1s")
    assert (info["dead_letter"], info["max_ack_pending"], info["deliver"]) == (
        "dlq.billing",
        "10",
        "all",
    )
    assert (info["delivered"], info["ack_floor"], info["pending"], info["waiting"]) == (
        "0",
        "0",
        "0",
        "0",
    )
    assert "start_seq" not in info
    assert ok(zb(broker, channel, "consumer", "info", "ORDERS", "billing")) == made

    late = zb(broker, channel, "consumer", "add", "ORDERS", "late", "--start-seq", "5", "--json")
    late_json = json.loads(ok(late))
    assert (late_json["name"], late_json["delivered"], late_json["ack_floor"]) == ("late", 4, 4)
    assert late_json["config"]["start_seq"] == 5
    assert late_json["config"]["ack_wait"] == 30.0  # seconds, as --ack-wait takes them
    assert pairs(ok(zb(broker, channel, "consumer", "info", "ORDERS", "late")))["start_seq"] == "5"

    listed = ok(zb(broker, channel, "consumer", "ls", "ORDERS")).splitlines()
    assert sorted(listed) == [
        "billing delivered=0 ack_floor=0 pending=0 waiting=0 redelivered=0 filter=orders.eu.*",
        "late    delivered=4 ack_floor=4 pending=0 waiting=0 redelivered=0",
    ]
    listed_json = json.loads(ok(zb(broker, channel, "consumer", "ls", "ORDERS", "--json")))
    billing = next(c for c in listed_json if c["name"] == "billing")
    assert billing["config"]["ack_wait"] == 0.5 and billing["config"]["backoff"] == [0.1, 1.0]
    assert next(c for c in listed_json if c["name"] == "late") == late_json

    removed = ok(zb(broker, channel, "consumer", "rm", "ORDERS", "late"))
    assert removed == "deleted consumer late of stream ORDERS\n"
    assert ok(zb(broker, channel, "consumer", "ls", "ORDERS")).startswith("billing ")
    assert ok(zb(broker, channel, "consumer", "rm", "ORDERS", "billing"))
    assert ok(zb(broker, channel, "consumer", "ls", "ORDERS")) == ""


def test_consumer_next_takes_acks_and_times_out(broker: Broker, channel: uuid.UUID) -> None:
    stream(broker, channel, "ORDERS", "orders.>", "dlq.>")
    # A durable with every option: next binds it as made (else the broker says 410).
    with Bus(broker.address, channel) as bus:
        bus.add_consumer(
            "ORDERS", "billing", filter="orders.*", ack_wait=20, max_deliver=5,
            backoff=[1, 2], dead_letter="dlq.billing", max_ack_pending=50,
        )  # fmt: skip
    seqs = [publish(broker, channel, "orders.created", f"order {i}".encode()) for i in range(3)]
    assert seqs == [1, 2, 3]

    taken = ok(
        zb(broker, channel, "consumer", "next", "ORDERS", "billing", "--count", "2", "--json")
    )
    objs = [json.loads(line) for line in taken.splitlines()]
    assert [(o["seq"], o["deliveries"], o["stream"]) for o in objs] == [
        (1, 1, "ORDERS"),
        (2, 1, "ORDERS"),
    ]
    assert [base64.b64decode(o["payload"]) for o in objs] == [b"order 0", b"order 1"]
    third = ok(zb(broker, channel, "consumer", "next", "ORDERS", "billing"))
    assert third == "orders.created {} order 2\n"  # as sub prints it

    r = zb(broker, channel, "consumer", "next", "ORDERS", "billing", "--timeout", "0.3")
    fails(r, 4, "zmqbus consumer next: timed out after 0.3s with 0 of 1 messages")
    info = json.loads(ok(zb(broker, channel, "consumer", "info", "ORDERS", "billing", "--json")))
    # All three acked; the commands unbound when they exited.
    assert (info["delivered"], info["ack_floor"], info["pending"], info["waiting"]) == (3, 3, 0, 0)


def test_consumer_next_no_ack_is_delivered_again(broker: Broker, channel: uuid.UUID) -> None:
    stream(broker, channel, "JOBS", "jobs.>")
    with Bus(broker.address, channel) as bus:
        bus.add_consumer("JOBS", "workers", ack_wait=0.2)
    msg_id = uuid.uuid4()
    publish(broker, channel, "jobs.resize", b"img-1", msg_id=msg_id)
    peek = zb(broker, channel, "consumer", "next", "JOBS", "workers", "--no-ack", "--json")
    first = json.loads(ok(peek))
    assert (first["id"], first["seq"], first["deliveries"]) == (str(msg_id), 1, 1)
    # Not acked: the next bind gets it again (without --no-ack it is acked this time).
    take = zb(broker, channel, "consumer", "next", "JOBS", "workers", "--json")
    again = json.loads(ok(take))
    assert (again["id"], again["seq"], again["deliveries"]) == (str(msg_id), 1, 2)
    assert again["payload"] == first["payload"]
    r = zb(broker, channel, "consumer", "next", "JOBS", "workers", "--timeout", "0.5")
    fails(r, 4, "with 0 of 1 messages")


def test_consumer_next_short_of_count_exits_4_and_acks_what_came(
    broker: Broker, channel: uuid.UUID
) -> None:
    stream(broker, channel, "JOBS", "jobs.>")
    with Bus(broker.address, channel) as bus:
        bus.add_consumer("JOBS", "workers")
    publish(broker, channel, "jobs.one", b"only")
    args = ("consumer", "next", "JOBS", "workers", "--count", "3", "--timeout", "0.5")
    r = zb(broker, channel, *args)
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert r.stdout == "jobs.one {} only\n"
    assert "zmqbus consumer next: timed out after 0.5s with 1 of 3 messages" in r.stderr
    with Bus(broker.address, channel) as bus:
        info = bus.consumer_info("JOBS", "workers")
    assert (info.ack_floor, info.pending, info.waiting) == (1, 0, 0)


# --- help ---------------------------------------------------------------------------


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*args, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("group", "commands"),
    [
        ("stream", ["add", "info", "ls", "rm", "purge", "get"]),
        ("consumer", ["add", "info", "ls", "rm", "next"]),
    ],
)
def test_group_help_gives_every_commands_synopsis(
    capsys: pytest.CaptureFixture[str], group: str, commands: list[str]
) -> None:
    top = _help(capsys)
    assert f"zmqbus {group} {{{','.join(commands)}}} ..." in top
    text = _help(capsys, group)
    head = text.split("\n\n", 1)[0].splitlines()
    assert all(len(line) <= 79 for line in head), head
    entries: dict[str, str] = {}
    for line in (line.removeprefix("usage: ").strip() for line in head):
        if line.startswith(f"zmqbus {group} "):
            name = line.split()[2]
            entries[name] = line
        else:
            entries[name] += " " + line
    assert list(entries) == [*commands, "[COMMAND]"]
    for command in commands:
        own = _help(capsys, group, command)
        options = set(re.findall(r"^  (?:-\w, )?(--[a-z][a-z-]*)", own, re.M)) - {"--help"}
        assert {"--channel", "--address", "--server-key", "--key"} <= options
        missing = {o for o in options if not re.search(rf"{o}(?![\w-])", entries[command])}
        assert not missing, f"{command}: {sorted(missing)} not in {entries[command]!r}"
        assert "exit codes:" in own
    if group == "stream":
        assert "--subjects PAT [PAT ...]" in entries["add"]
    else:
        assert "--backoff S [S ...]" in entries["add"]


def test_help_documents_the_stream_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    assert "  5  stream, consumer: no such stream, consumer, or message" in text
    assert "  6  stream add, consumer add: the name exists with another config" in text
    assert "consumer next got fewer than --count" in text
