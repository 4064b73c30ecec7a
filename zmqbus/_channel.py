"""One channel's peers and subscriptions, and its cache of targets per topic."""

from __future__ import annotations

from collections.abc import Iterable

from ._groups import QueueGroup
from ._peer import Peer
from .protocol import split_sids
from .topics import TopicTrie

__all__ = ["CACHE_LIMIT", "CacheBudget", "Channel", "Targets"]

# Topic -> targets cache entries kept per channel before the cache is reset;
# bounds the count when publishers use many distinct topics (the bytes are
# bounded by the CacheBudget all channels share).
CACHE_LIMIT = 8192
# What one cache entry costs beyond its bytes: the dict slot and its tuples,
# and per target its (ident, sids) pair (CPython 3.11, 64-bit).
_ENTRY_OVERHEAD = 200
_TARGET_OVERHEAD = 64

# Plain targets as (ident, packed sids) pairs, and the matching queue groups.
Targets = tuple[tuple[tuple[bytes, bytes], ...], tuple[QueueGroup, ...]]


class CacheBudget:
    """The bytes the topic caches of all channels may hold together."""

    __slots__ = ("channels", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.channels: set[Channel] = set()  # those whose cache holds anything

    def make_room(self, channel: Channel, cost: int) -> bool:
        """Free room for ``cost`` more bytes in ``channel``'s cache, emptying
        its cache first and then every cache; False if it can never fit."""
        if cost > self.limit:
            return False
        if self.used + cost > self.limit:
            channel.clear_cache()
        if self.used + cost > self.limit:
            for other in list(self.channels):
                other.clear_cache()
        return True


class Channel:
    """The peers and subscriptions of one channel ID."""

    __slots__ = (
        "budget",
        "cache",
        "cache_bytes",
        "groups",
        "id",
        "nsubs",
        "packed",
        "peers",
        "trie",
    )

    def __init__(self, channel_id: bytes, budget: CacheBudget | None = None) -> None:
        self.id = channel_id
        self.peers: set[bytes] = set()
        # Values: (ident, sid) for a plain subscription, a QueueGroup for a queue group.
        self.trie: TopicTrie[object] = TopicTrie()
        self.groups: dict[tuple[str, str], QueueGroup] = {}
        self.cache: dict[bytes, Targets] = {}
        self.cache_bytes = 0
        self.budget = budget if budget is not None else CacheBudget(1 << 62)
        self.nsubs = 0  # open subscriptions, plain and queue group members
        # id(set of values at one trie pattern) -> (that set, its packed targets).
        self.packed: dict[int, tuple[set[object], Targets]] = {}

    def clear_cache(self) -> None:
        """Forget every cached topic (the subscriptions changed, or room is needed)."""
        self.cache.clear()
        self.budget.used -= self.cache_bytes
        self.budget.channels.discard(self)
        self.cache_bytes = 0

    def targets(self, topic: bytes) -> Targets:
        """Plain targets as (ident, packed sids) pairs, and matching queue groups."""
        hit = self.cache.get(topic)
        if hit is None:
            if len(self.cache) >= CACHE_LIMIT:
                self.clear_cache()
            sets = self.trie.match_sets(topic.decode("utf-8"))
            # What the entry adds to memory: the packed sids of one pattern are
            # shared by every topic it matches, so only merged ones are new.
            fresh = 0
            if len(sets) == 1:
                hit = self._packed_set(sets[0])
            else:
                # Per matching pattern, its targets are packed once; a new topic
                # costs what its patterns and their peers cost, not its sids.
                plain: dict[bytes, list[bytes]] = {}
                groups: list[QueueGroup] = []
                for values in sets:
                    some, theirs = self._packed_set(values)
                    for ident, sids in some:
                        plain.setdefault(ident, []).append(sids)
                    groups.extend(theirs)
                targets = []
                for ident, parts in plain.items():
                    if len(parts) == 1:
                        targets.append((ident, parts[0]))
                        continue
                    # In sid order, as each pattern's own are: the same message
                    # frames whichever patterns matched.
                    sids = b"".join(sorted(split_sids(b"".join(parts))))
                    fresh += len(sids)
                    targets.append((ident, sids))
                hit = (tuple(targets), tuple(groups))
            cost = (
                _ENTRY_OVERHEAD
                + len(topic)
                + _TARGET_OVERHEAD * len(hit[0])
                + 8 * len(hit[1])
                + fresh
            )
            budget = self.budget
            if budget.make_room(self, cost):
                self.cache[topic] = hit
                self.cache_bytes += cost
                budget.used += cost
                budget.channels.add(self)
        return hit

    def _packed_set(self, values: set[object]) -> Targets:
        # The targets of one pattern's set of values in the trie, kept while
        # the subscriptions stay as they are (add and remove forget them all).
        key = id(values)
        held = self.packed.get(key)
        if held is not None:
            return held[1]
        plain: dict[bytes, list[bytes]] = {}
        groups: list[QueueGroup] = []
        for value in values:
            if isinstance(value, QueueGroup):
                groups.append(value)
            else:
                pair: tuple[bytes, bytes] = value  # type: ignore[assignment]
                plain.setdefault(pair[0], []).append(pair[1])
        packed = (
            tuple((ident, b"".join(sorted(sids))) for ident, sids in plain.items()),
            tuple(groups),
        )
        # The set itself is kept with it, so its id cannot be reused meanwhile.
        self.packed[key] = (values, packed)
        return packed

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
        self.nsubs += 1
        self.packed.clear()
        self.clear_cache()

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
        self.nsubs -= 1
        self.packed.clear()
        self.clear_cache()
