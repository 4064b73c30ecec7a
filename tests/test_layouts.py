"""The command layouts of ``zmqbus.protocol`` against docs/protocol.md, and
every length limit of every field, at the limit and one past it.

The spec side is read from the document itself: the "| Frame | Size | Content |"
table under each command's heading, the commands table, the list of header
frames, the batch-entry tables and the ABNF of appendix A. Whatever the code
derives from the layouts (frame counts, entry tables, the commands an ERROR
echoes a ref for) is checked against the same text.
"""

from __future__ import annotations

import dataclasses
import functools
import mmap
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zmqbus import protocol as p
from zmqbus._routing import BrokerState
from zmqbus.broker import Broker
from zmqbus.errors import ProtocolError
from zmqbus.protocol import Cmd, ErrorCode, Field

SPEC = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
A = b"A" * 16
S1 = b"\x00\x00\x00\x01"

# --- reading the spec ----------------------------------------------------------------


def section(title: str) -> str:
    """The text of the level-2 section ``title``, up to the next one."""
    start = SPEC.index(f"\n## {title}\n")
    end = SPEC.find("\n## ", start + 1)
    return SPEC[start : end if end >= 0 else len(SPEC)]


def table(text: str, head: str) -> list[list[str]]:
    """The rows of the first table in ``text`` whose header line is ``head``."""
    lines = text[text.index(head + "\n") :].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def command_sections() -> dict[str, tuple[str, str]]:
    """Each command of "Command reference": name -> (direction, its text)."""
    ref = section("Command reference")
    heads = list(re.finditer(r"^### ([A-Z_]+) \((.+)\)$", ref, re.M))
    out = {}
    for m, nxt in zip(heads, [*heads[1:], None], strict=True):
        out[m[1]] = (m[2], ref[m.end() : nxt.start() if nxt else len(ref)])
    return out


# The spec writes ranges with an en dash and repeats with a multiplication sign.
DASH = "\N{EN DASH}"
TIMES = "\N{MULTIPLICATION SIGN}"


def spec_size(cell: str) -> p.Size:
    """A size as the frame tables write it."""
    if cell == "any":
        return p.Size()
    if cell == f"0{DASH}max_message_size":
        return p.Size(message=True)
    if m := re.fullmatch(rf"(\d+) {TIMES} n, n ≥ ([01])", cell):
        return p.Size(int(m[1]) * int(m[2]), step=int(m[1]))
    if m := re.fullmatch(r"0 or (\d+)", cell):
        return p.Size(int(m[1]), int(m[1]), or_empty=True)
    if m := re.fullmatch(r"(\d+) or more", cell):
        return p.Size(int(m[1]))
    if m := re.fullmatch(rf"(\d+){DASH}(\d+)", cell):
        return p.Size(int(m[1]), int(m[2]))
    if m := re.fullmatch(r"\d+", cell):
        return p.Size(int(cell), int(cell))
    raise AssertionError(f"a size the spec should not write: {cell!r}")


SECTIONS = command_sections()


# --- the spec's tables against the layouts -------------------------------------------


def test_the_spec_and_the_layouts_name_the_same_commands() -> None:
    assert sorted(SECTIONS) == sorted(layout.name for layout in p.LAYOUTS)
    assert sorted(p.LAYOUT) == sorted(Cmd)
    assert len(p.LAYOUT) == len(p.LAYOUTS)


@pytest.mark.parametrize("layout", p.LAYOUTS, ids=lambda layout: layout.name)
def test_command_table_matches_layout(layout: p.Layout) -> None:
    direction, text = SECTIONS[layout.name]
    assert direction == layout.direction.value
    rows = table(text, "| Frame | Size | Content |")
    assert [int(row[0]) for row in rows] == list(range(layout.count))
    assert rows[0][2] == f"`{p.header(layout.cmd).hex()}`"
    assert [spec_size(row[1]) for row in rows] == [frame.size for frame in layout.frames]


def test_commands_table_matches_layouts() -> None:
    rows = table(section("Framing"), "| Command | Byte | Direction | Frames | Answered by |")
    got = [(name, int(byte.strip("`"), 16), d, int(n)) for name, byte, d, n, _ in rows]
    assert got == [(lay.name, lay.cmd, lay.direction.value, lay.count) for lay in p.LAYOUTS]


