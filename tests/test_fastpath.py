"""The private-API fast paths of ``zmqbus._fastpath``: each is in use on the
versions we test, each has a public fallback that means the same, and
``ZMQBUS_PURE=1`` forces every fallback and the pure twins of the compiled
functions (CI runs the whole suite that way); ``ZMQBUS_PURE_PYTHON=1`` the pure
twins alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
import uuid
from dataclasses import dataclass

import pytest
import zmq

from zmqbus import _fastpath, _wire
from zmqbus.message import make_message

PURE = os.environ.get("ZMQBUS_PURE", "") not in ("", "0")
PURE_PYTHON = PURE or os.environ.get("ZMQBUS_PURE_PYTHON", "") not in ("", "0")


def test_every_fast_path_is_in_use_unless_pure() -> None:
    # A pyzmq or Python upgrade that breaks a private detail must show up here,
    # not as a silent slowdown.
    private = {k: v for k, v in _fastpath.ACTIVE.items() if k != "compiled"}
    assert set(private) == {"uuid", "zmq_backend", "dict_writes:Message"}
    assert all(v is not PURE for v in private.values()), _fastpath.ACTIVE
    # The compiled twins: in use where built, never when pure.
    assert _fastpath.ACTIVE["compiled"] is (_fastpath.compiled() is not None)
    if PURE_PYTHON:
        assert _fastpath.implementation() == "pure"


@pytest.mark.parametrize(
    ("name", "active"),
    [
        ("ZMQBUS_PURE", "[] pure"),
        # The pure-Python fast paths stay: only the compiled twins are off.
        ("ZMQBUS_PURE_PYTHON", "['dict_writes:Message', 'uuid', 'zmq_backend'] pure"),
    ],
)
def test_pure_environment_forces_its_fallbacks_and_the_bus_still_works(
    name: str, active: str
) -> None:
    script = textwrap.dedent(
        """
        import uuid
        from zmqbus import Broker, Bus, _fastpath
        with Broker("tcp://127.0.0.1:0") as broker:
            ch = uuid.uuid4()
            with Bus(broker.address, ch) as a, Bus(broker.address, ch) as b:
                sub = b.subscribe("t")
                assert a.publish("t", b"x").delivered == 1
                msg = sub.get(5)
                assert msg.payload == b"x" and isinstance(msg.id, uuid.UUID)
        print(sorted(k for k, v in _fastpath.ACTIVE.items() if v), _fastpath.implementation())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQBUS_PURE")}
    env[name] = "1"
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == active


def test_uuid_fallback_and_fast_path_agree() -> None:
    for raw in (bytes(16), b"\xff" * 16, os.urandom(16)):
        assert _fastpath._uuid_fast(raw) == _fastpath._uuid_public(raw) == uuid.UUID(bytes=raw)
        assert _fastpath.uuid_from_bytes(raw).bytes == raw


def test_socket_calls_fall_back_when_pyzmq_has_no_usable_backend() -> None:
    fake = types.SimpleNamespace(Socket=zmq.Socket)  # no .backend at all
    send, get = _fastpath.socket_calls(fake)
    assert (send, get) == (zmq.Socket.send, zmq.Socket.getsockopt)
    # Asked again of the real module, ACTIVE again says what the modules use.
    fast_send, fast_get = _fastpath.socket_calls(zmq)
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://fastpath-test")
        b.connect("inproc://fastpath-test")
        for s, g in ((send, get), (fast_send, fast_get)):
            s(a, b"one", int(zmq.NOBLOCK))
            assert int(g(b, int(zmq.EVENTS))) & int(zmq.POLLIN)
            assert b.recv() == b"one"
    finally:
        a.close(0)
        b.close(0)


def test_dict_writes_check_refuses_a_class_with_slots() -> None:
    @dataclass(frozen=True, slots=True)
    class Slotted:
        x: int

    assert not _fastpath.dict_writes_work(Slotted, x=1)
    _fastpath.ACTIVE.pop("dict_writes:Slotted")


@pytest.mark.parametrize("raw", [True, False])
def test_made_messages_equal_constructed_ones(raw: bool) -> None:
    from datetime import UTC, datetime

    from zmqbus import Message

    mid = uuid.uuid4()
    ts = datetime.now(UTC)
    made = make_message(mid.bytes if raw else mid, "t.x", b"p", {"h": "v"}, ts)
    assert made == Message(mid, "t.x", b"p", {"h": "v"}, ts)
    assert made.id == mid


def test_wire_uses_what_fastpath_chose() -> None:
    assert _wire.get_option is _fastpath.socket_calls(zmq)[1]
