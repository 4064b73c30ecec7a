"""The BATCH and BROKER_BATCH examples of docs/protocol.md are what the code does.

Each example block is read from the spec as the test of the PUBLISH_BATCH
example in test_vectors.py reads its own: the frames (`[n] hex  # comment`),
then the annotated entries frame (`hex  comment`, one field a line). The
annotation must add up to the frame, the frame must parse and unpack to the
commands the annotation names, and a broker fed the BATCH example must send
exactly what the spec says, the BROKER_BATCH example included.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from zmqbus import protocol as p
from zmqbus._routing import BrokerState
from zmqbus.errors import ProtocolError

SPEC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

BATCH_SECTION = "BATCH (client → broker)"
BROKER_BATCH_SECTION = "BROKER_BATCH (broker → client)"

# The worked example's channel, bodies and refs, which the two examples reuse.
CHANNEL = bytes.fromhex("00112233445566778899aabbccddeeff")
MESSAGE_ID = bytes.fromhex("6f1c4a2e3b5d4e8f9a0b1c2d3e4f5a6b")
HI = bytes.fromhex("94c4106f1c4a2e3b5d4e8f9a0b1c2d3e4f5a6bd7ff1d6f34546553f10080c4026869")
YO = bytes.fromhex("94c4106f1c4a2e3b5d4e8f9a0b1c2d3e4f5a6bd7ff1d6f34546553f10080c402796f")
ACK_2_0 = bytes.fromhex("93020090")  # [2, 0, []]
WORKED_HELLO = bytes.fromhex("81a6636c69656e74a96578616d706c652f31")  # {"client": "example/1"}


def n8(i: int) -> bytes:
    return i.to_bytes(8, "big")


def n4(i: int) -> bytes:
    return i.to_bytes(4, "big")


# What the annotations of the two examples say frame 2 holds, as whole messages.
BATCH_ENTRIES = [
    [p.H_PUBLISH, CHANNEL, n8(3), b"orders.eu.x", YO],
    [p.H_ACK, CHANNEL, n8(1), ACK_2_0],
]
BROKER_BATCH_ENTRIES = [
    [p.H_DELIVER, CHANNEL, n8(2), b"orders.eu.x", YO, n4(1)],
    [p.H_ROUTED, CHANNEL, n8(3), n4(1)],
]

_FRAME = re.compile(r"^\[(?P<index>\d+)\]\s+(?P<hex>[0-9a-f]*)\s*(?:#.*)?$")
_FIELD = re.compile(r"^(?P<hex>[0-9a-f]+)\s+(?P<comment>\S.*)$")


def _section(section: str) -> str:
    """The text under ``### {section}``, up to the next heading."""
    text = SPEC.read_text(encoding="utf-8")
    start = text.index(f"### {section}\n")
    end = text.find("\n#", start + 4)
    return text[start : end if end >= 0 else len(text)]


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, re.S)


def _example(section: str) -> tuple[list[bytes], list[tuple[bytes, str]]]:
    """The frames of the first example block under ``### {section}``, and the
    fields of its annotation of frame 2 (octets, comment)."""
    blocks = _code_blocks(_section(section))
    assert blocks, f"no example block under {section!r}"
    frames: list[bytes] = []
    fields: list[tuple[bytes, str]] = []
    annotation = False
    for line in blocks[0].splitlines():
        if not line.strip():
            continue
        if line.strip() == "frame 2, entry by entry:":
            annotation = True
            continue
        if not annotation:
            frame = _FRAME.match(line)
            assert frame, f"unparsable frame line: {line!r}"
            assert int(frame["index"]) == len(frames)
            frames.append(bytes.fromhex(frame["hex"]))
            continue
        field = _FIELD.match(line)
        assert field, f"unparsable annotation line: {line!r}"
        fields.append((bytes.fromhex(field["hex"]), field["comment"]))
    assert len(frames) == 3, frames
    assert fields, f"the example under {section!r} lost its annotation"
    return frames, fields


def _stated_sizes(section: str) -> list[int]:
    """The sizes the prose gives: the entries frame, then each entry."""
    match = re.search(
        r"the entries frame is (\d+) octets: entries of (\d+) and (\d+) octets",
        " ".join(_section(section).split()),
    )
    assert match, f"the example under {section!r} no longer states its sizes"
    return [int(n) for n in match.groups()]