def test_header_frame_list_matches_layouts() -> None:
    block = section("Framing").split(f"So the {len(p.LAYOUTS)} header frames of version 1 are:")[1]
    block = block.split("```")[1]
    found = dict(re.findall(r"([A-Z_]+)\s+(5a42[0-9a-f]{4})", block))
    assert found == {lay.name: p.header(lay.cmd).hex() for lay in p.LAYOUTS}


def test_every_layout_is_framed_alike() -> None:
    for layout in p.LAYOUTS:
        assert layout.frames[p.HEADER_FRAME].type is Field.HEADER
        assert layout.frames[p.CHANNEL_FRAME].type is Field.CHANNEL
        assert (layout.direction is p.Direction.CLIENT) == (layout.cmd < 0x80)
        if layout.batch is not None:
            assert p.LAYOUT[layout.batch].direction is layout.direction
    assert p.ENTRY_START == p.CHANNEL_FRAME + 1 == p.REF_FRAME == p.ENTRIES_FRAME


def _entry_rows(lengths: tuple[p.Length, ...]) -> list[list[str]]:
    rows = []
    for length in lengths:
        rows += [[length.name, str(length.octets)], [length.of, length.name]]
    return rows


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("PUBLISH_BATCH", _entry_rows(p.PUBLISH_ENTRY)),
        ("DELIVER_BATCH", _entry_rows(p.DELIVER_ENTRY)),
        ("BATCH", [["command", str(p.COMMAND_BYTES)], *_entry_rows((p.FRAME_LENGTH,)), ["…", ""]]),
        (
            "BROKER_BATCH",
            [["command", str(p.COMMAND_BYTES)], *_entry_rows((p.FRAME_LENGTH,)), ["…", ""]],
        ),
    ],
)
def test_entry_tables_match_entry_layouts(name: str, rows: list[list[str]]) -> None:
    got = table(SECTIONS[name][1], "| Field | Size | Content |")
    assert [row[:2] for row in got] == rows


def _spoken(frame: p.Frame) -> str:
    # The carry tables call a reply token by its type, every other frame by its name.
    return frame.type.value if frame.type is Field.REPLY_TOKEN else frame.name


@pytest.mark.parametrize(
    ("batch", "table_of"), [(Cmd.BATCH, "BATCH"), (Cmd.BROKER_BATCH, "BROKER_BATCH")]
)
def test_batch_carry_tables_match_layouts(batch: Cmd, table_of: str) -> None:
    rows = table(SECTIONS[table_of][1], "| Command | Byte | Frames in the entry | Which are |")
    got = {int(byte.strip("`"), 16): (name, int(n), which) for name, byte, n, which in rows}
    carried = [layout for layout in p.LAYOUTS if layout.batch is batch]
    assert got == {
        layout.cmd: (
            layout.name,
            layout.count - p.ENTRY_START,
            ", ".join(_spoken(f) for f in layout.frames[p.ENTRY_START :]),
        )
        for layout in carried
    }
    assert got.keys() == p.ENTRY_FRAMES[batch].keys()
    assert {c: n for c, (_, n, _) in got.items()} == p.ENTRY_FRAMES[batch]


def test_the_commands_an_error_echoes_a_ref_for_are_the_specs() -> None:
    text = section("Errors").split("### What an ERROR echoes")[1]
    listed = re.search(r"one of the command bytes (.+?); and frame 2", text, re.S)
    assert listed is not None
    names = re.findall(r"([A-Z_]+) \(`0x[0-9A-F]{2}`\)", listed[1])
    assert {Cmd[name] for name in names} == p.ECHOES_REF


# --- appendix A ------------------------------------------------------------------------


def abnf_rules() -> dict[str, str]:
    """The ABNF of appendix A: rule name -> definition, comments dropped."""
    block = section("Appendix A: grammar").split("```")[1]
    rules: dict[str, str] = {}
    name = ""
    for line in block.splitlines():
        text = line.split(";")[0].rstrip()
        if not text:
            continue
        if text[0].isspace():
            rules[name] += " " + text.strip()
        else:
            name, definition = (part.strip() for part in text.split("=", 1))
            rules[name] = definition
    return rules


