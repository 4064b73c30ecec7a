"""Topic and pattern rules, and a token trie that matches topics to patterns.

A topic is dot-separated tokens: case-sensitive, no empty token, no
whitespace or control characters, no ``*`` or ``>`` characters, at most
``MAX_TOPIC_BYTES`` bytes of UTF-8. A pattern is a topic whose tokens may also
be the wildcards ``*`` (exactly one token) or ``>`` (one or more trailing
tokens, last token only).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = [
    "MAX_TOPIC_BYTES",
    "TopicTrie",
    "is_pattern",
    "matches",
    "validate_pattern",
    "validate_topic",
]

MAX_TOPIC_BYTES = 256

# Any whitespace, C0 or C1 control character, and the wildcard characters.
_BAD_CHARS = re.compile(r"[\s\x00-\x1f\x7f-\x9f*>]")


def _check(value: object, kind: str) -> list[str]:
    if not isinstance(value, str):
        raise TypeError(f"{kind} must be str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{kind} must not be empty")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise ValueError(f"{kind} longer than {MAX_TOPIC_BYTES} bytes of UTF-8: {value[:40]!r}...")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{kind} is not valid UTF-8 text: {value!r}") from None
    tokens = value.split(".")
    if "" in tokens:
        raise ValueError(f"{kind} has an empty token: {value!r}")
    return tokens


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid publish topic, else raise.

    Raises ``TypeError`` for a non-str and ``ValueError`` for a str that breaks
    the rules (including any wildcard).
    """
    tokens = _check(topic, "topic")
    for tok in tokens:
        if _BAD_CHARS.search(tok):
            if tok in ("*", ">"):
                raise ValueError(f"cannot publish to a pattern: {topic!r}")
            raise ValueError(f"topic token {tok!r} has whitespace, a control or wildcard character")
    return topic  # type: ignore[return-value]


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise."""
    tokens = _check(pattern, "pattern")
    last = len(tokens) - 1
    for i, tok in enumerate(tokens):
        if tok == "*":
            continue
        if tok == ">":
            if i != last:
                raise ValueError(f"'>' may only be the last token: {pattern!r}")
            continue
        if _BAD_CHARS.search(tok):
            raise ValueError(
                f"pattern token {tok!r} has whitespace, a control character or a "
                "wildcard that is not a whole token"
            )
    return pattern  # type: ignore[return-value]


def is_pattern(pattern: str) -> bool:
    """True if a (valid) pattern has a wildcard token."""
    return any(tok in ("*", ">") for tok in pattern.split("."))


def matches(pattern: str, topic: str) -> bool:
    """Reference matcher: does ``pattern`` match ``topic``? Both must be valid."""
    ptoks = pattern.split(".")
    ttoks = topic.split(".")
    for i, p in enumerate(ptoks):
        if p == ">":
            return len(ttoks) > i
        if i >= len(ttoks):
            return False
        if p != "*" and p != ttoks[i]:
            return False
    return len(ptoks) == len(ttoks)


V = TypeVar("V", bound=Hashable)


class _Node(Generic[V]):
    # __slots__ keeps a node small: the broker may hold 100,000s of them.
    __slots__ = ("children", "here", "tail")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] | None = None
        self.here: set[V] | None = None  # values whose pattern ends at this node
        self.tail: set[V] | None = None  # values whose pattern ends with '>' here

    def empty(self) -> bool:
        return not self.children and not self.here and not self.tail


class TopicTrie(Generic[V]):
    """Maps patterns to sets of values; ``match(topic)`` finds every value whose
    pattern matches, in time bound by the topic's depth, not the number of
    patterns. Patterns are assumed valid (validate first)."""

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._count = 0

    def __len__(self) -> int:
        """Number of (pattern, value) pairs held."""
        return self._count

    def node_count(self) -> int:
        """Nodes held below the root: what the trie's memory grows with, one per
        distinct pattern prefix still in use (removal prunes the rest)."""
        n = 0
        stack = [self._root]
        while stack:
            children = stack.pop().children
            if children:
                n += len(children)
                stack.extend(children.values())
        return n

    def add(self, pattern: str, value: V) -> bool:
        """Add ``value`` under ``pattern``; False if it was already there."""
        node = self._root
        tokens = pattern.split(".")
        if tokens[-1] == ">":
            tokens.pop()
            tail = True
        else:
            tail = False
        for tok in tokens:
            if node.children is None:
                node.children = {}
            nxt = node.children.get(tok)
            if nxt is None:
                nxt = node.children[tok] = _Node()
            node = nxt
        if tail:
            if node.tail is None:
                node.tail = set()
            bucket = node.tail
        else:
            if node.here is None:
                node.here = set()
            bucket = node.here
        if value in bucket:
            return False
        bucket.add(value)
        self._count += 1
        return True

    def bucket(self, pattern: str) -> set[V] | None:
        """The set of values held under ``pattern`` (the one ``match_sets``
        returns for it), or None if none are."""
        tokens = pattern.split(".")
        tail = tokens[-1] == ">"
        if tail:
            tokens.pop()
        node: _Node[V] | None = self._root
        for tok in tokens:
            children = node.children  # type: ignore[union-attr]
            node = children.get(tok) if children else None
            if node is None:
                return None
        return node.tail if tail else node.here  # type: ignore[union-attr]

    def remove(self, pattern: str, value: V) -> bool:
        """Remove ``value`` from ``pattern``; False if it was not there.
        Empty branches are pruned so memory follows the live patterns."""
        tokens = pattern.split(".")
        tail = tokens[-1] == ">"
        if tail:
            tokens.pop()
        path: list[tuple[_Node[V], str]] = []
        node = self._root
        for tok in tokens:
            nxt = node.children.get(tok) if node.children else None
            if nxt is None:
                return False
            path.append((node, tok))
            node = nxt
        bucket = node.tail if tail else node.here
        if not bucket or value not in bucket:
            return False
        bucket.discard(value)
        if not bucket:
            if tail:
                node.tail = None
            else:
                node.here = None
        self._count -= 1
        for parent, tok in reversed(path):
            child = parent.children[tok]  # type: ignore[index]
            if not child.empty():
                break
            del parent.children[tok]  # type: ignore[union-attr]
            if not parent.children:
                parent.children = None
        return True

    def match(self, topic: str) -> set[V]:
        """Every value whose pattern matches ``topic``."""
        out: set[V] = set()
        for values in self.match_sets(topic):
            out.update(values)
        return out

    def match_sets(self, topic: str) -> list[set[V]]:
        """The sets of values held at each pattern that matches ``topic``, as
        the trie holds them (not copies: read, never change them). A value
        held under one pattern is in one set only."""
        out: list[set[V]] = []
        self._walk(self._root, topic.split("."), 0, out)
        return out

    def _walk(self, node: _Node[V], tokens: list[str], i: int, out: list[set[V]]) -> None:
        # Depth-first over at most two branches per level (the literal token and '*').
        if node.tail and i < len(tokens):
            out.append(node.tail)
        if i == len(tokens):
            if node.here:
                out.append(node.here)
            return
        children = node.children
        if not children:
            return
        nxt = children.get(tokens[i])
        if nxt is not None:
            self._walk(nxt, tokens, i + 1, out)
        star = children.get("*")
        if star is not None:
            self._walk(star, tokens, i + 1, out)

    def items(self) -> Iterator[tuple[str, V]]:
        """Every (pattern, value) pair, in no particular order."""
        stack: list[tuple[_Node[V], list[str]]] = [(self._root, [])]
        while stack:
            node, prefix = stack.pop()
            if node.here:
                for v in node.here:
                    yield ".".join(prefix), v
            if node.tail:
                for v in node.tail:
                    yield ".".join([*prefix, ">"]), v
            if node.children:
                for tok, child in node.children.items():
                    stack.append((child, [*prefix, tok]))