def _check_annotation(
    fields: list[tuple[bytes, str]], frame: bytes, entries: list[list[bytes]]
) -> None:
    """The annotation adds up to the frame, one command byte then a length and
    the content for each of the entry's frames, naming each command."""
    assert b"".join(octets for octets, _ in fields) == frame
    want: list[tuple[bytes, str]] = []
    for msg in entries:
        name = p.Cmd(msg[0][3]).name
        want.append((msg[0][3:4], f"command {name} (0x{msg[0][3]:02X}): {len(msg) - 2} frames"))
        for content in msg[2:]:
            want.append((len(content).to_bytes(4, "big"), f"frame-length {len(content)}"))
            want.append((content, ""))
    assert [octets for octets, _ in fields] == [octets for octets, _ in want]
    for (_, comment), (_, wanted) in zip(fields, want, strict=True):
        if wanted:
            assert comment == wanted


def _check_sizes(section: str, frame: bytes, entries: list[list[bytes]]) -> None:
    sizes = [len(p.pack_command_entry(msg)) for msg in entries]
    assert _stated_sizes(section) == [len(frame), *sizes]


def test_batch_example_parses_to_the_annotated_commands() -> None:
    frames, fields = _example(BATCH_SECTION)
    assert frames[0] == bytes.fromhex("5a42010c") == p.H_BATCH
    assert frames[1] == CHANNEL
    cmd = p.parse_client(frames)
    assert cmd == p.Batch(CHANNEL, frames[2])
    entries = p.unpack_command_entries(frames[2], frames[1], p.CLIENT_ENTRY_FRAMES)
    assert entries == BATCH_ENTRIES
    _check_annotation(fields, frames[2], entries)
    _check_sizes(BATCH_SECTION, frames[2], entries)
    assert b"".join(p.pack_command_entry(msg) for msg in entries) == frames[2]
    # Each entry is a valid message alone: a confirmed PUBLISH of "yo", an ACK [2, 0, []].
    publish, ack = (p.parse_client(msg) for msg in entries)
    assert publish == p.Publish(CHANNEL, n8(3), b"orders.eu.x", YO)
    assert ack == p.Ack(CHANNEL, n8(1), ACK_2_0)
    # The bodies are the annotation's: [id, Timestamp 1700000000.123456789, {}, bin "yo"]
    # (microseconds only, as the reference decoder keeps them) and [2, 0, []].
    msg_id, ts, headers, payload = p.message_fields(YO)
    assert (msg_id, headers, payload) == (MESSAGE_ID, {}, b"yo")
    assert ts == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    result = p.unpack_ack(ACK_2_0)
    assert (result.delivered, result.dropped, result.errors) == (2, 0, ())
    # Client commands only: read as a BROKER_BATCH's entries, the frame is malformed.
    with pytest.raises(ProtocolError) as refused:
        p.unpack_command_entries(frames[2], CHANNEL, p.BROKER_ENTRY_FRAMES)
    assert refused.value.code == p.ErrorCode.BAD_FRAMES


def test_broker_batch_example_parses_to_the_annotated_commands() -> None:
    frames, fields = _example(BROKER_BATCH_SECTION)
    assert frames[0] == bytes.fromhex("5a42018d") == p.H_BROKER_BATCH
    assert frames[1] == CHANNEL
    cmd = p.parse_broker(frames)
    assert cmd == p.BrokerBatch(CHANNEL, frames[2])
    entries = p.unpack_command_entries(frames[2], frames[1], p.BROKER_ENTRY_FRAMES)
    assert entries == BROKER_BATCH_ENTRIES
    _check_annotation(fields, frames[2], entries)
    _check_sizes(BROKER_BATCH_SECTION, frames[2], entries)
    assert b"".join(p.pack_command_entry(msg) for msg in entries) == frames[2]
    deliver, routed = (p.parse_broker(msg) for msg in entries)
    assert deliver == p.Deliver(CHANNEL, n8(2), b"orders.eu.x", YO, n4(1))
    assert routed == p.Routed(CHANNEL, n8(3), 1)
    with pytest.raises(ProtocolError) as refused:
        p.unpack_command_entries(frames[2], CHANNEL, p.CLIENT_ENTRY_FRAMES)
    assert refused.value.code == p.ErrorCode.BAD_FRAMES