def abnf_size(definition: str) -> p.Size | None:
    """The size of a one-frame rule made of octets, or None for another rule."""
    if m := re.fullmatch(r"<(\d+)OCTET> / <>", definition):
        return p.Size(int(m[1]), int(m[1]), or_empty=True)
    m = re.fullmatch(r"<(.*)>", definition)
    if m is None:
        return None
    lo = hi = 0
    for part in m[1].split():
        if one := re.fullmatch(r"(\d+)OCTET", part):
            lo, hi = lo + int(one[1]), hi + int(one[1])
        elif span := re.fullmatch(r"(\d*)\*(\d*)OCTET", part):
            if not span[2]:
                return p.Size(lo + int(span[1] or 0))
            lo, hi = lo + int(span[1] or 0), hi + int(span[2])
        elif rep := re.fullmatch(r"([01]?)\*\((\d+)OCTET\)", part):
            return p.Size(int(rep[1] or 0) * int(rep[2]), step=int(rep[2]))
        else:
            return None
    return p.Size(lo, hi)


def test_abnf_messages_match_layouts() -> None:
    rules = abnf_rules()
    alternatives = [
        name.strip()
        for which in ("client-message", "broker-message")
        for name in rules[which].split("/")
    ]
    seen = {}
    for name in alternatives:
        head, *fields = rules[name].split()
        byte = int(re.fullmatch(r"<%x5A\.42\.01\.([0-9A-F]{2})>", rules[head])[1], 16)  # type: ignore[index]
        layout = p.LAYOUT[byte]
        assert head == (
            "C-" if layout.direction is p.Direction.CLIENT else "B-"
        ) + layout.name.replace("_", "-")
        assert len(fields) == layout.count - 1, name
        for field, frame in zip(fields, layout.frames[1:], strict=True):
            size = abnf_size(rules[field])
            if frame.type.value.endswith("entries"):
                assert size is None and rules[field].startswith("<1*"), field
            else:
                # ABNF cannot say "at most max_message_size": such a body is any size there.
                assert size == dataclasses.replace(frame.size, message=False), (name, field)
        seen[layout.cmd] = name
    assert set(seen) == set(Cmd)


def test_abnf_command_entries_match_entry_tables() -> None:
    rules = abnf_rules()
    for which, batch in (
        ("client-command-entry", Cmd.BATCH),
        ("broker-command-entry", Cmd.BROKER_BATCH),
    ):
        entries = re.findall(r"%x([0-9A-F]{2}) (\d+)entry-frame", rules[which])
        assert {int(byte, 16): int(n) for byte, n in entries} == p.ENTRY_FRAMES[batch]


# --- what the layouts derive -----------------------------------------------------------


def test_frame_counts_and_entry_tables_come_from_the_layouts() -> None:
    assert {c: lay.count for c, lay in p.LAYOUT.items() if c < 0x80} == p.CLIENT_FRAMES
    assert {c: lay.count for c, lay in p.LAYOUT.items() if c >= 0x80} == p.BROKER_FRAMES
    assert {p.header(c): n for c, n in p.BROKER_FRAMES.items()} == p.BROKER_FRAME_COUNTS
    assert p.CLIENT_ENTRY_FRAMES == {
        Cmd.PUBLISH: 3,
        Cmd.ACK: 2,
        Cmd.REQUEST: 3,
        Cmd.REPLY: 2,
        Cmd.STREAM_ACK: 4,
    }
    assert p.BROKER_ENTRY_FRAMES == {
        Cmd.DELIVER: 4,
        Cmd.ROUTED: 2,
        Cmd.ACKED: 2,
        Cmd.ASK: 4,
        Cmd.ANSWER: 2,
        Cmd.STORED: 4,
        Cmd.STREAM_MSG: 5,
    }


