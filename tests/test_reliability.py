"""Faults production brings: a broker restarted or killed, a subscriber killed,
heartbeats, graceful shutdown, and the operator's view (STATS)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from brokers import BrokerProcess, free_port

from zmqbus import Broker, Bus, HandlerError, Message, PublishResult, ZmqbusError
from zmqbus import protocol as p
from zmqbus._client import ClientCore
from zmqbus._routing import BrokerState
from zmqbus.admin import broker_stats
from zmqbus.aio import Bus as AsyncBus

# --- in memory: the rules ----------------------------------------------------


def test_broker_expires_silent_peer_and_beats_for_live_one() -> None:
    state = BrokerState()
    ch = uuid.uuid4().bytes
    for ident in (b"A", b"B"):
        state.handle(ident, [p.H_HELLO, ch, p.pack_hello("t", heartbeat=1000)], 100.0)
    welcome = p.unpack_welcome(state.outbox[0][1][2])
    assert welcome["heartbeat"] == 1000
    state.handle(b"B", [p.H_SUBSCRIBE, ch, b"\x01", b"\0\0\0\1", b"t", b""])
    state.outbox.clear()
    assert state.tick(100.5) == 101.0  # nothing due yet
    assert not state.outbox
    state.tick(101.0)  # both due a heartbeat
    assert sorted(i for i, f in state.outbox if f[0] == p.H_BROKER_HEARTBEAT) == [b"A", b"B"]
    state.outbox.clear()
    state.handle(b"A", [p.H_HEARTBEAT, ch], 102.5)  # A speaks, B stays silent
    state.tick(103.5)
    assert set(state.peers) == {b"A"}  # B: 3.5 s silent > 3 x 1 s
    assert state.counters["expired"] == 1 and state.subscription_count() == 0


@pytest.mark.parametrize(
    "frames",
    [
        [p.H_STATS, b"\0" * 16, b"r"],  # answered, though it names no channel joined
        [p.SIGNATURE + bytes((9, p.Cmd.HEARTBEAT))],  # refused: 505
        [p.H_PUBLISH],  # refused: 400
    ],
    ids=["stats", "wrong-version", "malformed"],
)
def test_any_message_from_a_joined_peer_is_a_sign_of_life(frames: list[bytes]) -> None:
    """The spec counts any message as a heartbeat: a peer that only sends
    STATS, or only messages the broker refuses, is not expired."""
    state = BrokerState()
    ch = uuid.uuid4().bytes
    state.handle(b"A", [p.H_HELLO, ch, p.pack_hello("t", heartbeat=1000)], 100.0)
    for t in (102.0, 104.0, 106.0):
        state.handle(b"A", frames, t)
        state.tick(t + 1.0)
    assert set(state.peers) == {b"A"} and state.counters["expired"] == 0
    state.tick(110.0)  # then silent for 4 s > 3 x 1 s
    assert not state.peers and state.counters["expired"] == 1


def test_peer_without_heartbeat_is_never_expired() -> None:
    state = BrokerState()
    ch = uuid.uuid4().bytes
    state.handle(b"A", [p.H_HELLO, ch, p.pack_hello("t")])
    assert "heartbeat" not in p.unpack_welcome(state.outbox[0][1][2])
    state.take_outgoing()
    # Never expired: only its connection is probed, once idle for idle_probe_seconds.
    idle = state.limits.idle_probe_seconds
    assert state.tick(0.0) == idle
    assert state.tick(idle - 0.001) == idle and state.take_outgoing() == []
    assert state.tick(10_000.0) == 10_000.0 + idle and b"A" in state.peers
    assert state.take_outgoing() == [(b"A", [p.H_BROKER_HEARTBEAT, ch])]
    assert state.counters["expired"] == 0 and state.counters["idle_probes"] == 1


def test_client_core_notices_silent_broker_and_rejoins() -> None:
    clock = [0.0]
    core = ClientCore(uuid.uuid4().bytes, heartbeat=1.0, clock=lambda: clock[0])
    from concurrent.futures import Future

    hello: Future[object] = Future()
    core.connect(hello, 10.0, 10.0)
    core.outbox.clear()
    body = p.pack_welcome("b", 1 << 20, heartbeat=1000)
    core.receive([p.H_WELCOME, core.channel, body])
    assert core.state == "ready" and hello.done()

    class Sink:
        pattern = "a.>"

        def offer(self, m: Message, a: int | None) -> int:
            return 0

        def end(self) -> None:
            pass

    sub: Future[None] = Future()
    core.subscribe(Sink(), sub, 50.0, 50.0)
    core.receive([p.H_OK, core.channel, core.outbox[-1][2]])
    core.outbox.clear()
    assert core.next_deadline() == 1.0  # the first heartbeat
    core.expire(1.0)
    assert core.outbox.pop()[0] == p.H_HEARTBEAT
    core.expire(3.5)  # 3.5 s without a word from the broker
    assert core.state == "reconnecting" and core.events == ["disconnected"]
    pub: Future[PublishResult] = Future()
    core.publish(b"a.b", p.pack_message(b"\0" * 16, 0, {}, b"x"), pub, 9.0, 5.5)
    assert core.holding  # the publish waits for the new session
    core.expire(core.next_deadline() or 0.0)
    assert core.want_socket
    core.rejoin(clock[0])
    heads = [f[0] for f in core.outbox]
    assert heads == [p.H_HELLO, p.H_SUBSCRIBE, p.H_PUBLISH]  # HELLO first, then restore
    core.receive([p.H_WELCOME, core.channel, body])
    assert core.state == "ready" and core.events[-1] == "reconnected"


# --- real sockets: restarts --------------------------------------------------


def test_threaded_bus_survives_broker_restart() -> None:
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    broker = Broker(addr).start()
    ch = uuid.uuid4()
    lost, back = threading.Event(), threading.Event()
    with (
        Bus(addr, ch) as pub,
        Bus(addr, ch, on_disconnected=lost.set, on_reconnected=back.set) as sub,
    ):
        s = sub.subscribe("orders.>")
        h: list[bytes] = []
        sub.subscribe("jobs", handler=lambda m: h.append(m.payload), queue="w")
        assert pub.publish("orders.a", b"1").delivered == 1
        started = time.monotonic()
        broker.stop()  # graceful: BYE tells the buses at once
        assert lost.wait(5)
        assert sub.state == "reconnecting"
        broker = Broker(addr).start()
        try:
            assert back.wait(10)
            took = time.monotonic() - started
            assert sub.state == "connected"
            # subscriptions, queue group included, were restored without user code
            deadline = time.monotonic() + 10
            while True:
                try:
                    r = pub.publish("orders.b", b"2", timeout=1)
                    break
                except ZmqbusError:
                    assert time.monotonic() < deadline
            assert r.delivered == 1
            assert pub.publish("jobs", b"j").delivered == 1
            assert [m.payload for m in (s.get(timeout=5), s.get(timeout=5))] == [b"1", b"2"]
            assert h == [b"j"]
            print(f"reconnected {took * 1000:.0f} ms after a graceful broker restart")
        finally:
            broker.stop()


def test_async_bus_survives_broker_restart() -> None:
    async def main() -> None:
        addr = f"tcp://127.0.0.1:{free_port()}"
        broker = Broker(addr).start()
        ch = uuid.uuid4()
        back = asyncio.Event()
        try:
            async with (
                AsyncBus(addr, ch) as pub,
                AsyncBus(addr, ch, on_reconnected=back.set) as sub,
            ):
                s = await sub.subscribe("x")
                broker.stop()
                broker = Broker(addr).start()
                await asyncio.wait_for(back.wait(), 10)
                for _ in range(50):
                    try:
                        r = await pub.publish("x", b"after", timeout=1)
                        break
                    except ZmqbusError:
                        continue
                assert r.delivered == 1
                assert (await s.get(5)).payload == b"after"
        finally:
            broker.stop()

    asyncio.run(main())


@pytest.mark.timeout(120)
def test_broker_sigkill_mid_stream(broker_process: BrokerProcess) -> None:
    ch = uuid.uuid4()
    outcomes: list[tuple[int, bool]] = []  # (seq, confirmed delivered) or raised
    stop = threading.Event()
    with (
        Bus(broker_process.address, ch, heartbeat=0.3) as pub,
        Bus(broker_process.address, ch, heartbeat=0.3) as sub,
    ):
        s = sub.subscribe("stream", maxsize=100_000)

        def publisher() -> None:
            seq = 0
            while not stop.is_set():
                try:
                    r = pub.publish("stream", str(seq).encode(), timeout=1.0)
                    outcomes.append((seq, r.delivered == 1))
                except ZmqbusError:
                    outcomes.append((seq, False))
                seq += 1

        t = threading.Thread(target=publisher)
        t.start()
        try:
            while len(outcomes) < 50:
                t.join(0.01)
            broker_process.kill(signal.SIGKILL)
            killed_at = len(outcomes)
            broker_process.start()
            # recovered without user action: confirmed publishes succeed again
            deadline = time.monotonic() + 30
            while not [o for o in outcomes[killed_at:] if o[1]]:
                assert time.monotonic() < deadline, "no publish succeeded after the restart"
                t.join(0.05)
            target = len(outcomes) + 20
            while len(outcomes) < target:
                t.join(0.05)
        finally:
            stop.set()
            t.join(10)
        received: set[bytes] = set()
        while True:
            try:
                received.add(s.get(timeout=0.5).payload)
            except TimeoutError:
                break
    confirmed = {str(seq).encode() for seq, ok in outcomes if ok}
    # every publish either succeeded and was received, or raised
    assert confirmed <= received
    assert len(confirmed) >= 70


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("sig", "counter"),
    [
        # killed: the OS closes its connection; the broker's next send to it fails
        (signal.SIGKILL, "unroutable"),
        # frozen: the connection stays open; only the heartbeat window tells
        (signal.SIGSTOP, "expired"),
    ],
    ids=["sigkill", "sigstop"],
)
def test_dead_subscriber_is_dropped_and_publisher_stops_waiting(
    broker_process: BrokerProcess, sig: int, counter: str
) -> None:
    ch = uuid.uuid4()
    code = (
        "import sys, threading, uuid\n"
        "from zmqbus import Bus\n"
        f"b = Bus({broker_process.address!r}, uuid.UUID({str(ch)!r}), heartbeat=0.3)\n"
        "b.subscribe('work', handler=lambda m: threading.Event().wait())\n"
        "print('ready', flush=True)\n"
        "threading.Event().wait()\n"
    )
    victim = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout is not None and victim.stdout.readline().strip() == "ready"
        with Bus(broker_process.address, ch) as pub:
            outcome: list[BaseException | PublishResult] = []
            t = threading.Thread(
                target=lambda: outcome.append(_try(lambda: pub.publish("work", b"", timeout=30)))
            )
            t.start()
            while broker_stats(broker_process.address)["pending_confirmations"] == 0:
                t.join(0.02)
            os.kill(victim.pid, sig)
            started = time.monotonic()
            t.join(20)
            waited = time.monotonic() - started
        # the broker noticed within the heartbeat window (3 x 0.3 s, plus a tick)
        assert len(outcome) == 1 and isinstance(outcome[0], HandlerError)
        assert "left" in str(outcome[0])
        assert waited < 5, waited
        stats = broker_stats(broker_process.address)
        assert stats["counters"].get(counter, 0) >= 1
    finally:
        victim.kill()
        victim.wait(10)


def _try(fn: object) -> BaseException | PublishResult:
    try:
        return fn()  # type: ignore[operator,no-any-return]
    except BaseException as exc:
        return exc


def test_sigterm_on_cli_broker_tells_buses(broker_process: BrokerProcess) -> None:
    lost = threading.Event()
    with Bus(broker_process.address, uuid.uuid4(), on_disconnected=lost.set) as bus:
        bus.subscribe("x")
        broker_process.kill(signal.SIGTERM)
        assert broker_process.proc is not None and broker_process.proc.returncode == 0
        assert lost.wait(5)  # told by BYE, not by a heartbeat timeout
        assert bus.state == "reconnecting"


# --- the operator's view -----------------------------------------------------


def test_stats_command_and_function(broker_process: BrokerProcess) -> None:
    ch = uuid.uuid4()
    with Bus(broker_process.address, ch) as a, Bus(broker_process.address, ch) as b:
        b.subscribe("t.*")
        b.subscribe("t.>", queue="q")
        a.publish("t.x", b"")
        stats = broker_stats(broker_process.address)
        assert (stats["peers"], stats["channels"], stats["subscriptions"]) == (2, 1, 2)
        assert stats["queue_groups"] == 1 and stats["counters"]["published"] >= 1
        out = subprocess.run(
            [sys.executable, "-m", "zmqbus", "stats", "--address", broker_process.address],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["peers"] == 2


def test_stats_unreachable_exits_3() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    out = subprocess.run(
        [sys.executable, "-m", "zmqbus", "stats", "--address", address, "--timeout", "0.3"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 3


def test_frames_held_while_reconnecting_are_bounded() -> None:
    from concurrent.futures import Future

    from zmqbus import _client

    clock = [0.0]
    core = ClientCore(uuid.uuid4().bytes, heartbeat=1.0, clock=lambda: clock[0])
    core.connect(Future(), 10.0, 10.0)
    core.receive([p.H_WELCOME, core.channel, p.pack_welcome("b", 1 << 20, heartbeat=1000)])
    core.outbox.clear()
    core.receive([p.H_BYE, core.channel])
    assert core.holding
    limit = _client.MAX_HELD_FRAMES
    for _ in range(limit + 5):
        core.publish(b"t", b"body", None, 0.0, 1.0)
    assert len(core.outbox) == limit
    assert core.counters["held_dropped"] == 5