def test_batch_example_draws_the_broker_batch_example_from_a_broker() -> None:
    """S and P of the worked example, S having asked for batch_commands: after
    P's confirmed PUBLISH ref 1 reaches S as DELIVER token 1, S sends the BATCH
    example. The broker handles its PUBLISH entry (DELIVER token 2 and ROUTED
    ref 3 count 1 to S), then its ACK entry (ACKED ref 1 to P), and joins S's
    two messages into exactly the BROKER_BATCH example; P's ACKED stays plain."""
    batch, _ = _example(BATCH_SECTION)
    broker_batch, _ = _example(BROKER_BATCH_SECTION)
    state = BrokerState(name="zmqbus/0.1.0")
    state.handle(b"S", [p.H_HELLO, CHANNEL, p.pack_hello("example/1", batch_commands=True)])
    welcome = p.parse_broker(state.outbox[-1][1])
    assert isinstance(welcome, p.Welcome)
    assert p.unpack_welcome(welcome.body)["batch_commands"] is True
    state.handle(b"S", [p.H_SUBSCRIBE, CHANNEL, n8(1), n4(1), b"orders.>", b""])
    state.handle(b"S", [p.H_SUBSCRIBE, CHANNEL, n8(2), n4(2), b"orders.*", b"workers"])
    state.handle(b"P", [p.H_HELLO, CHANNEL, WORKED_HELLO])
    state.outbox.clear()
    state.handle(b"P", [p.H_PUBLISH, CHANNEL, n8(1), b"orders.eu", HI])
    assert state.outbox == [
        (b"S", [p.H_DELIVER, CHANNEL, n8(1), b"orders.eu", HI, n4(1) + n4(2)]),
        (b"P", [p.H_ROUTED, CHANNEL, n8(1), n4(1)]),
    ]
    state.outbox.clear()

    state.handle(b"S", batch)
    acked = [p.H_ACKED, CHANNEL, n8(1), ACK_2_0]
    # Each entry handled as alone, in entry order: the messages the entries cause.
    assert state.outbox == [
        (b"S", BROKER_BATCH_ENTRIES[0]),
        (b"S", BROKER_BATCH_ENTRIES[1]),
        (b"P", acked),
    ]
    assert state.take_outgoing() == [(b"P", acked), (b"S", broker_batch)]
    assert state.counters["batches_in"] == 1
    assert state.counters["broker_batches"] == 1
    assert not state.errors

    # S ACKs the DELIVER entry's token as it would a DELIVER's; S published that
    # message itself, so S gets the ACKED for its ref 3, and the publish is done.
    state.outbox.clear()
    state.handle(b"S", [p.H_ACK, CHANNEL, n8(2), ACK_2_0])
    assert state.outbox == [(b"S", [p.H_ACKED, CHANNEL, n8(3), ACK_2_0])]
    assert state.pending_confirmations == 0


def _msgpack_blocks(section: str) -> list[list[bytes]]:
    """The annotated msgpack examples under ``### {section}``: per code block,
    the bodies it shows (separated by blank lines), from the hex before each
    line's comment."""
    out: list[list[bytes]] = []
    for block in _code_blocks(_section(section)):
        bodies: list[bytes] = []
        for part in re.split(r"\n\s*\n", block.strip()):
            octets = b""
            for line in part.splitlines():
                hex_part = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
                octets += bytes.fromhex(hex_part.replace(" ", ""))
            bodies.append(octets)
        out.append(bodies)
    return out


def test_negotiation_example_is_what_the_broker_answers() -> None:
    blocks = _msgpack_blocks("Negotiation")
    assert len(blocks) == 2, "the Negotiation section should show two HELLO/WELCOME pairs"
    hello, welcome = blocks[1]
    assert p.unpack_hello(hello) == {"client": "example/1", "batch_commands": True}
    state = BrokerState(name="zmqbus/0.1.0")
    state.handle(b"S", [p.H_HELLO, CHANNEL, hello])
    assert state.outbox == [(b"S", [p.H_WELCOME, CHANNEL, welcome])]
    assert p.unpack_welcome(welcome) == {
        "broker": "zmqbus/0.1.0",
        "max_message_size": 1 << 20,
        "batch_commands": True,
    }
