"""Broker state and rules, with no sockets: frames in, (identity, frames) out.

The socket loop in ``broker.py`` only moves frames, so every routing rule is
testable in memory. Its whole contract with this module is four calls:

* ``handle(ident, frames, now)``: one message as a ROUTER socket delivers it
  (identity split off), received at ``now`` (``time.monotonic()``);
* ``take_outgoing()``: everything to send since the last call, joined into
  BROKER_BATCHes for the peers that asked, each owed DROPPED notice first;
* ``send_failed(ident, frames, gone=...)``: the socket refused one of those;
* ``tick(now)``: heartbeats and liveness; returns when it is next due.

Strategy for the hot path (PUBLISH, REQUEST, ACK): compare the header frame
to precomputed bytes, look the topic frame up in a per-channel cache of
target (peer, sids) pairs, and forward the received topic and body frames
unchanged: no msgpack decoding and no re-encoding per subscriber. Queue groups
are resolved per message (one member each) on top of the cached plain targets.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from . import protocol as p
from ._batching import Outgoing, coalesce, fan_out, publish_batch_messages
from ._channel import CACHE_LIMIT, CacheBudget, Channel
from ._connections import Connections, ConnKey
from ._peer import Peer
from ._rates import Bucket
from ._streams import TOKEN_BYTES, Streams
from .errors import ProtocolError
from .limits import Limits
from .protocol import (
    ACK_BODY,
    ACK_TOKEN,
    DELIVER_SIDS,
    DELIVER_TOKEN,
    ENTRIES_FRAME,
    PUBLISH_BODY,
    PUBLISH_REF,
    PUBLISH_TOPIC,
    REF_FRAME,
    REPLY_BODY,
    REPLY_TOKEN,
    REQUEST_BODY,
    REQUEST_REF,
    REQUEST_TOPIC,
    Cmd,
    ErrorCode,
)
from .store import Store, open_store
from .users import ANONYMOUS, User

__all__ = ["CHANNEL_COLUMNS", "PEER_COLUMNS", "STATS_TOP", "STATS_TOP_MAX", "BrokerState"]

log = logging.getLogger("zmqbus.broker")

# A peer that asked for heartbeats is dead after this many silent intervals (as in 7/MDP).
LIVENESS = 3
# Bounds on the heartbeat interval a client may ask for, in milliseconds.
HEARTBEAT_MIN_MS = p.HEARTBEAT_MIN_MS
HEARTBEAT_MAX_MS = p.HEARTBEAT_MAX_MS

# Frame counts of the commands handled here by position.
_N = p.CLIENT_FRAMES
_N_PUBLISH, _N_REQUEST, _N_REPLY, _N_ACK = (
    _N[Cmd.PUBLISH],
    _N[Cmd.REQUEST],
    _N[Cmd.REPLY],
    _N[Cmd.ACK],
)
_N_PUBLISH_BATCH, _N_BATCH = _N[Cmd.PUBLISH_BATCH], _N[Cmd.BATCH]
_N_STREAM_ACK = _N[Cmd.STREAM_ACK]
# A plain stream ACK (kind ACK, no delay, no text) with a token of the size the
# broker makes: the bulk of a consumer's traffic, taken without parse_client
# (a token of another size goes the long way, to its 400).
_PLAIN_STREAM_ACK = bytes((p.AckKind.ACK,))
_H_STREAM_ACK = p.H_STREAM_ACK
_ACK = p.AckKind.ACK
_DROPPED_COUNTS, _DROPPED_THROTTLED = p.LAYOUT[Cmd.DROPPED].at("counts", "throttled")
_N_DELIVER_BATCH, _N_BROKER_BATCH = (
    p.BROKER_FRAMES[Cmd.DELIVER_BATCH],
    p.BROKER_FRAMES[Cmd.BROKER_BATCH],
)
# DELIVER and ASK are lost alike (undeliverable): same count, same place of their sids.
_N_DELIVERY = p.BROKER_FRAMES[Cmd.DELIVER]
_COUNT_BYTES = p.LAYOUT[Cmd.ROUTED].frames[p.ROUTED_COUNT].size.min
_ROUTED_NONE = bytes(_COUNT_BYTES)
# The checks parse_client makes of these frames, made here where the hot path needs them.
_check_publish_ref = p.field_check(Cmd.PUBLISH, "ref")
# The hottest path calls it only for a ref over this; a ref may be empty, so
# nothing is ever under.
_PUBLISH_REF_MAX = p.LAYOUT[Cmd.PUBLISH].frames[PUBLISH_REF].size.max or 0
if p.LAYOUT[Cmd.PUBLISH].frames[PUBLISH_REF].size.min:
    raise AssertionError("_publish tests only the maximum size of a PUBLISH ref")
_check_request_ref = p.field_check(Cmd.REQUEST, "ref")
_check_reply_token = p.field_check(Cmd.REPLY, "token")
_TAG_END = p.SESSION_BYTES + p.REPLY_TAG_BYTES
_check_ack_token = p.field_check(Cmd.ACK, "token")
# An ERROR echoes the ref of these commands, if it fits its own ref frame.
_ECHO_HEADERS = frozenset(p.header(c) for c in p.ECHOES_REF)
_ECHO_MAX = p.LAYOUT[Cmd.ERROR].frames[REF_FRAME].size.max or 0

_LEFT_TEXT = "subscribing bus left before confirming"
_DROPPED_AT_BROKER = p.pack_ack(0, 1, [])
_EXPIRED_BODY = p.pack_ack(
    0, 0, ["confirmation expired: the subscribing bus had max_pending_per_peer unacknowledged"]
)
# Replies a peer's full queue refused that the broker holds for it; a peer
# that lets more pile up is not reading and is forgotten (as NATS drops a
# slow consumer), so it learns of it (403) when it next speaks.
HELD_REPLIES = 1024
# While replies are held, how soon (seconds) the broker tries them again.
HELD_RETRY = 0.05
# Confirmations of a departed peer settled per pass (ACKEDs to their publishers):
# a peer that leaves 10,000 unconfirmed deliveries holds no pass up for long.
SETTLE_SLICE = 256
# Subscriptions of a departed peer removed per pass: past this many, the rest
# go over the next passes (routing passes the peer over meanwhile).
UNSUBSCRIBE_SLICE = 512
# Seconds a peer whose connection closed is kept after its last message: what
# it sent before closing may still wait, unread, in the socket's queue.
ENDING_GRACE = 1.0

# Where a message came from: its connection's descriptor, the peer's address
# (for a HELLO; None otherwise) and the connection's ZAP tag (None: none).
Source = tuple[int, "str | None", "str | None"]
# The bytes of distinct multi-sid frames a slow peer may be owed DROPPED counts
# for before they are counted per sid (which the peer's sids bound).
DROPPED_SETS_BYTES = 256 * 1024
# Replies: what send_failed holds instead of dropping.
# Answers to a peer's own requests are held too (ROUTED, ACKED, ANSWER, STORED,
# STREAM_REPLY): a pipelining publisher whose queue is full would otherwise
# never learn that a publish it waits on was routed or stored.
_REPLIES = frozenset(
    (
        p.H_OK,
        p.H_ERROR,
        p.H_WELCOME,
        p.H_STATS_REPLY,
        p.H_ROUTED,
        p.H_ACKED,
        p.H_ANSWER,
        p.H_STORED,
        p.H_STREAM_REPLY,
    )
)
# How long one STATS_REPLY body serves every STATS (seconds) while no peer,
# channel or subscription comes or goes: STATS then costs one snapshot per
# interval however many peers ask, and its counters are at most this old.
STATS_FRESH = 0.1
# Seconds between DROPPED notices that tell one publisher of its rate-limited
# publishes: a flood over the limit draws a notice per interval, not per message.
THROTTLE_NOTICE = 0.1
# Rows of STATS's top_channels and top_peers tables: by default, and at most
# (a table is one array, which a client decodes only up to MAX_BODY_ITEMS
# elements: 1 + 6 columns + 500 rows of 6 is 3,007).
STATS_TOP = 20
STATS_TOP_MAX = 500
# The columns of those tables, in order (docs/protocol.md, STATS_REPLY body).
CHANNEL_COLUMNS = ("channel", "msgs_in", "msgs_out", "bytes_in", "peers", "subscriptions")
PEER_COLUMNS = ("peer", "channel", "msgs_in", "msgs_out", "subscriptions", "dropped")


# Queued where a DROPPED notice is due, whatever comes to the peer before it.
_NOTICE_DUE = [p.H_DROPPED]


class RateLimited(ProtocolError):
    """429 for a request over its user's rate: ``retry_after`` in milliseconds."""

    def __init__(self, text: str, retry_after: int) -> None:
        super().__init__(ErrorCode.LIMIT_REACHED, text)
        self.retry_after = retry_after


class _Pending:
    # Holds the publishing Peer object, not just its identity: a later session
    # that reuses the identity must never receive this session's ACKEDs.
    __slots__ = ("publisher", "ref", "remaining")

    def __init__(self, publisher: Peer, ref: bytes, remaining: int) -> None:
        self.publisher = publisher
        self.ref = ref
        self.remaining = remaining


