"""One connected client as the broker knows it."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._channel import Channel
    from .users import User

__all__ = ["Peer"]


class Peer:
    """One connected client: its channel, subscriptions and unanswered deliveries."""

    __slots__ = (
        "batch",
        "batch_commands",
        "channel",
        "conn",
        "dropped",
        "dropped_bytes",
        "dropped_total",
        "ending",
        "free",
        "heartbeat",
        "held",
        "ident",
        "last_heard",
        "msgs_in",
        "msgs_out",
        "next_beat",
        "notice_at",
        "outstanding",
        "session",
        "streams",
        "subs",
        "tag",
        "throttled",
        "user",
    )

    def __init__(self, ident: bytes, channel: Channel, session: bytes) -> None:
        self.ident = ident
        self.channel = channel
        # The connection it joined on, (fd, address), when the transport has
        # one; its ZAP tag, which every message of that connection carries.
        self.conn: tuple[int, str] | None = None
        self.tag: str | None = None
        self.user: User | None = None  # set by its HELLO: whose permissions apply
        self.free = True  # its user may do anything: no check per message
        # When its connection was seen to close (0: it was not): it is then
        # dropped once its last messages, still queued, have been read.
        self.ending = 0.0
        self.heartbeat = 0.0  # seconds; 0: the peer did not ask for heartbeats
        self.batch = False  # the peer takes DELIVER_BATCH (asked in its HELLO)
        self.batch_commands = False  # the peer takes BROKER_BATCH (asked in its HELLO)
        self.streams = False  # the peer takes STORED (asked in its HELLO)
        # Messages the socket could not take for this peer, not yet reported:
        # per packed sids frame (one or more sids), as the messages named them.
        self.dropped: dict[bytes, int] = {}
        self.dropped_bytes = 0  # of the multi-sid frames in ``dropped``
        self.dropped_total = 0
        # Its unconfirmed publishes its user's rate limit dropped, not yet
        # reported, and when the next DROPPED notice of them may go.
        self.throttled = 0
        self.notice_at = 0.0
        self.last_heard = 0.0
        self.next_beat = 0.0
        # Messages it sent that were routed (PUBLISH alone or batched, REQUEST,
        # REPLY), and deliveries made to it (DELIVER, ASK, ANSWER): STATS's
        # per-peer traffic, bumped where routing already holds this object.
        self.msgs_in = 0
        self.msgs_out = 0
        # Broker-unique, never reused: the prefix of this session's reply tokens.
        self.session = session
        self.subs: dict[bytes, tuple[str, str]] = {}  # sid -> (pattern, queue)
        # Tokens of confirmed deliveries this peer has not ACKed yet, oldest
        # first: past the bound, the oldest is the one to expire.
        self.outstanding: OrderedDict[bytes, None] = OrderedDict()
        # Replies (OK, ERROR, WELCOME, STATS_REPLY) its full queue refused, in
        # order, to be sent again before any later reply to it.
        self.held: list[list[bytes]] = []
