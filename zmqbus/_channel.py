"""One channel's peers and subscriptions, and its cache of targets per topic."""

from __future__ import annotations

from collections.abc import Iterable

from ._groups import QueueGroup
from ._peer import Peer
from .topics import TopicTrie

__all__ = ["CACHE_LIMIT", "Channel", "Targets"]

# Topic -> targets cache entries kept per channel before the cache is reset;
# bounds memory when publishers use many distinct topics.
CACHE_LIMIT = 8192

# Plain targets as (ident, packed sids) pairs, and the matching queue groups.
Targets = tuple[tuple[tuple[bytes, bytes], ...], tuple[QueueGroup, ...]]


class Channel:
    """The peers and subscriptions of one channel ID."""

    __slots__ = ("cache", "groups", "id", "peers", "trie")

    def __init__(self, channel_id: bytes) -> None:
        self.id = channel_id
        self.peers: set[bytes] = set()
        # Values: (ident, sid) for a plain subscription, a QueueGroup for a queue group.
        self.trie: TopicTrie[object] = TopicTrie()
        self.groups: dict[tuple[str, str], QueueGroup] = {}
        self.cache: dict[bytes, Targets] = {}

    def targets(self, topic: bytes) -> Targets:
        """Plain targets as (ident, packed sids) pairs, and matching queue groups."""
        hit = self.cache.get(topic)
        if hit is None:
            if len(self.cache) >= CACHE_LIMIT:
                self.cache.clear()
            plain: dict[bytes, list[bytes]] = {}
            groups: list[QueueGroup] = []
            for value in self.trie.match(topic.decode("utf-8")):
                if isinstance(value, QueueGroup):
                    groups.append(value)
                else:
                    pair: tuple[bytes, bytes] = value  # type: ignore[assignment]
                    plain.setdefault(pair[0], []).append(pair[1])
            hit = self.cache[topic] = (
                tuple((ident, b"".join(sorted(sids))) for ident, sids in plain.items()),
                tuple(groups),
            )
        return hit

    def destinations(self, topic: bytes) -> Iterable[tuple[bytes, bytes]]:
        """(ident, packed sids) for each peer a message on ``topic`` goes to: the
        plain targets, and one member picked from each matching queue group."""
        plain, groups = self.targets(topic)
        if not groups:
            return plain
        dests = dict(plain)
        for group in groups:
            peer, sid = group.pick()
            dests[peer.ident] = dests.get(peer.ident, b"") + sid
        return dests.items()

    def add(self, peer: Peer, sid: bytes, pattern: str, queue: str) -> None:
        """Subscribe ``peer``'s ``sid`` to ``pattern``, in queue group ``queue`` if not empty."""
        if queue:
            group = self.groups.get((pattern, queue))
            if group is None:
                group = self.groups[(pattern, queue)] = QueueGroup((pattern, queue))
                self.trie.add(pattern, group)
            group.add(peer, sid)
        else:
            self.trie.add(pattern, (peer.ident, sid))
        self.cache.clear()

    def remove(self, peer: Peer, sid: bytes, pattern: str, queue: str) -> None:
        """Undo ``add``; a queue group goes with its last member."""
        if queue:
            group = self.groups[(pattern, queue)]
            group.remove(peer, sid)
            if not group.members:
                del self.groups[(pattern, queue)]
                self.trie.remove(pattern, group)
        else:
            self.trie.remove(pattern, (peer.ident, sid))
        self.cache.clear()
