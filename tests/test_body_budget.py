"""Decoding a message, reply or ACK body is bounded: a hostile body of the
allowed size cannot decode into a million objects (issue #13)."""

from __future__ import annotations

import time

import msgpack  # type: ignore[import-untyped]
import pytest

from zmqbus import protocol as p

MID = bytes(16)
TS = msgpack.Timestamp.from_unix_nano(1_700_000_000_000_000_000)
HOSTILE = {
    "a million empty arrays": [MID, TS, {}, b"x", [[] for _ in range(1_000_000)]],
    "a tree of 8-element arrays": [MID, TS, {}, b"x", [[[[[[[]] * 8] * 8] * 8] * 8] * 8] * 8],
    "250,000 headers": [MID, TS, {str(i): "" for i in range(250_000)}, b"x"],
}


@pytest.mark.parametrize("obj", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_body_of_too_many_objects_is_refused_at_once(obj: object) -> None:
    body = msgpack.packb(obj, use_bin_type=True)
    t0 = time.process_time()
    with pytest.raises(p.ProtocolError) as err:
        p.message_fields(body)
    assert err.value.code == p.ErrorCode.BAD_BODY
    with pytest.raises(p.ProtocolError):
        p.unpack_message(body)
    assert time.process_time() - t0 < 0.05


def test_large_bodies_within_the_budget_still_decode() -> None:
    headers = {f"h{i}": "v" for i in range(p.MAX_BODY_ITEMS)}
    for body in (
        p.pack_message(MID, 1, {}, b"x" * (1 << 20)),
        p.pack_message(MID, 1, headers, b"x" * 1000),
        msgpack.packb([MID, TS, {"a": "b"}, b"x" * 1000, [1, 2], {"future": "field"}]),
    ):
        assert p.message_fields(body)[0] == MID
    ack = p.pack_ack(0, 0, ["error"] * 1000)
    assert len(p.unpack_ack(ack).errors) == 1000