def test_named_indices_are_the_frames_of_their_names() -> None:
    named = {
        (Cmd.PUBLISH, "ref"): p.PUBLISH_REF,
        (Cmd.PUBLISH, "topic"): p.PUBLISH_TOPIC,
        (Cmd.PUBLISH, "body"): p.PUBLISH_BODY,
        (Cmd.REQUEST, "ref"): p.REQUEST_REF,
        (Cmd.REQUEST, "topic"): p.REQUEST_TOPIC,
        (Cmd.REQUEST, "body"): p.REQUEST_BODY,
        (Cmd.ACK, "token"): p.ACK_TOKEN,
        (Cmd.ACK, "body"): p.ACK_BODY,
        (Cmd.REPLY, "token"): p.REPLY_TOKEN,
        (Cmd.REPLY, "body"): p.REPLY_BODY,
        (Cmd.DELIVER, "token"): p.DELIVER_TOKEN,
        (Cmd.DELIVER, "topic"): p.DELIVER_TOPIC,
        (Cmd.DELIVER, "body"): p.DELIVER_BODY,
        (Cmd.DELIVER, "sids"): p.DELIVER_SIDS,
        (Cmd.ASK, "token"): p.ASK_TOKEN,
        (Cmd.ASK, "topic"): p.ASK_TOPIC,
        (Cmd.ASK, "body"): p.ASK_BODY,
        (Cmd.ASK, "sids"): p.ASK_SIDS,
        (Cmd.ROUTED, "ref"): p.ROUTED_REF,
        (Cmd.ROUTED, "count"): p.ROUTED_COUNT,
        (Cmd.ACKED, "ref"): p.ACKED_REF,
        (Cmd.ACKED, "body"): p.ACKED_BODY,
        (Cmd.ANSWER, "ref"): p.ANSWER_REF,
        (Cmd.ANSWER, "body"): p.ANSWER_BODY,
    }
    for (cmd, name), index in named.items():
        assert p.LAYOUT[cmd].frames[index].name == name
    frames = p.encode(p.Deliver(A, b"t", b"a.b", b"body", S1))
    assert (frames[p.DELIVER_TOKEN], frames[p.DELIVER_SIDS]) == (b"t", S1)
    # BrokerState.send_failed reads a lost DELIVER and a lost ASK at the same places.
    assert (p.ASK_TOKEN, p.ASK_SIDS) == (p.DELIVER_TOKEN, p.DELIVER_SIDS)
    assert p.LAYOUT[Cmd.ASK].count == p.LAYOUT[Cmd.DELIVER].count


# --- values of a frame at a given size ---------------------------------------------------


def sample(frame: p.Frame, size: int | None = None, cmd: Cmd = Cmd.BATCH) -> bytes:
    """A valid value of ``frame`` of command ``cmd`` (for any frame type),
    ``size`` bytes long if given: valid content too wherever the size allows
    it. Command entries are those a batch ``cmd`` carries."""
    kind = frame.type
    if size is None:
        size = frame.size.min if frame.size.max is not None or frame.size.min else frame.size.step
        if kind in (Field.MESSAGE_BODY, Field.REPLY_BODY):
            return p.pack_message(b"\1" * 16, 0, {}, b"x")
        if kind is Field.ACK_BODY:
            return p.pack_ack(1, 0)
        if kind is Field.HELLO_BODY:
            return p.pack_hello("t")
        if kind is Field.WELCOME_BODY:
            return p.pack_welcome("b", 1024)
        if kind is Field.STATS_BODY:
            return p.pack_stats({})
        if kind is Field.STREAM_BODY:
            # STREAM and CONSUME share the type: a request, and a consumer.
            if cmd is Cmd.CONSUME:
                return p.pack_consume("S", durable="d")
            return p.pack_stream_request("list")
        if kind is Field.STREAM_REPLY_BODY:
            return p.pack_stream_reply({})
        if kind is Field.TEXT:
            return b"text"
        if kind is Field.COMMAND_ENTRIES:
            # One entry each side takes without an ERROR: a stale ACK, a late ROUTED.
            if cmd is Cmd.BATCH:
                return p.pack_command_entry([p.H_ACK, A, b"t", p.pack_ack(1, 0)])
            return p.pack_command_entry([p.H_ROUTED, A, b"r", b"\x00\x00\x00\x01"])
        if kind is Field.REF:
            size = max(frame.size.min, 1)
    if kind is Field.CHANNEL:
        return A[:size] if size <= 16 else A + b"A" * (size - 16)
    if kind in (Field.TOPIC, Field.PATTERN):
        return b"a" * size
    if kind is Field.QUEUE:
        return b"q" * size
    if kind is Field.PUBLISH_ENTRIES:
        return (b"\x00\x01a\x00\x00\x00\x00" + b"\x00" * size)[:size]
    if kind is Field.DELIVER_ENTRIES:
        return (b"\x00\x04" + S1 + b"\x00\x01a\x00\x00\x00\x00" + b"\x00" * size)[:size]
    if kind is Field.COMMAND_ENTRIES:
        # An entry of two empty frames: ACK (client), ROUTED (broker).
        command = bytes((Cmd.ACK if cmd is Cmd.BATCH else Cmd.ROUTED,))
        return (command + b"\x00" * 8 + b"\x00" * size)[:size]
    if kind is Field.STREAM_NAME:
        return b"S" * size
    if kind is Field.ACK_KIND:
        # Too short or too long is refused for its size, whatever the octets.
        return bytes((p.AckKind.ACK,)) * size
    # SEQ, META, FLAG (0: not a duplicate), sids, counts, retry-after and delay: zeros.
    return b"\x00" * size


