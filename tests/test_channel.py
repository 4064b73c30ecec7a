"""Channel: the targets it keeps per pattern stay what a fresh packing of
its trie gives, whatever order subscriptions come and go in."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zmqbus._channel import Channel
from zmqbus._groups import QueueGroup
from zmqbus._peer import Peer

PATTERNS = ["a", "a.*", "a.>", ">", "*.b", "a.b"]
TOPICS = ["a", "a.b", "a.c", "x.b", "x.y.z"]


def _fresh(channel: Channel, topic: str) -> tuple[dict[bytes, bytes], set[QueueGroup]]:
    """What ``targets(topic)`` must give, computed from the trie alone."""
    plain: dict[bytes, list[bytes]] = {}
    groups: set[QueueGroup] = set()
    for value in channel.trie.match(topic):
        if isinstance(value, QueueGroup):
            groups.add(value)
        else:
            ident, sid = value  # type: ignore[misc]
            plain.setdefault(ident, []).append(sid)
    return {i: b"".join(sorted(s)) for i, s in plain.items()}, groups


def _check(channel: Channel) -> None:
    for topic in TOPICS:
        plain, groups = channel.targets(topic.encode())
        want_plain, want_groups = _fresh(channel, topic)
        assert dict(plain) == want_plain, topic
        assert set(groups) == want_groups, topic


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "remove_many", "check"]),
        st.integers(0, 2),  # peer
        st.integers(1, 6),  # sid
        st.sampled_from(PATTERNS),
        st.sampled_from(["", "", "q"]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_targets_stay_those_of_the_trie(steps: list[tuple[str, int, int, str, str]]) -> None:
    channel = Channel(b"c" * 16)
    peers = [Peer(bytes([i]) * 5, channel, b"s%d" % i) for i in range(3)]
    subs: dict[tuple[int, bytes], tuple[str, str]] = {}
    for op, who, n, pattern, queue in steps:
        peer, sid = peers[who], n.to_bytes(4, "big")
        key = (who, sid)
        if op == "add" and key not in subs:
            subs[key] = (pattern, queue)
            channel.add(peer, sid, pattern, queue)
        elif op.startswith("remove") and key in subs:
            channel.remove(peer, sid, *subs.pop(key), many=op == "remove_many")
        elif op == "check":
            _check(channel)
    _check(channel)
    for (who, sid), sub in list(subs.items()):
        channel.remove(peers[who], sid, *sub)
    _check(channel)
    assert not channel.packed and channel.nsubs == 0
