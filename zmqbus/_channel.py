"""One channel's peers and subscriptions, and its cache of targets per topic."""

from __future__ import annotations

from collections.abc import Iterable

from ._groups import QueueGroup
from ._peer import Peer
from .protocol import SID_BYTES, split_sids
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


class _Packed:
    """The targets of the values at one trie pattern, kept as subscriptions
    come and go there: plain sids packed per peer (in sid order), and groups."""

    __slots__ = ("groups", "plain", "targets", "values")

    def __init__(self, values: set[object]) -> None:
        # The set itself is kept, so its id (the key) cannot be reused meanwhile.
        self.values = values
        plain: dict[bytes, list[bytes]] = {}
        groups: list[QueueGroup] = []
        for value in values:
            if isinstance(value, QueueGroup):
                groups.append(value)
            else:
                pair: tuple[bytes, bytes] = value  # type: ignore[assignment]
                plain.setdefault(pair[0], []).append(pair[1])
        self.plain = {ident: b"".join(sorted(sids)) for ident, sids in plain.items()}
        self.groups = groups
        self.targets: Targets | None = None

    def get(self) -> Targets:
        targets = self.targets
        if targets is None:
            targets = self.targets = (tuple(self.plain.items()), tuple(self.groups))
        return targets

    def add(self, ident: bytes, sid: bytes) -> None:
        # One sid into its peer's packed run: a copy of that run, not a repack
        # of the pattern (a subscribe between publishes stays cheap).
        sids = self.plain.get(ident, b"")
        i = _position(sids, sid)
        self.plain[ident] = sids[:i] + sid + sids[i:]
        self.targets = None

    def remove(self, ident: bytes, sid: bytes) -> None:
        sids = self.plain.get(ident, b"")
        i = _position(sids, sid)
        if sids[i : i + SID_BYTES] != sid:
            return
        if len(sids) == SID_BYTES:
            del self.plain[ident]
        else:
            self.plain[ident] = sids[:i] + sids[i + SID_BYTES :]
        self.targets = None


def _position(sids: bytes, sid: bytes) -> int:
    """The byte offset at which ``sid`` is, or goes, in the sorted run ``sids``."""
    lo, hi = 0, len(sids) // SID_BYTES
    while lo < hi:
        mid = (lo + hi) // 2
        at = mid * SID_BYTES
        if sids[at : at + SID_BYTES] < sid:
            lo = mid + 1
        else:
            hi = mid
    return lo * SID_BYTES


class Channel:
    """The peers and subscriptions of one channel ID."""

    __slots__ = (
        "budget",
        "bytes_in",
        "cache",
        "cache_bytes",
        "gone",
        "groups",
        "id",
        "msgs_in",
        "msgs_out",
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
        # Idents of departed peers whose subscriptions are still being removed
        # (a slice a pass): routing passes them over meanwhile.
        self.gone: set[bytes] = set()
        # id(set of values at one trie pattern) -> its targets, packed.
        self.packed: dict[int, _Packed] = {}
        # Traffic since the channel was made, for STATS: messages routed in
        # and deliveries made of them that no peer still joined counts (its
        # departed peers', and the broker's dead letters: STATS adds the
        # peers' own, so routing bumps one object, not two), and the octets
        # that carried messages in.
        self.msgs_in = 0
        self.msgs_out = 0
        self.bytes_in = 0

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
        # The targets of one pattern's set of values in the trie, packed once
        # and then kept in step by add and remove.
        held = self.packed.get(id(values))
        if held is None:
            held = self.packed[id(values)] = _Packed(values)
        return held.get()

    def destinations(self, topic: bytes) -> Iterable[tuple[bytes, bytes]]:
        """(ident, packed sids) for each peer a message on ``topic`` goes to: the
        plain targets, and one member picked from each matching queue group."""
        plain, groups = self.targets(topic)
        gone = self.gone
        if gone:
            plain = tuple(target for target in plain if target[0] not in gone)
        if not groups:
            return plain
        dests = dict(plain)
        for group in groups:
            picked = group.pick(gone)
            if picked is not None:
                peer, sid = picked
                dests[peer.ident] = dests.get(peer.ident, b"") + sid
        return dests.items()

    def add(self, peer: Peer, sid: bytes, pattern: str, queue: str) -> None:
        """Subscribe ``peer``'s ``sid`` to ``pattern``, in queue group ``queue`` if not empty."""
        trie = self.trie
        if queue:
            group = self.groups.get((pattern, queue))
            if group is None:
                group = self.groups[(pattern, queue)] = QueueGroup((pattern, queue))
                trie.add(pattern, group)
                held = self._held(pattern)
                if held is not None:
                    held.groups.append(group)
                    held.targets = None
            group.add(peer, sid)
        else:
            trie.add(pattern, (peer.ident, sid))
            held = self._held(pattern)
            if held is not None:
                held.add(peer.ident, sid)
        self.nsubs += 1
        self.clear_cache()

    def remove(
        self, peer: Peer, sid: bytes, pattern: str, queue: str, *, many: bool = False
    ) -> None:
        """Undo ``add``; a queue group goes with its last member. ``many``: one
        of many removals at once (the pattern's targets are packed again when
        next needed, not kept in step one sid at a time)."""
        if queue:
            group = self.groups[(pattern, queue)]
            group.remove(peer, sid)
            if not group.members:
                held = self._held(pattern)
                del self.groups[(pattern, queue)]
                self.trie.remove(pattern, group)
                if held is not None:
                    held.groups.remove(group)
                    held.targets = None
                    if not held.values:
                        del self.packed[id(held.values)]
        else:
            held = self._held(pattern)
            self.trie.remove(pattern, (peer.ident, sid))
            if held is not None:
                if many or not held.values:
                    del self.packed[id(held.values)]
                else:
                    held.remove(peer.ident, sid)
        self.nsubs -= 1
        self.clear_cache()

    def _held(self, pattern: str) -> _Packed | None:
        values = self.trie.bucket(pattern)
        return None if values is None else self.packed.get(id(values))