def message(layout: p.Layout, index: int | None = None, value: bytes = b"") -> list[bytes]:
    """A valid message of ``layout``, frame ``index`` replaced by ``value``."""
    frames = [p.header(layout.cmd), *(sample(f, cmd=layout.cmd) for f in layout.frames[1:])]
    if index is not None:
        frames[index] = value
    return frames


def limits(size: p.Size) -> tuple[list[int], list[int]]:
    """Sizes at the limits of ``size`` (accepted), and one past each (refused)."""
    if size.message or (size.max is None and not size.min and size.step == 1):
        return [], []
    at, past = [size.min], [size.min - 1] if size.min else []
    if size.or_empty:
        at.append(0)
    if size.step > 1:
        at.append(2 * size.step)
        past += [size.min + 1, 2 * size.step - 1]
    if size.max is not None and size.max != size.min:
        at.append(size.max)
    if size.max is not None:
        past.append(size.max + 1)
    return at, [n for n in past if n >= 0 and not (n == 0 and size.or_empty)]


def sized_frames() -> Iterator[tuple[p.Layout, int, p.Frame]]:
    for layout in p.LAYOUTS:
        for i, frame in enumerate(layout.frames):
            if i != p.HEADER_FRAME and limits(frame.size) != ([], []):
                yield layout, i, frame


SIZED = list(sized_frames())
SIZED_IDS = [f"{layout.name}-{frame.name}" for layout, _, frame in SIZED]


def refusal_code(frame: p.Frame) -> ErrorCode:
    return (
        ErrorCode.BAD_TOPIC
        if frame.type in (Field.TOPIC, Field.PATTERN, Field.QUEUE)
        else ErrorCode.BAD_FRAMES
    )


def parser_of(layout: p.Layout) -> Callable[[list[bytes]], p.Command]:
    return p.parse_client if layout.direction is p.Direction.CLIENT else p.parse_broker


# --- every sized frame of every command, through the parsers -------------------------------


@pytest.mark.parametrize("layout", p.LAYOUTS, ids=lambda layout: layout.name)
def test_sample_messages_round_trip(layout: p.Layout) -> None:
    frames = message(layout)
    cmd = parser_of(layout)(frames)
    assert type(cmd).__name__.upper() == layout.name.replace("_", "")
    assert p.encode(cmd) == frames


@pytest.mark.parametrize(("layout", "index", "frame"), SIZED, ids=SIZED_IDS)
def test_parse_at_and_past_every_limit(layout: p.Layout, index: int, frame: p.Frame) -> None:
    parse = parser_of(layout)
    at, past = limits(frame.size)
    assert at, "a sized frame has a limit to be at"
    for n in at:
        frames = message(layout, index, sample(frame, n, layout.cmd))
        assert p.encode(parse(frames)) == frames, n
    for n in past:
        with pytest.raises(ProtocolError) as info:
            parse(message(layout, index, sample(frame, n, layout.cmd)))
        assert info.value.code == refusal_code(frame), (n, info.value.detail)


def test_every_sized_field_type_is_tested() -> None:
    assert {frame.type for _, _, frame in SIZED} == {
        Field.CHANNEL,
        Field.REF,
        Field.TOKEN,
        Field.REPLY_TOKEN,
        Field.SID,
        Field.SIDS,
        Field.TOPIC,
        Field.PATTERN,
        Field.QUEUE,
        Field.COUNT,
        Field.CODE,
        Field.RETRY,
        Field.DROPPED_COUNTS,
        Field.PUBLISH_ENTRIES,
        Field.DELIVER_ENTRIES,
        Field.COMMAND_ENTRIES,
        Field.STREAM_NAME,
        Field.SEQ,
        Field.FLAG,
        Field.ACK_KIND,
        Field.META,
    }