class BrokerState:
    """All of a broker's state: peers, channels, subscriptions, pending confirmations."""

    def __init__(
        self,
        *,
        max_message_size: int = 1 << 20,
        name: str = "zmqbus",
        limits: Limits | None = None,
        users: Mapping[str, User] | None = None,
        anonymous: User | None = None,
        reply_key: bytes | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        if max_message_size > p.MAX_MESSAGE_SIZE:
            # Bodies travel in batch entries behind 32-bit lengths: one past them would overflow.
            raise ValueError(
                f"max_message_size must be at most {p.MAX_MESSAGE_SIZE}, "
                "the largest body a batch entry's 32-bit length can give"
            )
        self.max_message_size = max_message_size
        self.limits = limits = limits if limits is not None else Limits()
        # Refusals by the name of the limit reached (STATS "limits").
        self.refused: Counter[str] = Counter()
        # Requests refused for want of a permission, by user name (STATS "denied").
        self.denied: Counter[str] = Counter()
        # Publishes and requests over their user's rate, by user name (STATS
        # "rate_limited"), and each limited user's bucket with the User it is for.
        self.rate_limited: Counter[str] = Counter()
        self._buckets: dict[str, tuple[User, Bucket]] = {}
        # Peers owed a DROPPED notice of throttled publishes, by ident: sent by
        # tick() once THROTTLE_NOTICE has passed since the last one.
        self._throttled: dict[bytes, None] = {}
        self._notices_due = 0  # _NOTICE_DUE places in the outbox
        # Each user's share in use, for its own limits: peers, subscriptions, and
        # peers per channel.
        self._user_peers: Counter[str] = Counter()
        self._user_subs: Counter[str] = Counter()
        self._user_channels: dict[str, Counter[bytes]] = {}
        self._budget = CacheBudget(limits.topic_cache_bytes)
        self._slow: set[Peer] = set()  # peers with a message dropped at the broker
        self._holding: set[bytes] = set()  # idents of peers with held replies
        self._stats_body = b""
        self._stats_at = float("-inf")
        # STATS asked per ident in the current one-second window.
        self._stats_asked: Counter[bytes] = Counter()
        self._stats_window = float("-inf")
        self._next_probe: float | None = None  # when to probe idle peers next
        self._retry_at = float("-inf")  # when to send held replies again
        self.peers: dict[bytes, Peer] = {}
        self.channels: dict[bytes, Channel] = {}
        self.sessions: dict[bytes, Peer] = {}
        # What handle() and tick() queued for take_outgoing(), in order, before
        # coalescing and notices. Tests may read it; the loop does not.
        self.outbox: list[Outgoing] = []
        self.counters: Counter[str] = Counter()
        self.errors: Counter[int] = Counter()
        self._pending: dict[bytes, _Pending] = {}
        self._next_token = 0
        self._next_session = 0
        self._name = name
        self._welcome = p.pack_welcome(name, max_message_size)
        self._now = 0.0  # the time handle() or tick() was last given
        self._label_key = os.urandom(16)  # keys the names STATS gives peers and channels
        self._clock = clock
        self._started = clock()  # for STATS "uptime_s"
        # Keys the tags of reply tokens; fixed only by the test vectors.
        self._reply_key = reply_key if reply_key is not None else os.urandom(32)
        self._beating: set[bytes] = set()  # idents of peers that asked for heartbeats
        self._lossy: set[bytes] = set()  # idents owed a DROPPED notice
        # Departed peers whose subscriptions are still being removed, by ident,
        # and the subscriptions left, in the order they go.
        self._leaving: dict[bytes, Peer] = {}
        self._unsubscribing: deque[tuple[Peer, deque[tuple[bytes, tuple[str, str]]]]] = deque()
        # Departed peers' unconfirmed deliveries still to settle: (ACKED body, tokens).
        self._settling: deque[tuple[bytes, deque[bytes]]] = deque()
        # The counts each DROPPED notice of the last take_outgoing carries, by ident.
        self._notices: dict[bytes, dict[bytes, int]] = {}
        self._next_tick: float | None = None
        # Topics already checked against the topic rules, so the hot path checks each once.
        self._valid_topics: set[bytes] = set()
        self._batching_peers = 0  # peers that asked for batch_commands
        self.connections = Connections(limits.hello_timeout_seconds, limits.max_connections)
        # Durable streams: the given store (the broker's data_dir), else memory only.
        self.streams = Streams(
            store if store is not None else open_store(None), limits, clock=clock
        )
        # Users by name, as a connection's ZAP tag names them ("<n>:<name>");
        # a connection without one (inproc, no ZAP) is ``anonymous``.
        self.users: Mapping[str, User] = users if users is not None else {}
        self.anonymous = (
            anonymous if anonymous is not None else User(ANONYMOUS, admin=True, streams=True)
        )
        # Where the message given to handle() came from, for a HELLO and for a
        # peer in ``watched``, by ident: the loop fills it, handle() takes it.
        self.sources: dict[bytes, Source] = {}
        self._src: Source | None = None  # the source of the message in hand
        # Peers the source of whose every message is checked (a message under
        # their routing id from another connection ends their session): those
        # whose connection closed, and those that chose their own routing id
        # (libzmq's own are unguessable). The loop reads sources for these.
        self.watched: set[bytes] = set()
        # Peers whose connection closed: nothing is sent to them (another
        # connection may hold their routing id next) until they are dropped.
        self.ending: set[bytes] = set()
        # Connections tick() found to close (unjoined too long, or too many);
        # the loop closes them and empties the list.
        self.closing: list[ConnKey] = []

    # --- entry point --------------------------------------------------------

    def handle(self, ident: bytes, frames: Sequence[bytes], now: float | None = None) -> int:
        """Process one message from peer ``ident`` received at ``now`` (the
        broker's ``time.monotonic()``; None: the time last given, for callers
        to whom time does not matter). Returns how many messages now wait for
        ``take_outgoing``."""
        if now is not None:
            self._now = now
        self.counters["messages_in"] += 1
        self._src = self.sources.pop(ident, None) if self.sources else None
        if self.watched and ident in self.watched:
            self._check_source(ident)
        peer = self.peers.get(ident)
        if peer is not None:
            # Any message shows the peer's connection lives, even one refused
            # (a STATS, a wrong version): the spec counts it as a heartbeat.
            peer.last_heard = self._now
        if frames and frames[0] == p.H_BATCH:
            try:
                entries = self._unbatch(ident, frames)
            except ProtocolError as exc:
                self._refuse(ident, frames, exc.code, exc.detail)
                return len(self.outbox)
            except Exception:
                log.exception("internal error handling a batch from %s", ident.hex())
                self.counters["internal_errors"] += 1
                self._refuse(ident, frames, ErrorCode.INTERNAL, "internal broker error")
                return len(self.outbox)
            self._entries(ident, entries, len(frames[ENTRIES_FRAME]))
        else:
            self._handle(ident, frames)
        return len(self.outbox)

    def _entries(
        self, ident: bytes, entries: list[list[bytes] | tuple[bytes, ...]], size: int
    ) -> None:
        # Each entry as if it had come alone, in order; a run of unconfirmed
        # PUBLISHes (the bulk of a busy publisher's batches) is routed in one
        # go, as a PUBLISH_BATCH is, each entry still checked on its own.
        # ``size``: the octets of the entries frame.
        run: list[tuple[bytes, ...]] = []
        checks = self._message_checks
        peer = self.peers.get(ident)
        channel = peer.channel if peer is not None else None
        bytes_in = channel.bytes_in if channel is not None else 0
        restricted = peer if peer is not None and not peer.free else None
        limited = restricted is not None and restricted.user is not None and restricted.user.limited
        max_size = self.max_message_size
        valid = self._valid_topics
        ack = self.streams.ack
        chid = channel.id if channel is not None else None
        for entry in entries:
            if isinstance(entry, tuple):  # an unconfirmed PUBLISH: (topic, body)
                if restricted is None and len(entry[1]) <= max_size and entry[0] in valid:
                    # What _message_checks passes without a look: the common case.
                    run.append(entry)
                    continue
                try:
                    checks(*entry)
                    if restricted is not None:
                        self._may_publish(restricted, entry[0])
                        if limited and self._over_rate(restricted, len(entry[1])):
                            continue
                except ProtocolError as exc:
                    run = self._route_run(ident, run)
                    topic, body = entry
                    chid = self.peers[ident].channel.id
                    self._refuse(ident, [p.H_PUBLISH, chid, b"", topic, body], exc.code, exc.detail)
                    continue
                run.append(entry)
                continue
            if run:
                run = self._route_run(ident, run)
            if (
                entry[0] == _H_STREAM_ACK
                and peer is not None
                and len(entry) == _N_STREAM_ACK
                and entry[1] == chid
                and entry[p.STREAM_ACK_KIND] == _PLAIN_STREAM_ACK
                and not entry[p.STREAM_ACK_DELAY]
                and not entry[p.STREAM_ACK_TEXT]
                and len(entry[p.STREAM_ACK_TOKEN]) == TOKEN_BYTES
            ):
                # A consumer acks each message: its BATCH is mostly these. What
                # _handle's checks pass without a look; the rest goes there.
                try:
                    ack(peer.session, entry[p.STREAM_ACK_TOKEN], _ACK, None, "", self._now)
                except ProtocolError as exc:
                    self._refuse(ident, entry, exc.code, exc.detail)
                continue
            self._handle(ident, entry)
        if run:
            self._route_run(ident, run)
        if channel is not None:
            # The entries frame counts whole, once a batch, in place of the
            # bodies its entries routed alone counted (bytes_in, docs/protocol.md).
            channel.bytes_in = bytes_in + size

    def _route_run(self, ident: bytes, run: list[tuple[bytes, ...]]) -> list[tuple[bytes, ...]]:
        """Route ``run`` (unconfirmed, checked) from ``ident``; a fresh empty run."""
        if run:
            try:
                self._fan_out(self.peers[ident], run)
            except Exception:
                log.exception("internal error routing a batch from %s", ident.hex())
                self.counters["internal_errors"] += 1
                self._refuse(ident, [p.H_BATCH, b""], ErrorCode.INTERNAL, "internal broker error")
        return []

    def _handle(self, ident: bytes, frames: Sequence[bytes]) -> None:
        head = frames[0] if frames else b""
        try:
            if head == p.H_PUBLISH:
                self._publish(ident, frames)
            elif head == p.H_PUBLISH_BATCH:
                self._publish_batch(ident, frames)
            elif head == p.H_ACK:
                self._ack(ident, frames)
            elif head == p.H_REQUEST:
                self._request(ident, frames)
            elif head == p.H_REPLY:
                self._reply(ident, frames)
            elif (
                head == p.H_STREAM_ACK
                and len(frames) == _N_STREAM_ACK
                and frames[p.STREAM_ACK_KIND] == _PLAIN_STREAM_ACK
                and not frames[p.STREAM_ACK_DELAY]
                and not frames[p.STREAM_ACK_TEXT]
                and len(frames[p.STREAM_ACK_TOKEN]) == TOKEN_BYTES
            ):
                peer = self._joined(ident, frames, _N_STREAM_ACK)
                token = frames[p.STREAM_ACK_TOKEN]
                self.streams.ack(peer.session, token, p.AckKind.ACK, None, "", self._now)
            else:
                self._control(ident, frames)
        except RateLimited as exc:
            self._refuse(ident, frames, exc.code, exc.detail, exc.retry_after)
        except ProtocolError as exc:
            self._refuse(ident, frames, exc.code, exc.detail)
        except Exception:
            # A bug must not take the broker down with every peer's traffic.
            log.exception("internal error handling a message from %s", ident.hex())
            self.counters["internal_errors"] += 1
            self._refuse(ident, frames, ErrorCode.INTERNAL, "internal broker error")

    # --- the socket's side -------------------------------------------------

    def take_outgoing(self) -> list[Outgoing]:
        """Everything to send since the last call, as (identity, frames), and
        forget it. Runs of messages to a peer that asked for ``batch_commands``
        are joined into BROKER_BATCHes; a DROPPED notice owed to a peer goes just
        before the next message to it (a notice waits while nothing goes to the
        peer: a heartbeat, if it asked for them, is the latest chance). Each
        item is counted sent (``messages_out``, ``dropped_notices``) unless
        ``send_failed`` is called for it."""
        if self._notices:
            self._notices = {}
        streams = self.streams
        if streams.awake or streams.dead_letters:
            self._stream_work()
        if streams.dirty or streams.changed:
            # Before any reply of this pass leaves: a STORED means committed.
            streams.commit(self._now)
            save_at = streams.save_at
            if save_at is not None and (self._next_tick is None or save_at < self._next_tick):
                self._next_tick = save_at
        out = self.outbox
        if not out and not self._holding:
            return []
        self.outbox = []
        if self._holding:
            out = self._with_held(out)
            if not out:
                return []
        counters = self.counters
        if self.ending:
            # A closed connection's peer: its routing id may be another's soon.
            ending = self.ending
            kept = [item for item in out if item[0] not in ending]
            counters["unroutable"] += len(out) - len(kept)
            out = kept
        if self._batching_peers and len(out) > 1:
            out, made = coalesce(out, self.peers)
            if made:
                counters["broker_batches"] += made
        counters["messages_out"] += len(out)
        if self._lossy or self._notices_due:
            self._notices_due = 0
            out = self._place_notices(out)
        return out

    def _stream_work(self) -> None:
        # Dead letters are published (and captured) as messages from the
        # broker; consumers take what they have room for.
        streams = self.streams
        while streams.dead_letters:
            chid, topic, body = streams.dead_letters.pop(0)
            channel = self.channels.get(chid)
            messages: Sequence[tuple[bytes, ...]] = [(topic, body)]
            if chid in streams.by_channel:
                messages = self._captured(b"", chid, messages)
            if channel is not None and messages:
                n, _ = fan_out(channel, messages, self.peers, self.outbox)
                self.counters["delivered"] += n
                channel.msgs_in += len(messages)  # the broker's own: no peer counts them
        if streams.awake:
            streams.pump(self._now, self.outbox, self.peers)
            due = self._now if streams.more else streams.next_due
            if due is not None and (self._next_tick is None or due < self._next_tick):
                self._next_tick = due

    def _with_held(self, out: list[Outgoing]) -> list[Outgoing]:
        # Held replies go first once their retry is due; until then a later
        # reply to the same peer joins them, so a peer sees its replies in order.
        holding = self._holding
        peers = self.peers
        if self._now >= self._retry_at:
            self._holding = set()
            front: list[Outgoing] = []
            for ident in holding:
                peer = peers.get(ident)
                if peer is not None:
                    front.extend((ident, frames) for frames in peer.held)
                    peer.held = []
            return front + out
        kept: list[Outgoing] = []
        for item in out:
            ident, frames = item
            if ident in holding and frames[0] in _REPLIES:
                self._hold(ident, frames)
            else:
                kept.append(item)
        return kept

    def _place_notices(self, out: list[Outgoing]) -> list[Outgoing]:
        lossy = self._lossy
        peers = self.peers
        result: list[Outgoing] = []
        for item in out:
            ident = item[0]
            if ident in lossy:
                lossy.discard(ident)
                peer = peers.get(ident)
                if peer is not None and (peer.dropped or peer.throttled):
                    # Kept until the next take: a refused notice gives its counts
                    # back as they were, without reading its frame.
                    self._notices[ident] = peer.dropped
                    result.append((ident, self._notice(peer)))
                    self._throttled.pop(ident, None)
            if item[1] is _NOTICE_DUE:
                self.counters["messages_out"] -= 1  # a place, not a message
            else:
                result.append(item)
        return result

    def send_failed(self, ident: bytes, frames: list[bytes], *, gone: bool) -> None:
        """The socket refused ``frames`` (from ``take_outgoing``) for ``ident``:
        its queue is full (``gone=False``, EAGAIN), or its connection is gone
        (``gone=True``, EHOSTUNREACH). The message is counted ``dropped_hwm`` or
        ``unroutable`` instead of sent; its deliveries are owed to the peer as a
        DROPPED notice, and each publisher of a confirmed one is told at once
        that it was dropped. A gone peer is then forgotten (as ``drop_peer``).
        A refused DROPPED notice keeps its counts for the next chance."""
        counters = self.counters
        if frames[0] == p.H_DROPPED:
            counters["dropped_notices"] -= 1
            peer = self.peers.get(ident)
            owed = self._notices.pop(ident, None)
            if peer is not None:
                # Whatever the reason: a gone peer is dropped on its next message.
                if owed is None:
                    owed = p.unpack_dropped(frames[_DROPPED_COUNTS])
                for sids, n in owed.items():
                    self._owe(peer, sids, n)
                peer.throttled += int.from_bytes(frames[_DROPPED_THROTTLED], "big")
                self._lossy.add(ident)
            return
        counters["messages_out"] -= 1
        if gone:
            counters["unroutable"] += 1
            self._undeliverable(ident, frames, hold=False)
            self.drop_peer(ident)
        elif frames[0] in _REPLIES:
            self._hold(ident, frames)
        else:
            # Dropped for this peer alone: the broker never blocks the others.
            counters["dropped_hwm"] += 1
            self._undeliverable(ident, frames, hold=True)

    def _hold(self, ident: bytes, frames: list[bytes]) -> None:
        # A reply the peer's full queue refused waits to be sent again (in
        # take_outgoing, once HELD_RETRY has passed), never silently lost.
        peer = self.peers.get(ident)
        if peer is None:
            # An unjoined connection (a STATS, an ERROR) has no session to keep
            # consistent: its reply is counted and let go.
            self.counters["replies_lost"] += 1
            return
        if len(peer.held) >= HELD_REPLIES:
            log.warning("peer %s does not read its replies: forgotten", ident.hex())
            self.counters["replies_lost"] += len(peer.held) + 1
            self.refused["held_replies"] += 1
            self.drop_peer(ident)
            return
        peer.held.append(frames)
        self.counters["replies_held"] += 1
        self._holding.add(ident)
        if self._retry_at <= self._now:
            self._retry_at = self._now + HELD_RETRY
            if self._next_tick is None or self._retry_at < self._next_tick:
                self._next_tick = self._retry_at

    @staticmethod
    def _owe(peer: Peer, sids: bytes, n: int) -> None:
        # Counted per packed sids frame as the message carried it: O(1) for the
        # shared frame of a pattern (a delivery to 10,000 sids costs no more to
        # lose than one to a single sid); sids are counted apart only when the
        # distinct frames owed would hold more than DROPPED_SETS_BYTES.
        dropped = peer.dropped
        had = dropped.get(sids)
        if had is not None:
            dropped[sids] = had + n
            return
        dropped[sids] = n
        if len(sids) > p.SID_BYTES:
            peer.dropped_bytes += len(sids)
            if peer.dropped_bytes > DROPPED_SETS_BYTES:
                per_sid: dict[bytes, int] = {}
                for key, count in dropped.items():
                    for sid in p.split_sids(key):
                        per_sid[sid] = per_sid.get(sid, 0) + count
                peer.dropped = per_sid
                peer.dropped_bytes = 0

    def _undeliverable(self, ident: bytes, frames: list[bytes], *, hold: bool) -> None:
        # Lost deliveries are owed to the peer as a DROPPED notice, and a lost
        # confirmed DELIVER is reported to its publisher as dropped at once.
        peer = self.peers.get(ident)
        head = frames[0] if frames else b""
        if peer is not None and head == p.H_BROKER_BATCH and len(frames) == _N_BROKER_BATCH:
            # Each command in it is lost as if it had been sent alone (a reply held).
            entries = frames[ENTRIES_FRAME]
            for entry in p.unpack_command_entries(entries, frames[1], p.BROKER_ENTRY_FRAMES):
                if hold and entry[0] in _REPLIES:
                    self._hold(ident, entry)
                else:
                    self._undeliverable(ident, entry, hold=hold)
            return
        self.counters["dropped_out"] += 1
        if peer is not None and head == p.H_DELIVER_BATCH and len(frames) == _N_DELIVER_BATCH:
            # Unconfirmed deliveries only: owed a DROPPED notice, no publisher waits.
            self._slow.add(peer)
            for sids, _, _ in p.unpack_deliver_entries(frames[ENTRIES_FRAME]):
                peer.dropped_total += 1
                self._owe(peer, sids, 1)
            self._lossy.add(ident)
            return
        if peer is None or len(frames) != _N_DELIVERY or head not in (p.H_DELIVER, p.H_ASK):
            return
        # Owed to the slow peer as a DROPPED notice once its queue has room again.
        self._slow.add(peer)
        peer.dropped_total += 1
        self._owe(peer, frames[DELIVER_SIDS], 1)
        self._lossy.add(ident)
        token = frames[DELIVER_TOKEN]
        if head == p.H_DELIVER and token and token in peer.outstanding:
            del peer.outstanding[token]
            self._resolve(token, _DROPPED_AT_BROKER)

    # --- hot path -----------------------------------------------------------

    def _unbatch(
        self, ident: bytes, frames: Sequence[bytes]
    ) -> list[list[bytes] | tuple[bytes, ...]]:
        # The envelope is refused whole (one ERROR, empty ref); each entry is
        # then handled as if it had arrived alone, with its own ERROR if any.
        self._joined(ident, frames, _N_BATCH)
        entries = p.unpack_batch(frames[ENTRIES_FRAME], frames[1])
        self._batch_size(len(entries))
        self.counters["batches_in"] += 1
        return entries

    def _batch_size(self, n: int) -> None:
        if n > p.MAX_BATCH_ENTRIES:
            self.refused["max_batch_entries"] += 1
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"batch of {n} entries exceeds {p.MAX_BATCH_ENTRIES}"
            )

    def _limit(self, name: str, code: int, text: str) -> ProtocolError:
        # The refusal of a request that would pass the bound ``name``: counted.
        self.refused[name] += 1
        return ProtocolError(code, f"{text}: {name} is {getattr(self.limits, name)}")

    def _joined(self, ident: bytes, frames: Sequence[bytes], count: int) -> Peer:
        if len(frames) != count:
            raise p.count_error(frames)
        peer = self.peers.get(ident)
        if peer is None:
            p.check_channel(frames[1])
            raise ProtocolError(ErrorCode.NOT_JOINED, "send HELLO before any other command")
        if frames[1] != peer.channel.id:
            p.check_channel(frames[1])
            raise ProtocolError(
                ErrorCode.CHANNEL_MISMATCH, "channel frame differs from the channel joined"
            )
        return peer

    def _message_checks(self, topic: bytes, body: bytes) -> None:
        if len(body) > self.max_message_size:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"message body of {len(body)} bytes exceeds max_message_size "
                f"{self.max_message_size}",
            )
        if topic not in self._valid_topics:
            p.decode_name(topic, "topic")
            if len(self._valid_topics) >= CACHE_LIMIT:
                self._valid_topics.clear()
            self._valid_topics.add(topic)

    def _publish(self, ident: bytes, frames: Sequence[bytes]) -> None:
        peer = self._joined(ident, frames, _N_PUBLISH)
        ref, topic, body = frames[PUBLISH_REF], frames[PUBLISH_TOPIC], frames[PUBLISH_BODY]
        if len(ref) > _PUBLISH_REF_MAX:
            _check_publish_ref(ref)
        self._message_checks(topic, body)
        if not peer.free:
            self._may_publish(peer, topic)
            if peer.user.limited and self._over_rate(peer, len(body), ref):  # type: ignore[union-attr]
                return
        channel = peer.channel
        chid = channel.id
        out = self.outbox
        if self.streams.by_channel and chid in self.streams.by_channel:
            stream = self.streams.capture(chid, topic)
            if stream is not None:
                seq, duplicate = self.streams.put(stream, topic, body)
                if ref and peer.streams:
                    out.append(
                        (ident, [p.H_STORED, chid, ref, stream.config.name.encode(),
                                 seq.to_bytes(8, "big"), b"\x01" if duplicate else b"\x00"])
                    )  # fmt: skip
                if duplicate:  # stored once, delivered once
                    if ref:
                        out.append((ident, [p.H_ROUTED, chid, ref, _ROUTED_NONE]))
                    return
        dests = channel.destinations(topic)
        counters = self.counters
        counters["published"] += 1
        peer.msgs_in += 1
        channel.bytes_in += len(body)
        peers = self.peers
        if not ref:
            n = 0
            for target, sids in dests:
                out.append((target, [p.H_DELIVER, chid, b"", topic, body, sids]))
                # The one path with no Peer object at hand (targets are idents).
                peers[target].msgs_out += 1
                n += 1
            counters["delivered"] += n
            return
        dests = tuple(dests)
        n = len(dests)
        counters["delivered"] += n
        if n:
            self._next_token += 1
            token = self._next_token.to_bytes(8, "big")
            self._pending[token] = _Pending(peer, ref, n)
            bound = self.limits.max_pending_per_peer
            for target, sids in dests:
                to = peers[target]
                to.msgs_out += 1
                outstanding = to.outstanding
                if len(outstanding) >= bound:
                    self._expire_oldest(outstanding)
                outstanding[token] = None
                out.append((target, [p.H_DELIVER, chid, token, topic, body, sids]))
        out.append((ident, [p.H_ROUTED, chid, ref, n.to_bytes(_COUNT_BYTES, "big")]))

    def _may_publish(self, peer: Peer, topic: bytes) -> None:
        user = peer.user
        if user is not None and not user.may_publish(topic):
            raise self._denied(user, f"publish or request on {topic.decode('utf-8')!r}")

    def _over_rate(self, peer: Peer, size: int, ref: bytes = b"") -> bool:
        """Spend a message of ``size`` body bytes from the peer's user's rate:
        False if it passes; True if an unconfirmed one (``ref`` empty) is over
        it, dropped and owed to the peer as throttled; a confirmed one over it
        raises 429 with the milliseconds to wait."""
        user = peer.user
        assert user is not None
        held = self._buckets.get(user.name)
        if held is None or held[0] is not user:
            # A new user, or one the configuration changed: a fresh allowance.
            held = self._buckets[user.name] = (
                user,
                Bucket(user.rate, user.byte_rate, user.burst, self._now),
            )
        wait = held[1].take(size, self._now)
        if not wait:
            return False
        self.rate_limited[user.name] += 1
        self.counters["rate_limited"] += 1
        if ref:
            raise RateLimited(
                f"user {user.name!r} is over its rate ({self._rate_text(user)})",
                max(1, math.ceil(wait * 1000 - 1e-6)),  # not 401 for 0.4000001 s
            )
        peer.throttled += 1
        self.counters["throttled"] += 1
        ident = peer.ident
        if self._now >= peer.notice_at:
            self._notify(peer)
        elif ident not in self._throttled:
            self._throttled[ident] = None
            self._lossy.add(ident)  # or before the next message to it, if sooner
            if self._next_tick is None or peer.notice_at < self._next_tick:
                self._next_tick = peer.notice_at
        return True

    @staticmethod
    def _rate_text(user: User) -> str:
        parts = []
        if user.rate is not None:
            parts.append(f"{user.rate:g} messages/s")
        if user.byte_rate is not None:
            parts.append(f"{user.byte_rate:g} bytes/s")
        return ", ".join(parts) + f", burst {user.burst:g}s"

    def _notify(self, peer: Peer) -> None:
        # A DROPPED notice due now: take_outgoing puts one there (or before an
        # earlier message to the peer) with all the peer is owed by then.
        ident = peer.ident
        self._lossy.add(ident)
        self._throttled.pop(ident, None)
        peer.notice_at = self._now + THROTTLE_NOTICE
        self.outbox.append((ident, _NOTICE_DUE))
        self._notices_due += 1  # placed, or dropped if the peer left meanwhile

    def _notice(self, peer: Peer) -> list[bytes]:
        # A DROPPED with what the peer is owed, which it then no longer is.
        counts = p.pack_dropped_sets(peer.dropped) if peer.dropped else b""
        throttled = min(peer.throttled, 0xFFFFFFFF).to_bytes(4, "big")
        peer.dropped = {}
        peer.dropped_bytes = 0
        peer.throttled = 0
        peer.notice_at = self._now + THROTTLE_NOTICE
        self.counters["dropped_notices"] += 1
        return [p.H_DROPPED, peer.channel.id, counts, throttled]

    def _flush_throttled(self, now: float) -> float | None:
        # Notices due for throttled publishes; when the next one is due.
        nxt: float | None = None
        peers = self.peers
        for ident in list(self._throttled):
            peer = peers.get(ident)
            if peer is None or not peer.throttled:
                del self._throttled[ident]
            elif now >= peer.notice_at:
                self._notify(peer)
            elif nxt is None or peer.notice_at < nxt:
                nxt = peer.notice_at
        return nxt

    def _user_share(self, user: User, channel: bytes) -> None:
        # A user's own bounds on peers and channels, checked at a new peer's HELLO.
        if user.max_connections is not None and self._user_peers[user.name] >= user.max_connections:
            raise self._user_limit(
                "user.max_connections",
                f"user {user.name!r} has {user.max_connections} peers joined",
            )
        if user.max_channels is not None:
            channels: Mapping[bytes, int] = self._user_channels.get(user.name, {})
            if channel not in channels and len(channels) >= user.max_channels:
                raise self._user_limit(
                    "user.max_channels", f"user {user.name!r} is on {user.max_channels} channels"
                )

    def _user_limit(self, name: str, text: str) -> ProtocolError:
        # A user's own bound reached: 429, counted under ``name`` in "refused".
        self.refused[name] += 1
        return ProtocolError(ErrorCode.LIMIT_REACHED, text)

    def _give_back(self, name: str, channel: bytes, subs: int) -> None:
        # A departed peer's share of its user's bounds.
        self._user_peers[name] -= 1
        if subs:
            self._user_subs[name] -= subs
        channels = self._user_channels.get(name)
        if channels is not None:
            channels[channel] -= 1
            if channels[channel] <= 0:
                del channels[channel]

    def _denied(self, user: User, what: str) -> ProtocolError:
        # Counted per user; the text names the user and the act, never a key.
        self.counters["denied"] += 1
        self.denied[user.name] += 1
        return ProtocolError(ErrorCode.PERMISSION_DENIED, f"user {user.name!r} may not {what}")

    def _reply_tag(self, session: bytes, ref: bytes, responder: bytes) -> bytes:
        # A keyed hash of the request and of the session it was sent to.
        return hashlib.blake2b(
            session + responder + ref, key=self._reply_key, digest_size=p.REPLY_TAG_BYTES
        ).digest()

    def _expire_oldest(self, outstanding: dict[bytes, None]) -> None:
        # The peer holds max_pending_per_peer unACKed deliveries: its oldest one
        # is settled for its publisher as an error, and its ACK will be stale.
        token = next(iter(outstanding))
        del outstanding[token]
        self.refused["max_pending_per_peer"] += 1
        self.counters["expired_confirmations"] += 1
        self._resolve(token, _EXPIRED_BODY)

    def _publish_batch(self, ident: bytes, frames: Sequence[bytes]) -> None:
        # The whole batch is checked before any of it is routed: all or nothing.
        peer = self._joined(ident, frames, _N_PUBLISH_BATCH)
        if peer.free:
            messages = publish_batch_messages(
                frames[ENTRIES_FRAME],
                self._batch_size,
                self.max_message_size,
                self._valid_topics,
                self._message_checks,
            )
        else:
            # Each entry's permission checked in turn with the rest: the first
            # fault of any kind is the one reported.
            entries = p.unpack_publish_entries(frames[ENTRIES_FRAME])
            self._batch_size(len(entries))
            for topic, body, _ in entries:
                self._message_checks(topic, body)
                self._may_publish(peer, topic)
            messages = [(topic, body) for topic, body, _ in entries]
        user = peer.user
        if user is not None and user.limited:
            messages = [m for m in messages if not self._over_rate(peer, len(m[1]))]
        peer.channel.bytes_in += len(frames[ENTRIES_FRAME])
        self._fan_out(peer, messages)

    def _fan_out(self, peer: Peer, messages: Sequence[tuple[bytes, ...]]) -> None:
        # Unconfirmed, checked (topic, body) messages of ``peer``, in order.
        chid = peer.channel.id
        if self.streams.by_channel and chid in self.streams.by_channel:
            messages = self._captured(peer.ident, chid, messages)
        n, made = fan_out(peer.channel, messages, self.peers, self.outbox)
        counters = self.counters
        counters["published"] += len(messages)
        counters["delivered"] += n
        if made:
            counters["broker_batches"] += made
        peer.msgs_in += len(messages)

    def _captured(
        self, ident: bytes, chid: bytes, messages: Sequence[tuple[bytes, ...]]
    ) -> list[tuple[bytes, ...]]:
        # Unconfirmed messages a stream captures are stored first; a duplicate
        # goes no further, and one the stream refuses is refused alone.
        streams = self.streams
        kept: list[tuple[bytes, ...]] = []
        for message in messages:
            topic, body = message[0], message[1]
            stream = streams.capture(chid, topic)
            if stream is not None:
                try:
                    if streams.put(stream, topic, body)[1]:
                        continue
                except ProtocolError as exc:
                    if ident:
                        frames = [p.H_PUBLISH, chid, b"", topic, body]
                        self._refuse(ident, frames, exc.code, exc.detail)
                    else:  # the broker's own dead letter
                        log.warning("dead letter on %r not stored: %s", topic, exc.detail)
                    continue
            kept.append(message)
        return kept

    def _request(self, ident: bytes, frames: Sequence[bytes]) -> None:
        peer = self._joined(ident, frames, _N_REQUEST)
        ref, topic, body = frames[REQUEST_REF], frames[REQUEST_TOPIC], frames[REQUEST_BODY]
        _check_request_ref(ref)
        self._message_checks(topic, body)
        if not peer.free:
            self._may_publish(peer, topic)
            if peer.user.limited:  # type: ignore[union-attr]
                self._over_rate(peer, len(body), ref)
        channel = peer.channel
        chid = channel.id
        session = peer.session
        peers = self.peers
        out = self.outbox
        n = 0
        for target, sids in channel.destinations(topic):
            # Each target's token differs: only the peer an ASK went to can reply.
            to = peers[target]
            token = session + self._reply_tag(session, ref, to.session) + ref
            out.append((target, [p.H_ASK, chid, token, topic, body, sids]))
            to.msgs_out += 1
            n += 1
        self.counters["requests"] += 1
        peer.msgs_in += 1
        channel.bytes_in += len(body)
        out.append((ident, [p.H_ROUTED, chid, ref, n.to_bytes(_COUNT_BYTES, "big")]))

    def _reply(self, ident: bytes, frames: Sequence[bytes]) -> None:
        peer = self._joined(ident, frames, _N_REPLY)
        token, body = frames[REPLY_TOKEN], frames[REPLY_BODY]
        _check_reply_token(token)
        if len(body) > self.max_message_size:
            raise ProtocolError(ErrorCode.TOO_LARGE, "REPLY body exceeds max_message_size")
        session = token[: p.SESSION_BYTES]
        ref = token[_TAG_END:]
        tag = self._reply_tag(session, ref, peer.session)
        if not hmac.compare_digest(tag, token[p.SESSION_BYTES : _TAG_END]):
            # Never issued to this peer: guessed, or another peer's.
            self.counters["forged_replies"] += 1
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "reply token was not issued to you")
        requester = self.sessions.get(session)
        if requester is None or requester.channel is not peer.channel:
            # The requester left (or the token is forged): nobody to answer.
            self.counters["stale_replies"] += 1
            return
        self.counters["replies"] += 1
        peer.msgs_in += 1
        requester.msgs_out += 1
        channel = peer.channel
        channel.bytes_in += len(body)
        self.outbox.append((requester.ident, [p.H_ANSWER, channel.id, ref, body]))

    def _ack(self, ident: bytes, frames: Sequence[bytes]) -> None:
        peer = self._joined(ident, frames, _N_ACK)
        token, body = frames[ACK_TOKEN], frames[ACK_BODY]
        if len(body) > self.max_message_size:
            raise ProtocolError(ErrorCode.TOO_LARGE, "ACK body exceeds max_message_size")
        if token not in peer.outstanding:
            # Outstanding tokens are well formed by construction: only the others are checked.
            _check_ack_token(token)
            if token in self._pending:
                # A live delivery's token, sent to another peer: no peer confirms
                # (or fakes the confirmation of) what it was not sent.
                self.counters["forged_acks"] += 1
                raise ProtocolError(
                    ErrorCode.PERMISSION_DENIED, "ACK token was not sent to this peer"
                )
            # A late or repeated ACK (its publisher may have left): nothing to forward.
            self.counters["stale_acks"] += 1
            return
        del peer.outstanding[token]
        self._resolve(token, body)

    def _resolve(self, token: bytes, body: bytes) -> None:
        pending = self._pending.get(token)
        if pending is None:
            return
        publisher = pending.publisher
        if self.peers.get(publisher.ident) is publisher:
            self.outbox.append(
                (publisher.ident, [p.H_ACKED, publisher.channel.id, pending.ref, body])
            )
        pending.remaining -= 1
        if pending.remaining <= 0:
            del self._pending[token]

    # --- control commands ---------------------------------------------------

    def _control(self, ident: bytes, frames: Sequence[bytes]) -> None:
        cmd = p.parse_client(frames)
        if isinstance(cmd, p.Hello):
            self._hello(ident, cmd)
            return
        if isinstance(cmd, p.Stats):
            self._stats_reply(ident, cmd)
            return
        peer = self._joined(ident, frames, len(frames))
        if isinstance(cmd, p.Heartbeat):
            self.counters["heartbeats_in"] += 1
        elif isinstance(cmd, p.Subscribe):
            self._subscribe(peer, cmd)
        elif isinstance(cmd, p.StreamAck):
            self.streams.ack(peer.session, cmd.token, cmd.kind, cmd.delay, cmd.text, self._now)
        elif isinstance(cmd, p.Stream):
            self._stream_request(peer, cmd)
        elif isinstance(cmd, p.Consume):
            self._consume(peer, cmd)
        elif isinstance(cmd, p.Unsubscribe):
            many = len(cmd.sids) > p.SID_BYTES
            for sid in p.split_sids(cmd.sids):
                sub = peer.subs.pop(sid, None)
                if sub is None and self.streams.consumers:
                    self.streams.unbind(ident, sid)
                elif sub is not None:
                    peer.channel.remove(peer, sid, *sub, many=many)
                    if peer.user is not None:
                        self._user_subs[peer.user.name] -= 1
                    self.counters["unsubscribes"] += 1
                    self._stats_at = float("-inf")
            self.outbox.append((ident, [p.H_OK, cmd.channel, cmd.ref]))
        elif isinstance(cmd, p.Disconnect):
            leaving = self.peers.get(ident)
            if leaving is not None and (leaving.dropped or leaving.throttled):
                # What it is owed goes before the OK that ends its session
                # (counted as a notice, not a message, as _place_notices does).
                self.outbox.append((ident, self._notice(leaving)))
                self.counters["messages_out"] -= 1
            self.drop_peer(ident)
            self.outbox.append((ident, [p.H_OK, cmd.channel, cmd.ref]))
        else:
            # PUBLISH, REQUEST, ACK and REPLY never reach here; the rest are broker commands.
            raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, "not a client command")

    def _stream_request(self, peer: Peer, cmd: p.Stream) -> None:
        user = peer.user
        if user is not None and not user.streams:
            raise self._denied(user, "manage streams")
        body = p.unpack_stream_request(cmd.body)
        result = self.streams.request(cmd.channel, body, self._now)
        self._stats_at = float("-inf")
        self.outbox.append(
            (peer.ident, [p.H_STREAM_REPLY, cmd.channel, cmd.ref, p.pack_stream_reply(result)])
        )

    def _consume(self, peer: Peer, cmd: p.Consume) -> None:
        if cmd.sid in peer.subs:
            raise ProtocolError(
                ErrorCode.SID_IN_USE, f"sid {cmd.sid.hex()} is open with a subscription"
            )
        # A bound sid is a subscription of the peer's for its bound.
        if (
            len(peer.subs) + self.streams.bound[peer.ident]
            >= self.limits.max_subscriptions_per_peer
        ):
            raise self._limit(
                "max_subscriptions_per_peer", ErrorCode.LIMIT_REACHED, "too many subscriptions"
            )
        body = p.unpack_stream_request(cmd.body)
        user = peer.user
        if user is not None and not peer.free:
            # What it may read of a stream is what it may subscribe to.
            stream = self.streams.store.stream(str(body.get("stream")))
            if stream is not None and stream.config.channel != cmd.channel:
                stream = None  # another channel's: CONSUME refuses it as unknown
            wanted = body.get("filter") or None
            patterns = [wanted] if isinstance(wanted, str) else (
                list(stream.config.subjects) if stream is not None else []
            )  # fmt: skip
            for pattern in patterns:
                if not user.may_subscribe(pattern):
                    raise self._denied(user, f"consume {pattern!r}")
        result = self.streams.consume(cmd.channel, peer.ident, cmd.sid, body, self._now)
        self.outbox.append(
            (peer.ident, [p.H_STREAM_REPLY, cmd.channel, cmd.ref, p.pack_stream_reply(result)])
        )

    def _stats_reply(self, ident: bytes, cmd: p.Stats) -> None:
        now = self._now
        if now - self._stats_window >= 1.0:
            self._stats_asked.clear()
            self._stats_window = now
        asked = self._stats_asked[ident] = self._stats_asked[ident] + 1
        bound = self.limits.stats_per_second
        if asked > bound:
            if asked > bound + 1:
                # Told once this second; a flood is dropped unanswered, so that
                # refusing it costs no more sends than answering it would.
                self.refused["stats_per_second"] += 1
                return
            raise self._limit("stats_per_second", ErrorCode.LIMIT_REACHED, "too many STATS")
        peer = self.peers.get(ident)
        user = peer.user if peer is not None else None
        if user is None:
            src = self._src
            tag = src[2] if src is not None else None
            user = self.users.get(tag.partition(":")[2]) if tag is not None else None
            user = user or self.anonymous
        if not user.admin:
            # Only its own channel, and nothing of other channels' traffic.
            body = p.pack_stats(self.channel_stats(peer.channel if peer is not None else None))
            self.outbox.append((ident, [p.H_STATS_REPLY, cmd.channel, cmd.ref, body]))
            return
        if now - self._stats_at >= STATS_FRESH or now < self._stats_at:
            self._stats_body = p.pack_stats(self.stats())
            self._stats_at = now
        self.outbox.append((ident, [p.H_STATS_REPLY, cmd.channel, cmd.ref, self._stats_body]))

    def _subscribe(self, peer: Peer, cmd: p.Subscribe) -> None:
        wanted = (cmd.pattern.decode("utf-8"), cmd.queue.decode("utf-8"))
        if not peer.free and peer.user is not None and not peer.user.may_subscribe(wanted[0]):
            raise self._denied(peer.user, f"subscribe to {wanted[0]!r}")
        current = peer.subs.get(cmd.sid)
        if current is None:
            if self.streams.consumers and (peer.ident, cmd.sid) in self.streams.members():
                raise ProtocolError(
                    ErrorCode.SID_IN_USE, f"sid {cmd.sid.hex()} is bound to a stream consumer"
                )
            limits = self.limits
            if len(peer.subs) >= limits.max_subscriptions_per_peer:
                raise self._limit(
                    "max_subscriptions_per_peer", ErrorCode.LIMIT_REACHED, "too many subscriptions"
                )
            if peer.channel.nsubs >= limits.max_subscriptions_per_channel:
                raise self._limit(
                    "max_subscriptions_per_channel",
                    ErrorCode.LIMIT_REACHED,
                    "too many subscriptions on this channel",
                )
            if cmd.pattern.count(b".") >= limits.max_pattern_tokens:
                raise self._limit(
                    "max_pattern_tokens", ErrorCode.LIMIT_REACHED, "pattern has too many tokens"
                )
            user = peer.user
            if (
                user is not None
                and user.max_subscriptions is not None
                and self._user_subs[user.name] >= user.max_subscriptions
            ):
                raise self._user_limit(
                    "user.max_subscriptions",
                    f"user {user.name!r} has {user.max_subscriptions} subscriptions open",
                )
            if user is not None:
                self._user_subs[user.name] += 1
            peer.subs[cmd.sid] = wanted
            peer.channel.add(peer, cmd.sid, *wanted)
            self.counters["subscribes"] += 1
            self._stats_at = float("-inf")
        elif current != wanted:
            raise ProtocolError(
                ErrorCode.SID_IN_USE, f"sid {cmd.sid.hex()} is open with another pattern or queue"
            )
        self.outbox.append((peer.ident, [p.H_OK, cmd.channel, cmd.ref]))

    def _hello(self, ident: bytes, cmd: p.Hello) -> None:
        src = self._src
        peer = self.peers.get(ident)
        if peer is not None and src is not None and peer.tag is not None and src[2] != peer.tag:
            # Another connection has this routing id now: the session was the
            # old connection's, and is not handed on.
            self._taken_over(ident)
        if ident in self._leaving:
            # This connection's last session is still being removed: finish
            # first, so the new one's sids cannot meet the old ones.
            self._unsubscribe_now(self._leaving[ident])
        peer = self.peers.get(ident)
        if peer is not None:
            if peer.channel.id != cmd.channel:
                raise ProtocolError(
                    ErrorCode.CHANNEL_MISMATCH, "this connection already joined another channel"
                )
        else:
            user = self.anonymous
            if src is not None and src[2] is not None:
                name = src[2].partition(":")[2]
                if name and name != ANONYMOUS:  # a tag naming no user: anonymous
                    known = self.users.get(name)
                    if known is None:
                        # Its key was revoked (set_users) after it connected.
                        if src[1] is not None:
                            self.closing.append((src[0], src[1]))
                        self.counters["denied"] += 1
                        self.denied[name] += 1
                        raise ProtocolError(
                            ErrorCode.PERMISSION_DENIED, f"user {name!r} is no longer known"
                        )
                    user = known
            if not user.may_join(cmd.channel):
                raise self._denied(user, "join this channel")
            self._user_share(user, cmd.channel)
            limits = self.limits
            if len(self.peers) >= limits.max_peers:
                raise self._limit("max_peers", ErrorCode.CAPACITY, "broker has no room for a peer")
            channel = self.channels.get(cmd.channel)
            if channel is None:
                if len(self.channels) >= limits.max_channels:
                    raise self._limit(
                        "max_channels", ErrorCode.CAPACITY, "broker has no room for a channel"
                    )
                channel = self.channels[cmd.channel] = Channel(cmd.channel, self._budget)
            channel.peers.add(ident)
            self._next_session += 1
            session = self._next_session.to_bytes(p.SESSION_BYTES, "big")
            peer = self.peers[ident] = Peer(ident, channel, session)
            self.sessions[session] = peer
            self.counters["connects"] += 1
            self._stats_at = float("-inf")
            peer.user = user
            peer.free = user.free
            self._user_peers[user.name] += 1
            self._user_channels.setdefault(user.name, Counter())[cmd.channel] += 1
            if src is not None and src[1] is not None:
                peer.conn = key = (src[0], src[1])
                peer.tag = src[2]
                self.connections.joined(key, ident)
                if peer.tag is not None and not _anonymous(ident):
                    self.watched.add(ident)
        peer.last_heard = self._now
        hello = p.unpack_hello(cmd.body)
        asked = hello.get("heartbeat", 0)
        # Only a peer that asked hears of batches: others get the WELCOME they know.
        peer.batch = hello.get("batch", False)
        # Only a peer that asked hears STORED (an older client would not know it).
        peer.streams = hello.get("streams") is True
        extra: dict[str, object] = {"batch": True} if peer.batch else {}
        commands = hello.get("batch_commands", False)
        if commands != peer.batch_commands:
            self._batching_peers += 1 if commands else -1
            peer.batch_commands = commands
        if commands:
            extra["batch_commands"] = True
        if peer.streams:
            extra["streams"] = True
        if not asked:
            # A HELLO again without heartbeats ends them for this peer.
            peer.heartbeat = 0.0
            self._beating.discard(ident)
            if self._next_probe is None:
                # Its connection is probed once idle: a vanished one is forgotten.
                self._next_probe = self._now + self.limits.idle_probe_seconds
                if self._next_tick is None or self._next_probe < self._next_tick:
                    self._next_tick = self._next_probe
            body = self._welcome
            if extra:
                body = p.pack_welcome(self._name, self.max_message_size, **extra)
            self.outbox.append((ident, [p.H_WELCOME, cmd.channel, body]))
            return
        ms = min(max(asked, HEARTBEAT_MIN_MS), HEARTBEAT_MAX_MS)
        peer.heartbeat = ms / 1000.0
        peer.next_beat = self._now + peer.heartbeat
        self._beating.add(ident)
        if self._next_tick is None or peer.next_beat < self._next_tick:
            self._next_tick = peer.next_beat
        body = p.pack_welcome(self._name, self.max_message_size, heartbeat=ms, **extra)
        self.outbox.append((ident, [p.H_WELCOME, cmd.channel, body]))

    def set_users(self, users: Mapping[str, User], anonymous: User, revoked: Iterable[str]) -> int:
        """Take new users (a configuration reload). Peers of a user named in
        ``revoked`` (gone, or whose key or rights changed) are dropped and
        their connections closed: they join again, if they still may, under
        the new rules. Every other peer takes its user's new limits at once.
        Returns how many peers were dropped."""
        gone = set(revoked)
        self.users = users
        self.anonymous = anonymous
        dropped = 0
        for ident, peer in list(self.peers.items()):
            user = peer.user
            if user is None:
                continue
            if user.name in gone:
                conn = peer.conn
                self.drop_peer(ident)
                if conn is not None:
                    self.closing.append(conn)
                dropped += 1
                continue
            new = anonymous if user.name == ANONYMOUS else users[user.name]
            peer.user = new
            peer.free = new.free
        self.counters["revoked_peers"] += dropped
        if dropped and (self._next_tick is None or self._now < self._next_tick):
            self._next_tick = self._now  # the loop closes them on its next pass
        return dropped

    def drop_peer(self, ident: bytes) -> bool:
        """Forget a peer: its subscriptions go, and every publisher still waiting
        on it gets an ACKED that reports it left. False if it was unknown."""
        peer = self.peers.pop(ident, None)
        if peer is None:
            return False
        self.sessions.pop(peer.session, None)
        if peer.conn is not None:
            # Its connection, if still open, is unjoined again from now on.
            self.connections.left(peer.conn, ident, self._now)
            self._connections_changed()
        if ident in self.watched:
            self.watched.discard(ident)
            self.ending.discard(ident)
        if peer.user is not None:
            self._give_back(peer.user.name, peer.channel.id, len(peer.subs))
        self._beating.discard(ident)
        self._lossy.discard(ident)
        if self.streams.consumers:
            self.streams.peer_gone(ident)
        self._slow.discard(peer)
        self._holding.discard(ident)
        peer.held = []
        if peer.batch_commands:
            self._batching_peers -= 1
        channel = peer.channel
        channel.peers.discard(ident)
        # A channel's traffic is its peers' (STATS adds them up): a departed
        # peer's stays with the channel.
        channel.msgs_in += peer.msgs_in
        channel.msgs_out += peer.msgs_out
        if len(peer.subs) <= UNSUBSCRIBE_SLICE:
            for sid, (pattern, queue) in peer.subs.items():
                channel.remove(peer, sid, pattern, queue, many=True)
            self._forget_channel(channel)
        else:
            # Removed over the next passes; routing passes it over meanwhile.
            channel.gone.add(ident)
            self._leaving[ident] = peer
            self._unsubscribing.append((peer, deque(peer.subs.items())))
            if self._next_tick is None or self._now < self._next_tick:
                self._next_tick = self._now
        if peer.outstanding:
            # Each publisher still waiting on it learns it left; past a slice,
            # the rest over the next passes (tick), while others are served.
            self._settling.append((p.pack_ack(0, 0, [_LEFT_TEXT]), deque(peer.outstanding)))
            self._settle()
            if self._settling and (self._next_tick is None or self._now < self._next_tick):
                self._next_tick = self._now
        self.counters["disconnects"] += 1
        self._stats_at = float("-inf")
        return True

    # --- connections --------------------------------------------------------

    def connection_opened(self, key: ConnKey, now: float) -> None:
        """The transport accepted a connection, ``key`` = (fd, peer address)."""
        self._now = now
        self.counters["connections_accepted"] += 1
        self.connections.accepted(key, now)
        self._connections_changed()

    def connection_closed(self, key: ConnKey, now: float) -> None:
        """The connection ``key`` ended. A peer joined on it is dropped once
        what it sent before has been read (ENDING_GRACE after its last
        message); until then nothing is sent to its routing id, and a message
        under that id from another connection ends it at once."""
        self._now = now
        self.counters["connections_closed"] += 1
        ident = self.connections.closed(key)
        self._connections_changed()
        peer = self.peers.get(ident) if ident is not None else None
        if peer is None or peer.conn != key or peer.ending:
            return
        peer.ending = now
        self.ending.add(peer.ident)
        self.watched.add(peer.ident)
        end = now + ENDING_GRACE
        if self._next_tick is None or end < self._next_tick:
            self._next_tick = end

    def _connections_changed(self) -> None:
        due = self.connections.due()
        if due is not None and (self._next_tick is None or due < self._next_tick):
            self._next_tick = due

    def _check_source(self, ident: bytes) -> None:
        # A watched peer's connection closed: a message under its routing id
        # that another connection sent ends its session before it is handled.
        src = self._src
        peer = self.peers.get(ident)
        if peer is None:
            self.watched.discard(ident)
            self.ending.discard(ident)
        elif src is not None and src[2] != peer.tag:
            self._taken_over(ident)

    def _taken_over(self, ident: bytes) -> None:
        self.counters["takeovers"] += 1
        log.warning(
            "peer %s: another connection claimed its routing id; its session ended",
            self.label(ident),
        )
        self.drop_peer(ident)

    def _end_watched(self, now: float) -> float | None:
        # Drops each ending peer ENDING_GRACE after its last message; returns
        # when the next is due.
        nxt: float | None = None
        for ident in list(self.ending):
            peer = self.peers.get(ident)
            if peer is None:
                self.ending.discard(ident)
                continue
            end = max(peer.ending, peer.last_heard) + ENDING_GRACE
            if now >= end:
                self.counters["vanished"] += 1
                self.drop_peer(ident)
            elif nxt is None or end < nxt:
                nxt = end
        return nxt

    def _forget_channel(self, channel: Channel) -> None:
        # A channel goes with its last peer, once nothing of a departed one is left.
        if not channel.peers and not channel.gone and self.channels.get(channel.id) is channel:
            del self.channels[channel.id]
            channel.clear_cache()

    def _unsubscribe_departed(self, limit: int | None = UNSUBSCRIBE_SLICE) -> None:
        # Up to ``limit`` subscriptions of departed peers (None: all), oldest first.
        queue = self._unsubscribing
        left = limit
        while queue and (left is None or left > 0):
            peer, subs = queue[0]
            channel = peer.channel
            while subs and (left is None or left > 0):
                sid, (pattern, queue_name) = subs.popleft()
                channel.remove(peer, sid, pattern, queue_name, many=True)
                if left is not None:
                    left -= 1
            if not subs:
                queue.popleft()
                channel.gone.discard(peer.ident)
                del self._leaving[peer.ident]
                self._forget_channel(channel)

    def _unsubscribe_now(self, peer: Peer) -> None:
        # All of one departed peer's subscriptions, now; the others keep their turn.
        queue = self._unsubscribing
        for i, (leaving, subs) in enumerate(queue):
            if leaving is peer:
                queue.rotate(-i)  # it first, the others in order after it
                self._unsubscribe_departed(len(subs))
                queue.rotate(i)
                return

    def _settle(self) -> None:
        # Up to SETTLE_SLICE confirmations of departed peers, oldest departure first.
        left = SETTLE_SLICE
        settling = self._settling
        resolve = self._resolve
        while settling and left:
            body, tokens = settling[0]
            n = min(left, len(tokens))
            for _ in range(n):
                resolve(tokens.popleft(), body)
            left -= n
            if not tokens:
                settling.popleft()

    def _refuse(
        self,
        ident: bytes,
        frames: Sequence[bytes],
        code: int,
        text: str,
        retry_after: int | None = None,
    ) -> None:
        self.errors[code] += 1
        self.counters["errors"] += 1
        channel = frames[1] if len(frames) > 1 and len(frames[1]) == p.CHANNEL_BYTES else b""
        ref = b""
        if (
            len(frames) > REF_FRAME
            and len(frames[REF_FRAME]) <= _ECHO_MAX
            and frames[0] in _ECHO_HEADERS
        ):
            ref = frames[REF_FRAME]
        log.debug("refused message from %s: [%d] %s", ident.hex(), code, text)
        self.outbox.append((ident, p.encode(p.Error(channel, ref, code, text, retry_after))))

    # --- time ---------------------------------------------------------------

    def tick(self, now: float) -> float | None:
        """Time-driven duties at time ``now``, those due: BROKER_HEARTBEAT for
        each peer due one, forgetting each peer silent for LIVENESS intervals,
        probing peers without heartbeats that were silent for
        ``idle_probe_seconds``, letting held replies be sent again (by the
        next ``take_outgoing``), and the next slices of departed peers'
        subscriptions to remove and confirmations to settle. Returns when to
        tick next, or None while nothing is to do."""
        due = self._next_tick
        if due is None or now < due:
            return due  # the hot path: the loop calls this once per pass
        self._now = now
        nxt = self._beat(now) if self._beating else None
        probe = self._next_probe
        if probe is not None:
            if now >= probe:
                probe = self._next_probe = self._probe_idle(now)
            if probe is not None and (nxt is None or probe < nxt):
                nxt = probe
        if self._holding:
            retry = self._retry_at if self._retry_at > now else now
            if nxt is None or retry < nxt:
                nxt = retry
        if self._settling:
            self._settle()
            if self._settling:
                nxt = now
        if self._unsubscribing:
            self._unsubscribe_departed()
            if self._unsubscribing:
                nxt = now
        if self.streams.consumers or self.streams.expiring:
            later = self.streams.tick(now)
            if later is not None and (nxt is None or later < nxt):
                nxt = later
        if self._throttled:
            notice = self._flush_throttled(now)
            if notice is not None and (nxt is None or notice < nxt):
                nxt = notice
        if self.ending:
            end = self._end_watched(now)
            if end is not None and (nxt is None or end < nxt):
                nxt = end
        connections = self.connections
        closing = connections.due()
        if closing is not None and now >= closing:
            expired = connections.expired(now)
            self.counters["unjoined_closed"] += len(expired)
            self.closing.extend(expired)
            closing = connections.due()
        if closing is not None and (nxt is None or closing < nxt):
            nxt = closing
        self._next_tick = nxt
        return nxt

    def due(self) -> float | None:
        """When ``tick`` next has something to do (None: nothing yet); what
        ``send_failed`` scheduled is included."""
        return self._next_tick

    def _probe_idle(self, now: float) -> float | None:
        # A BROKER_HEARTBEAT to each silent peer without heartbeats: a vanished
        # connection fails the send (EHOSTUNREACH) and send_failed forgets it.
        idle = self.limits.idle_probe_seconds
        waiting = False
        for ident, peer in self.peers.items():
            if peer.heartbeat:
                continue
            waiting = True
            if now - peer.last_heard >= idle:
                self.outbox.append((ident, [p.H_BROKER_HEARTBEAT, peer.channel.id]))
                self.counters["idle_probes"] += 1
        return now + idle if waiting else None

    def _beat(self, now: float) -> float | None:
        nxt: float | None = None
        for ident in list(self._beating):
            peer = self.peers[ident]
            if now - peer.last_heard > LIVENESS * peer.heartbeat:
                log.info("peer %s silent for %.1fs: forgotten", ident.hex(), now - peer.last_heard)
                self.counters["expired"] += 1
                self.drop_peer(ident)
                continue
            if now >= peer.next_beat:
                self.outbox.append((ident, [p.H_BROKER_HEARTBEAT, peer.channel.id]))
                self.counters["heartbeats_out"] += 1
                peer.next_beat = now + peer.heartbeat
            due = min(peer.next_beat, peer.last_heard + LIVENESS * peer.heartbeat)
            if nxt is None or due < nxt:
                nxt = due
        return nxt

    def bye_all(self) -> None:
        """Queue BYE for every peer: the broker is going away (graceful shutdown)."""
        for ident, peer in self.peers.items():
            self.outbox.append((ident, [p.H_BYE, peer.channel.id]))

    # --- introspection ------------------------------------------------------

    def stats(self, top: int = STATS_TOP) -> dict[str, object]:
        """Peers, channels, subscriptions, message counters and errors by code,
        and the ``top`` channels and peers that moved the most messages."""
        if not 0 <= top <= STATS_TOP_MAX:
            raise ValueError(f"top must be from 0 to {STATS_TOP_MAX}: {top}")
        return {
            "broker": self._name,
            "uptime_s": self._clock() - self._started,
            "peers": len(self.peers),
            "channels": len(self.channels),
            "subscriptions": self.subscription_count(),
            "queue_groups": sum(len(c.groups) for c in self.channels.values()),
            "pending_confirmations": len(self._pending),
            "connections": len(self.connections),
            "unjoined_connections": self.connections.unjoined,
            # The slowest peers by messages dropped at the broker since they
            # joined; only peers that lost any are looked at.
            "slow_peers": {
                self.label(peer.ident): peer.dropped_total
                for peer in heapq.nlargest(10, self._slow, key=_dropped_total)
            },
            "counters": dict(self.counters),
            "errors": {int(code): n for code, n in self.errors.items()},
            "limits": self.limits.as_dict(),
            "refused": dict(self.refused),
            "denied": dict(self.denied),
            "rate_limited": dict(self.rate_limited),
            "streams": self.streams.stats(),
            "topic_cache_bytes": self._budget.used,
            "top_channels": self._channel_table(
                heapq.nlargest(top, self._channel_traffic().items(), key=_channel_total)
            ),
            "top_peers": self._peer_table(heapq.nlargest(top, self.peers.values(), key=_traffic)),
        }

    def channel_stats(self, channel: Channel | None) -> dict[str, object]:
        """What STATS shows a user without admin: ``channel`` (its own; None:
        it has joined none) and the broker's limits."""
        return {
            "broker": self._name,
            "uptime_s": self._clock() - self._started,
            "peers": len(channel.peers) if channel is not None else 0,
            "channels": 1 if channel is not None else 0,
            "subscriptions": channel.nsubs if channel is not None else 0,
            "queue_groups": len(channel.groups) if channel is not None else 0,
            "limits": self.limits.as_dict(),
            "top_channels": self._channel_table(
                [] if channel is None else self._channel_traffic([channel]).items()
            ),
        }

    def _channel_traffic(self, only: Iterable[Channel] | None = None) -> dict[Channel, list[int]]:
        """[messages in, messages out] of each channel (or of those ``only``):
        what its departed peers and the broker put there, and its peers' own."""
        channels = self.channels.values() if only is None else only
        totals = {c: [c.msgs_in, c.msgs_out] for c in channels}
        if only is None:
            peers: Iterable[Peer] = self.peers.values()
        else:
            peers = [self.peers[i] for c in totals for i in c.peers if i in self.peers]
        for peer in peers:
            held = totals.get(peer.channel)
            if held is not None:
                held[0] += peer.msgs_in
                held[1] += peer.msgs_out
        return totals

    def _channel_table(self, channels: Iterable[tuple[Channel, list[int]]]) -> list[object]:
        # One array: the column count, the columns, then each row's cells (a
        # map per row would pass the 16 arrays and maps a client decodes).
        table: list[object] = [len(CHANNEL_COLUMNS), *CHANNEL_COLUMNS]
        for c, (msgs_in, msgs_out) in channels:
            table += (
                self.channel_label(c.id),
                msgs_in,
                msgs_out,
                c.bytes_in,
                len(c.peers),
                c.nsubs,
            )
        return table

    def _peer_table(self, peers: Iterable[Peer]) -> list[object]:
        # As _channel_table; a peer by its label and its channel's, never an ID.
        table: list[object] = [len(PEER_COLUMNS), *PEER_COLUMNS]
        for peer in peers:
            table += (
                self.label(peer.ident),
                self.channel_label(peer.channel.id),
                peer.msgs_in,
                peer.msgs_out,
                len(peer.subs),
                peer.dropped_total,
            )
        return table

    def label(self, ident: bytes) -> str:
        """The name STATS gives the peer ``ident``: stable while the broker
        runs, and not its routing id (which would let a reader claim the ids
        libzmq gives next, see docs/protocol.md, Peers and sessions)."""
        return hashlib.blake2b(ident, key=self._label_key, digest_size=6).hexdigest()

    def channel_label(self, channel_id: bytes) -> str:
        """The name STATS gives the channel ``channel_id``: stable while the
        broker runs, and not the ID (which, on a broker without
        authentication, is all a peer needs to join the channel and read it)."""
        return hashlib.blake2b(
            channel_id, key=self._label_key, digest_size=6, person=b"channel"
        ).hexdigest()

    @property
    def pending_confirmations(self) -> int:
        """Confirmed publishes still waiting for subscriber ACKs."""
        return len(self._pending)

    def subscription_count(self) -> int:
        """Number of open subscriptions (sids) over all channels."""
        return sum(channel.nsubs for channel in self.channels.values())


def _anonymous(ident: bytes) -> bool:
    # The form of the routing ids libzmq gives peers that set none.
    return len(ident) == 5 and ident[0] == 0


def _dropped_total(peer: Peer) -> int:
    return peer.dropped_total


def _traffic(peer: Peer) -> int:
    # What orders STATS's top_peers: messages in and out since it joined.
    return peer.msgs_in + peer.msgs_out


def _channel_total(item: tuple[Channel, list[int]]) -> int:
    # What orders STATS's top_channels: messages in and out since it was made.
    return item[1][0] + item[1][1]
