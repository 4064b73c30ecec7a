"""Queue groups: subscriptions that share the work of a pattern, one member per message."""

from __future__ import annotations

from ._peer import Peer

__all__ = ["QueueGroup"]


class QueueGroup:
    """The subscriptions of one channel with the same pattern and queue name."""

    __slots__ = ("key", "members", "next")

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.members: list[tuple[Peer, bytes]] = []
        self.next = 0

    def pick(self) -> tuple[Peer, bytes]:
        """The member (peer, sid) to take the next message."""
        # Rotate, preferring a member whose bus has no unconfirmed delivery
        # (idle); if all are busy, the least busy one.
        members = self.members
        n = len(members)
        start = self.next % n
        best = start
        best_load = -1
        for k in range(n):
            i = (start + k) % n
            load = len(members[i][0].outstanding)
            if load == 0:
                best = i
                break
            if best_load < 0 or load < best_load:
                best, best_load = i, load
        self.next = best + 1
        return members[best]