# --- the length fields inside batch entries ----------------------------------------------


def test_publish_entry_topic_length_at_and_past_its_16_bits() -> None:
    at = p.pack_publish_entry(b"a" * p.TOPIC_LENGTH.max, b"")
    assert p.unpack_publish_entries(at) == [(b"a" * p.TOPIC_LENGTH.max, b"", at)]
    # The framing holds it; the topic rules do not (256 bytes at most): 406, not a crash.
    with pytest.raises(ProtocolError) as info:
        p.parse_client([p.H_PUBLISH_BATCH, A, at])
    assert info.value.code == ErrorCode.BAD_TOPIC
    state = broker()
    assert codes(state, [p.H_PUBLISH_BATCH, A, at]) == [ErrorCode.BAD_TOPIC]
    with pytest.raises(ValueError, match="16-bit topic-length"):
        p.pack_publish_entry(b"a" * (p.TOPIC_LENGTH.max + 1), b"")


def test_deliver_entry_sids_length_at_and_past_its_limit() -> None:
    assert p.MAX_ENTRY_SIDS_BYTES == 65_532 == p.SIDS_LENGTH.max // 4 * 4
    sids = S1 * (p.MAX_ENTRY_SIDS_BYTES // 4)
    entry = p.pack_deliver_entry(sids, p.pack_publish_entry(b"a", b"body"))
    cmd = p.parse_broker([p.H_DELIVER_BATCH, A, entry])
    assert p.unpack_deliver_entries(cmd.entries) == [(sids, b"a", b"body")]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="at most 16383 sids"):
        p.pack_deliver_entry(sids + S1, p.pack_publish_entry(b"a", b"body"))


def huge(size: int) -> mmap.mmap:
    """``size`` bytes of address space, never touched: a length to refuse, not data to copy."""
    try:
        return mmap.mmap(-1, size)
    except (OSError, OverflowError, ValueError) as exc:  # pragma: no cover - a small address space
        pytest.skip(f"cannot map {size} bytes: {exc}")


def test_32_bit_lengths_past_their_limit_are_refused_before_any_copy() -> None:
    body = huge(p.BODY_LENGTH.max + 1)
    try:
        with pytest.raises(ValueError, match="32-bit body-length"):
            p.pack_publish_entry(b"a", body)  # type: ignore[arg-type]
        for frames in (
            [p.H_PUBLISH, A, b"", b"a", body],
            [p.H_ACK, A, b"t", body],
            [p.H_DELIVER, A, b"", b"a", b"", body],
        ):
            with pytest.raises(ValueError, match="32-bit frame-length"):
                p.pack_command_entry(frames)  # type: ignore[arg-type]
    finally:
        body.close()


@pytest.mark.parametrize(
    ("entries", "parse"),
    [
        (b"\x00\x01a\xff\xff\xff\xff", p.unpack_publish_entries),
        (b"\x00\x04" + S1 + b"\x00\x01a\xff\xff\xff\xff", p.unpack_deliver_entries),
        (b"\x04\xff\xff\xff\xff", lambda f: p.unpack_command_entries(f, A, p.CLIENT_ENTRY_FRAMES)),
    ],
)
def test_32_bit_lengths_at_their_limit_read_as_truncated(
    entries: bytes, parse: Callable[[bytes], object]
) -> None:
    # 4 GiB of entry cannot be built here; a length of 2**32 - 1 with less after
    # it is read as that length, and refused as running past the frame.
    with pytest.raises(ProtocolError) as info:
        parse(entries)
    assert info.value.code == ErrorCode.BAD_FRAMES


# --- every sized frame of every client command, through the broker -------------------------

MAX = 64  # the max_message_size of the brokers below


def broker() -> BrokerState:
    """A broker with one joined peer, b"peer", on channel A."""
    state = BrokerState(max_message_size=MAX)
    state.handle(b"peer", p.encode(p.Hello(A, p.pack_hello("t"))))
    state.outbox.clear()
    return state


