"""Queue groups: subscriptions that share the work of a pattern, one member per message."""

from __future__ import annotations

from ._fastpath import twin
from ._peer import Peer

__all__ = ["QueueGroup", "pick_member"]


class QueueGroup:
    """The subscriptions of one channel with the same pattern and queue name."""

    __slots__ = ("_index", "key", "members", "next")

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.members: list[tuple[Peer, bytes]] = []
        # Position of each member in ``members``: removing one is O(1), so a
        # peer that leaves (or unsubscribes) N members costs O(N), not O(N^2).
        self._index: dict[tuple[Peer, bytes], int] = {}
        self.next = 0

    def add(self, peer: Peer, sid: bytes) -> None:
        """Add the member (``peer``, ``sid``); it must not be one already."""
        member = (peer, sid)
        self._index[member] = len(self.members)
        self.members.append(member)

    def remove(self, peer: Peer, sid: bytes) -> None:
        """Remove the member (``peer``, ``sid``); the last member takes its place."""
        members = self.members
        i = self._index.pop((peer, sid))
        last = members.pop()
        if i < len(members):
            members[i] = last
            self._index[last] = i

    def pick(self, gone: set[bytes] | frozenset[bytes] = frozenset()) -> tuple[Peer, bytes] | None:
        """The member (peer, sid) to take the next message, passing over those
        of the peers in ``gone`` (departed, still being removed); None if no
        other is left."""
        return pick_member(self, gone)


def pick_member(
    group: QueueGroup, gone: set[bytes] | frozenset[bytes]
) -> tuple[Peer, bytes] | None:
    """``QueueGroup.pick``: a function, so that it has a compiled twin."""
    # Rotate, preferring a member whose bus has no unconfirmed delivery
    # (idle); if all are busy, the least busy one.
    members = group.members
    n = len(members)
    start = group.next % n
    best = -1
    best_load = -1
    for k in range(n):
        i = (start + k) % n
        peer = members[i][0]
        if gone and peer.ident in gone:
            continue
        load = len(peer.outstanding)
        if load == 0:
            best = i
            break
        if best_load < 0 or load < best_load:
            best, best_load = i, load
    if best < 0:
        return None
    group.next = best + 1
    return members[best]


pick_member = twin(pick_member)
