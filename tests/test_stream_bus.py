"""Durable streams through both faces over real sockets (issue #15): publish
into a stream, consume with acks, handlers that ack and nak, a worker killed
mid-job whose job another worker redoes, the dead letter stream, dedup on
retry, typed errors; and the broker killed with SIGKILL mid-stream and
restarted on the same data_dir (a few kills here, the loop of 20 in the
``kill9`` tier)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmqbus import (
    Broker,
    Bus,
    ConsumerNotFound,
    Message,
    StreamExists,
    StreamNotFound,
    ZmqbusError,
    aio,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker("tcp://127.0.0.1:0", data_dir=tmp_path / "data") as b:
        yield b


def test_publish_consume_ack_and_info(broker: Broker) -> None:
    ch = uuid.uuid4()
    with Bus(broker.address, ch) as bus:
        info = bus.add_stream("ORDERS", ["orders.>"], max_msgs=1000)
        assert (info.name, info.subjects, info.messages) == ("ORDERS", ("orders.>",), 0)
        assert bus.add_stream("ORDERS", ["orders.>"], max_msgs=1000) == info  # idempotent
        with pytest.raises(StreamExists):
            bus.add_stream("ORDERS", ["orders.eu.>"])
        results = [bus.publish("orders.created", str(i).encode()) for i in range(3)]
        assert [(r.stream, r.seq, r.duplicate) for r in results] == [
            ("ORDERS", 1, False),
            ("ORDERS", 2, False),
            ("ORDERS", 3, False),
        ]
        assert bus.publish("audit.x", b"").stream is None
        c = bus.consume("ORDERS", durable="billing", filter="orders.created")
        got = [c.get(timeout=5) for _ in range(3)]
        assert [(m.stream, m.seq, m.deliveries, m.payload) for m in got] == [
            ("ORDERS", 1, 1, b"0"),
            ("ORDERS", 2, 1, b"1"),
            ("ORDERS", 3, 1, b"2"),
        ]
        for m in got:
            m.ack()
        with pytest.raises(ZmqbusError, match="already settled"):
            got[0].ack()
        # A round trip after the acks: the broker has handled them.
        info_c = bus.consumer_info("ORDERS", "billing")
        assert (info_c.delivered, info_c.ack_floor, info_c.pending) == (3, 3, 0)
        assert bus.stream_info("ORDERS").messages == 3
        assert [s.name for s in bus.streams()] == ["ORDERS"]
        stored = bus.get_message("ORDERS", 2)
        assert (stored.topic, stored.payload, stored.seq) == ("orders.created", b"1", 2)
        with pytest.raises(StreamNotFound):
            bus.stream_info("NOPE")
        with pytest.raises(ConsumerNotFound):
            bus.consumer_info("ORDERS", "nobody")
        with pytest.raises(ValueError):
            bus.add_stream("bad name", ["x"])
        c.unsubscribe()
        assert bus.consumer_info("ORDERS", "billing").waiting == 0
        assert bus.purge_stream("ORDERS") == 3
        bus.delete_consumer("ORDERS", "billing")
        bus.delete_stream("ORDERS")
        assert bus.streams() == []


def test_a_retry_with_the_same_msg_id_is_stored_once(broker: Broker) -> None:
    with Bus(broker.address, uuid.uuid4()) as bus:
        bus.add_stream("PAY", ["pay.>"], storage="memory")
        got = threading.Event()
        bus.subscribe("pay.>", handler=lambda m: got.set())
        first = bus.publish("pay.1", b"x", msg_id="payment-42")
        again = bus.publish("pay.1", b"x", msg_id="payment-42")
        assert (first.seq, first.duplicate, first.delivered) == (1, False, 1)
        assert (again.seq, again.duplicate, again.delivered) == (1, True, 0)
        assert got.wait(5)
        assert bus.stream_info("PAY").messages == 1


def test_jobs_a_killed_worker_is_redone_and_a_poison_job_dead_lettered(broker: Broker) -> None:
    ch = uuid.uuid4()
    with Bus(broker.address, ch) as boss:
        boss.add_stream("JOBS", ["jobs.>"])
        boss.add_stream("DLQ", ["dlq.>"])
        config = {
            "durable": "workers",
            "ack_wait": 30.0,
            "max_deliver": 2,
            "backoff": [0.05],
            "dead_letter": "dlq.jobs",
            "max_ack_pending": 1,
        }
        # A worker takes job 1 and dies (its bus goes away without acking).
        doomed = Bus(broker.address, ch)
        taken = doomed.consume("JOBS", **config)
        boss.publish("jobs.resize", b"img-1")
        first = taken.get(timeout=5)
        assert first.payload == b"img-1"
        doomed.close()
        # Another worker gets it at once, without waiting out ack_wait.
        done: list[tuple[bytes, int]] = []
        finished = threading.Event()

        def work(msg: Message) -> None:
            if msg.payload == b"poison":
                raise ValueError("cannot resize this")
            done.append((msg.payload, msg.deliveries))
            finished.set()

        with Bus(broker.address, ch) as worker:
            worker.consume("JOBS", handler=work, **config)
            assert finished.wait(5)
            assert done == [(b"img-1", 2)]
            dlq = boss.consume("DLQ", deliver="all")
            boss.publish("jobs.resize", b"poison")
            dead = dlq.get(timeout=10)
            assert dead.topic == "dlq.jobs" and dead.payload == b"poison"
            assert dead.headers["zmqbus-stream"] == "JOBS"
            assert dead.headers["zmqbus-deliveries"] == "2"
            assert dead.headers["zmqbus-error"] == "ValueError: cannot resize this"
            dead.ack()


def test_the_asyncio_face(broker: Broker) -> None:
    async def main() -> list[tuple[int | None, bytes]]:
        async with aio.Bus(broker.address, uuid.uuid4()) as bus:
            await bus.add_stream("A", ["a.>"], storage="memory")
            r = await bus.publish("a.1", b"one")
            assert (r.stream, r.seq) == ("A", 1)
            await bus.publish("a.2", b"two")
            c = await bus.consume("A", durable="d")
            out = []
            for _ in range(2):
                m = await c.get(timeout=5)
                m.ack()
                out.append((m.seq, m.payload))
            info = await bus.consumer_info("A", "d")
            assert info.ack_floor == 2
            assert (await bus.get_message("A", 2)).payload == b"two"
            with pytest.raises(StreamNotFound):
                await bus.stream_info("B")
            return out

    assert asyncio.run(main()) == [(1, b"one"), (2, b"two")]


def test_an_asyncio_handler_acks_on_return_and_naks_on_raise(broker: Broker) -> None:
    async def main() -> list[tuple[int | None, int]]:
        async with aio.Bus(broker.address, uuid.uuid4()) as bus:
            await bus.add_stream("H", ["h.>"], storage="memory")
            seen: list[tuple[int | None, int]] = []
            done = asyncio.Event()

            async def handle(msg: Message) -> None:
                seen.append((msg.seq, msg.deliveries))
                if msg.deliveries == 1:
                    raise RuntimeError("try again")
                done.set()

            await bus.consume("H", handle, durable="d", backoff=[0.01])
            await bus.publish("h.1", b"x")
            await asyncio.wait_for(done.wait(), 5)
            info = await bus.consumer_info("H", "d")
            assert info.ack_floor == 1 and info.redelivered == 1
            return seen

    assert asyncio.run(main()) == [(1, 1), (1, 2)]


def test_a_corrupt_data_dir_is_a_typed_error_and_the_cli_says_so(tmp_path: Path) -> None:
    from zmqbus.store import StoreError

    data = tmp_path / "data"
    data.mkdir()
    (data / "streams.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"streams\.sqlite3"):
        Broker("tcp://127.0.0.1:0", data_dir=data)
    done = subprocess.run(
        [sys.executable, "-m", "zmqbus", "broker", "--bind", "tcp://127.0.0.1:0",
         "--data-dir", str(data)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1 and "cannot open the stream store" in done.stderr


# --- kill -9 of the broker ------------------------------------------------------------


def _start(data: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "zmqbus", "broker", "--bind", "tcp://127.0.0.1:0",
         "--data-dir", str(data)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on" in line:
            # Keep reading its log, or a chatty broker would block on a full pipe.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, line.rsplit(" ", 1)[1].strip()
    raise AssertionError(f"broker did not start: exit {proc.wait()}")


def kill_cycle(data: Path, rng: random.Random, channel: uuid.UUID, publishers: int = 3) -> None:
    """One round: publishers publish confirmed into JOBS while a durable
    consumer acks; the broker is SIGKILLed once a random number of publishes
    returned, then restarted on ``data``. Every publish that returned is stored
    exactly once at its sequence, in per-publisher order, and the consumer
    resumes after its last confirmed ack."""
    proc, address = _start(data)
    returned: dict[int, list[tuple[int, int]]] = {n: [] for n in range(publishers)}
    count = 0
    cond = threading.Condition()
    kill_at = rng.randint(5, 120)
    with Bus(address, channel) as admin:
        admin.add_stream("JOBS", ["jobs.>"])
        start = admin.stream_info("JOBS").last_seq
        consumer = admin.consume("JOBS", durable="acker", max_ack_pending=50)
        confirmed_acks = admin.consumer_info("JOBS", "acker").ack_floor

        def publish(n: int) -> None:
            nonlocal count
            bus = Bus(address, channel, connect_timeout=5)
            try:
                i = 0
                while True:
                    tag = f"{n}:{i}:{uuid.uuid4().hex}"
                    r = bus.publish(f"jobs.{n}", tag.encode(), timeout=2, msg_id=tag)
                    assert r.seq is not None
                    returned[n].append((i, r.seq))
                    i += 1
                    with cond:
                        count += 1
                        cond.notify_all()
            except ZmqbusError:
                return  # the broker died under it
            finally:
                bus.close()

        threads = [threading.Thread(target=publish, args=(n,)) for n in range(publishers)]
        for t in threads:
            t.start()
        acked = 0
        with cond:
            while count < kill_at:
                cond.wait(5)
                # Ack what has come in, and confirm the acks with a round trip.
                while True:
                    try:
                        msg = consumer.get(timeout=0)
                    except TimeoutError:
                        break
                    msg.ack()
                    acked += 1
        confirmed_acks = admin.consumer_info("JOBS", "acker").ack_floor
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for t in threads:
            t.join(30)
    proc, address = _start(data)
    try:
        with Bus(address, channel) as bus:
            info = bus.stream_info("JOBS")
            stored: dict[int, bytes] = {}
            for seq in range(start + 1, info.last_seq + 1):
                stored[seq] = bus.get_message("JOBS", seq).payload
            seen: dict[int, list[int]] = {n: [] for n in range(publishers)}
            tags = set()
            for seq in sorted(stored):
                tag = stored[seq].decode()
                assert tag not in tags, f"stored twice: {tag}"
                tags.add(tag)
                n, i, _ = tag.split(":")
                seen[int(n)].append(int(i))
            for n in range(publishers):
                assert seen[n] == sorted(seen[n]), f"publisher {n} out of order"
                for i, seq in returned[n]:
                    assert stored.get(seq, b"").decode().startswith(f"{n}:{i}:"), (n, i, seq)
            # The durable resumes after its last confirmed ack.
            c = bus.consume("JOBS", durable="acker", max_ack_pending=50)
            first = c.get(timeout=5) if info.last_seq > confirmed_acks else None
            if first is not None:
                assert first.seq is not None and first.seq > confirmed_acks
            c.unsubscribe()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


@pytest.mark.timeout(180)
def test_broker_killed_mid_stream_loses_nothing_that_returned(tmp_path: Path) -> None:
    rng = random.Random(1507)
    channel = uuid.uuid4()
    for _ in range(3):
        kill_cycle(tmp_path / "data", rng, channel)


@pytest.mark.kill9
@pytest.mark.timeout(1800)
def test_twenty_kills_at_random_points(tmp_path: Path) -> None:
    rng = random.Random()
    channel = uuid.uuid4()
    for _ in range(20):
        kill_cycle(tmp_path / "data", rng, channel)