def codes(state: BrokerState, frames: list[bytes]) -> list[int]:
    """The codes of the ERRORs ``frames`` from b"peer" draws; every reply must parse
    and nothing may fail inside the broker."""
    state.handle(b"peer", frames)
    replies = [p.parse_broker(out) for _, out in state.outbox]
    state.outbox.clear()
    assert state.counters["internal_errors"] == 0
    got = [cmd.code for cmd in replies if isinstance(cmd, p.Error)]
    if any(p.H_REPLY in bytes(frame) for frame in frames) or frames[:1] == [p.H_BATCH]:
        # A well-formed token the broker never made (its tag): refused with 401,
        # which these layout tests, about sizes, leave aside.
        got = [code for code in got if code != ErrorCode.PERMISSION_DENIED]
    return got


CLIENT_SIZED = [(lay, i, f) for lay, i, f in SIZED if lay.direction is p.Direction.CLIENT]
# What the sample message of a client command gets from a broker with no
# streams: the stream commands are well-formed but name nothing it has.
BASELINE: dict[Cmd, list[int]] = {
    Cmd.CONSUME: [ErrorCode.NOT_FOUND],  # of stream "S"
    Cmd.STREAM_ACK: [ErrorCode.PERMISSION_DENIED],  # a token it never made
}


@functools.cache
def baseline(cmd: Cmd) -> list[int]:
    """The codes the sample message of ``cmd`` draws, once per command."""
    got = codes(broker(), message(p.LAYOUT[cmd]))
    assert got == BASELINE.get(cmd, []), cmd.name
    return got


def test_the_baselines_are_of_client_commands() -> None:
    assert {cmd: baseline(cmd) for cmd in BASELINE} == BASELINE
    for cmd in BASELINE:
        assert p.LAYOUT[cmd].direction is p.Direction.CLIENT


@pytest.mark.parametrize(
    ("layout", "index", "frame"),
    CLIENT_SIZED,
    ids=[f"{lay.name}-{f.name}" for lay, _, f in CLIENT_SIZED],
)
def test_broker_at_and_past_every_limit(layout: p.Layout, index: int, frame: p.Frame) -> None:
    at, past = limits(frame.size)
    # At a limit the message is as good as the sample: it gets what the sample gets.
    well_formed = baseline(layout.cmd)
    for n in at:
        state = broker()
        got = codes(state, message(layout, index, sample(frame, n, layout.cmd)))
        if frame.type is Field.COMMAND_ENTRIES and n == frame.size.min:
            # The shortest entries frame is taken; its one entry, an ACK of two
            # empty frames, is then refused as that ACK alone would be.
            assert (state.counters["batches_in"], got) == (1, [ErrorCode.BAD_FRAMES])
        else:
            assert got == well_formed, n
    for n in past:
        frames = message(layout, index, sample(frame, n, layout.cmd))
        assert codes(broker(), frames) == [refusal_code(frame)], n


def _bodies(body: bytes) -> list[list[bytes]]:
    # Every client message that carries a body the broker holds to max_message_size.
    alone = [
        message(lay, i, body)
        for lay in p.LAYOUTS
        for i, frame in enumerate(lay.frames)
        if frame.size.message
    ]
    assert {frames[0] for frames in alone} == {p.H_PUBLISH, p.H_ACK, p.H_REQUEST, p.H_REPLY}
    batched = [p.encode(p.Batch(A, p.pack_command_entry(frames))) for frames in alone]
    return [*alone, *batched, [p.H_PUBLISH_BATCH, A, p.pack_publish_entry(b"a", body)]]


def test_broker_bodies_at_and_past_max_message_size() -> None:
    for frames in _bodies(b"x" * MAX):
        assert codes(broker(), frames) == [], frames[0]
    for frames in _bodies(b"x" * (MAX + 1)):
        assert codes(broker(), frames) == [ErrorCode.TOO_LARGE], frames[0]


def test_max_message_size_fits_the_32_bit_lengths_of_entries() -> None:
    assert p.MAX_MESSAGE_SIZE == 2**32 - 1 == p.BODY_LENGTH.max == p.FRAME_LENGTH.max
    assert BrokerState(max_message_size=p.MAX_MESSAGE_SIZE).max_message_size == p.MAX_MESSAGE_SIZE
    for make in (BrokerState, Broker):
        with pytest.raises(ValueError, match="at most 4294967295"):
            make(max_message_size=p.MAX_MESSAGE_SIZE + 1)
