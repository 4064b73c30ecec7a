"""Topic and pattern validation, the reference matcher, TopicTrie, and queue group names."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqbus import _validate
from zmqbus import protocol as p
from zmqbus.errors import ProtocolError
from zmqbus.topics import (
    MAX_TOPIC_BYTES,
    TopicTrie,
    is_pattern,
    matches,
    validate_pattern,
    validate_topic,
)

SETTINGS = settings(max_examples=100, deadline=None)

# --- validation: accepted ---------------------------------------------------

VALID_TOPICS = [
    "a",
    "a.b.c",
    "orders.eu-west.created",
    "Orders.EU",
    "under_score.dash-ed.1234",
    "café.日本語.ünïcödé",
    "emoji.\U0001f600",
    "x" * MAX_TOPIC_BYTES,
    "é" * (MAX_TOPIC_BYTES // 2),  # 2 bytes each: exactly at the limit
    "\U0001f600" * (MAX_TOPIC_BYTES // 4),  # 4 bytes each: exactly at the limit
    ".".join(["a"] * 128),  # 255 bytes, 128 tokens
]

VALID_PATTERNS = [
    *VALID_TOPICS,
    "*",
    ">",
    "a.*",
    "*.b",
    "a.>",
    "*.*.>",
    "a.*.c",
    "*.>",
    "a.b.c.>",
]


@pytest.mark.parametrize("topic", VALID_TOPICS)
def test_valid_topic_is_returned_unchanged(topic: str) -> None:
    assert validate_topic(topic) is topic


@pytest.mark.parametrize("pattern", VALID_PATTERNS)
def test_valid_pattern_is_returned_unchanged(pattern: str) -> None:
    assert validate_pattern(pattern) is pattern


# --- validation: refused ----------------------------------------------------

# Broken for both topics and patterns.
COMMON_INVALID = [
    pytest.param("", id="empty"),
    pytest.param(".", id="only-dot"),
    pytest.param("a..b", id="empty-token"),
    pytest.param(".a", id="leading-dot"),
    pytest.param("a.", id="trailing-dot"),
    pytest.param("..", id="two-dots"),
    pytest.param(" a", id="leading-space"),
    pytest.param("a b", id="inner-space"),
    pytest.param("a ", id="trailing-space"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\rb", id="cr"),
    pytest.param("a\x0bb", id="vt"),
    pytest.param("a\x0cb", id="ff"),
    pytest.param("a\u00a0b", id="nbsp"),
    pytest.param("a\u2003b", id="em-space"),
    pytest.param("a\u3000b", id="ideographic-space"),
    pytest.param("a\u2028b", id="line-separator"),
    pytest.param("a\u2029b", id="paragraph-separator"),
    pytest.param("a\u1680b", id="ogham-space"),
    pytest.param("a\x85b", id="nel"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x01b", id="soh"),
    pytest.param("a\x1bb", id="esc"),
    pytest.param("a\x1fb", id="unit-separator"),
    pytest.param("a\x7fb", id="del"),
    pytest.param("a*", id="partial-star-suffix"),
    pytest.param("*a", id="partial-star-prefix"),
    pytest.param("a.b*c", id="partial-star-inner"),
    pytest.param("a>", id="partial-gt"),
    pytest.param(">>", id="double-gt"),
    pytest.param("**", id="double-star"),
    pytest.param("x" * (MAX_TOPIC_BYTES + 1), id="257-ascii-bytes"),
    pytest.param("é" * (MAX_TOPIC_BYTES // 2 + 1), id="258-bytes-129-chars"),
    pytest.param("\U0001f600" * (MAX_TOPIC_BYTES // 4 + 1), id="260-bytes-65-chars"),
    pytest.param("a" * 255 + "é", id="257-bytes-256-chars"),
    pytest.param("\ud800", id="lone-high-surrogate"),
    pytest.param("a.\udfff", id="lone-low-surrogate"),
    pytest.param("a\udc80b", id="surrogateescape-byte"),
]


@pytest.mark.parametrize("value", COMMON_INVALID)
def test_invalid_topic_raises_value_error(value: str) -> None:
    with pytest.raises(ValueError):
        validate_topic(value)


@pytest.mark.parametrize("value", COMMON_INVALID)
def test_invalid_pattern_raises_value_error(value: str) -> None:
    with pytest.raises(ValueError):
        validate_pattern(value)


@pytest.mark.parametrize("topic", ["*", ">", "a.*", "a.>", "*.b", "a.*.c", "a.b.>"])
def test_wildcards_are_not_valid_topics(topic: str) -> None:
    validate_pattern(topic)  # a fine pattern ...
    with pytest.raises(ValueError):  # ... but never a publish topic
        validate_topic(topic)


@pytest.mark.parametrize("pattern", [">.a", "a.>.b", ">.>", ">.*", "a.>.>"])
def test_gt_must_be_the_last_token(pattern: str) -> None:
    with pytest.raises(ValueError, match="last token"):
        validate_pattern(pattern)


@pytest.mark.parametrize("value", [None, b"a.b", 1, 1.5, ["a"], ("a",), object()])
def test_non_str_raises_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        validate_topic(value)
    with pytest.raises(TypeError):
        validate_pattern(value)


def test_str_subclass_is_accepted() -> None:
    class Name(str):
        pass

    assert validate_topic(Name("a.b")) == "a.b"
    assert validate_pattern(Name("a.*")) == "a.*"


@pytest.mark.parametrize("char", ["\x80", "\x9b", "\x9f"])
def test_c1_control_characters_are_refused(char: str) -> None:
    # U+0080..U+009F are Unicode control characters (category Cc) just like
    # U+0000..U+001F; the module docstring promises "no ... control characters".
    assert unicodedata.category(char) == "Cc"
    with pytest.raises(ValueError):
        validate_topic(f"a{char}b")
    with pytest.raises(ValueError):
        validate_pattern(f"a{char}b")


def test_is_pattern() -> None:
    assert is_pattern("*")
    assert is_pattern(">")
    assert is_pattern("a.*.c")
    assert is_pattern("a.>")
    assert not is_pattern("a")
    assert not is_pattern("a.b.c")


# --- validation: property against an independent rule set --------------------


def _bad_char(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) == "Cc" or ch in "*>"


def _reference_valid(value: str, *, pattern: bool) -> bool:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if not value or len(raw) > MAX_TOPIC_BYTES:
        return False
    tokens = value.split(".")
    for i, tok in enumerate(tokens):
        if not tok:
            return False
        if pattern and (tok == "*" or (tok == ">" and i == len(tokens) - 1)):
            continue
        if any(_bad_char(c) for c in tok):
            return False
    return True


# A mix of ordinary characters and every kind of troublemaker.
_NASTY = "ab.*> \t\n\x00\x1f\x7f\x80\x85\x9f\u00a0\u2028\u3000\ud800é日\U0001f600"
_chars = st.one_of(
    st.sampled_from(_NASTY),
    st.characters(codec="utf-8"),
)
_candidates = st.one_of(
    st.text(_chars, max_size=20),
    st.text(st.sampled_from("ab.*>"), max_size=12),
    st.text(st.sampled_from("aé\U0001f600"), min_size=60, max_size=260),
)


@SETTINGS
@given(_candidates)
def test_validate_topic_agrees_with_reference_rules(value: str) -> None:
    if _reference_valid(value, pattern=False):
        assert validate_topic(value) is value
    else:
        with pytest.raises(ValueError):
            validate_topic(value)


@SETTINGS
@given(_candidates)
def test_validate_pattern_agrees_with_reference_rules(value: str) -> None:
    if _reference_valid(value, pattern=True):
        assert validate_pattern(value) is value
    else:
        with pytest.raises(ValueError):
            validate_pattern(value)


# --- matching semantics ------------------------------------------------------

NATS_CASES = [
    # (pattern, topic, expected)
    ("a", "a", True),
    ("a", "b", False),
    ("a", "A", False),  # case-sensitive
    ("a", "a.b", False),
    ("a.b", "a", False),
    ("a.b", "a.b", True),
    ("a.*", "a.b", True),
    ("a.*", "a", False),
    ("a.*", "a.b.c", False),
    ("a.*", "b.a", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.b", "a.b", True),
    ("*.b", "x.b", True),
    ("*.b", "a.c", False),
    ("*.b", "b", False),
    ("*.b", "a.b.c", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.d", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("a.>", "a.b", True),
    ("a.>", "a.b.c", True),
    ("a.>", "a", False),
    ("a.>", "b.c", False),
    (">", "a", True),
    (">", "a.b", True),
    (">", "a.b.c.d.e", True),
    ("*.>", "a", False),
    ("*.>", "a.b", True),
    ("*.>", "a.b.c", True),
    ("a.*.>", "a.b", False),
    ("a.*.>", "a.b.c", True),
    ("a.b.>", "a.b", False),
    ("a.b.>", "a.bc.d", False),
    ("ab", "a.b", False),
    ("a.b", "ab", False),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), NATS_CASES)
def test_matches_nats_semantics(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


@pytest.mark.parametrize(("pattern", "topic", "expected"), NATS_CASES)
def test_trie_nats_semantics(pattern: str, topic: str, expected: bool) -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add(pattern, "v")
    assert trie.match(topic) == ({"v"} if expected else set())


def _regex_reference(pattern: str, topic: str) -> bool:
    """An independent matcher: translate the pattern to a regular expression."""
    parts = []
    for tok in pattern.split("."):
        if tok == "*":
            parts.append(r"[^.]+")
        elif tok == ">":
            parts.append(r".+")
        else:
            parts.append(re.escape(tok))
    return re.fullmatch(r"\.".join(parts), topic) is not None


# Small alphabets so that random patterns and topics actually match.
_topic_token = st.sampled_from(["a", "b", "c"])
_pattern_token = st.sampled_from(["a", "b", "c", "*"])
topics = st.lists(_topic_token, min_size=1, max_size=5).map(".".join)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(_pattern_token, max_size=4))
    if not tokens or draw(st.booleans()):
        tokens.append(">")
    return ".".join(tokens)


@SETTINGS
@given(patterns(), topics)
def test_matches_agrees_with_regex_reference(pattern: str, topic: str) -> None:
    validate_pattern(pattern)
    validate_topic(topic)
    assert matches(pattern, topic) == _regex_reference(pattern, topic)


@SETTINGS
@given(st.lists(patterns(), max_size=12), st.lists(topics, min_size=1, max_size=6))
def test_trie_match_equals_reference_matcher(pats: list[str], tops: list[str]) -> None:
    trie: TopicTrie[int] = TopicTrie()
    entries = list(enumerate(pats))
    for value, pattern in entries:
        assert trie.add(pattern, value)
    assert len(trie) == len(entries)
    for topic in tops:
        assert trie.match(topic) == {v for v, pat in entries if matches(pat, topic)}


@SETTINGS
@given(st.lists(patterns(), min_size=1, max_size=8), topics)
def test_trie_one_value_under_many_patterns_matches_once(pats: list[str], topic: str) -> None:
    trie: TopicTrie[str] = TopicTrie()
    for pattern in pats:
        trie.add(pattern, "v")
    expected = {"v"} if any(matches(pat, topic) for pat in pats) else set()
    assert trie.match(topic) == expected


_ops = st.lists(
    st.tuples(st.booleans(), patterns(), st.integers(min_value=0, max_value=3)),
    max_size=25,
)


@SETTINGS
@given(_ops, st.lists(topics, min_size=1, max_size=6))
def test_trie_add_remove_sequence_matches_reference_dict(
    ops: list[tuple[bool, str, int]], probe_topics: list[str]
) -> None:
    trie: TopicTrie[int] = TopicTrie()
    ref: dict[str, set[int]] = {}
    for is_add, pattern, value in ops:
        held = value in ref.get(pattern, set())
        if is_add:
            assert trie.add(pattern, value) is (not held)
            ref.setdefault(pattern, set()).add(value)
        else:
            assert trie.remove(pattern, value) is held
            ref.get(pattern, set()).discard(value)
        pairs = {(pat, v) for pat, vs in ref.items() for v in vs}
        assert len(trie) == len(pairs)
        assert sorted(trie.items()) == sorted(pairs)
        for topic in probe_topics:
            assert trie.match(topic) == {v for pat, v in pairs if matches(pat, topic)}

    # Remove everything that is left: the trie must end up empty.
    for pattern, vs in list(ref.items()):
        for value in vs:
            assert trie.remove(pattern, value)
            assert not trie.remove(pattern, value)
    assert len(trie) == 0
    assert list(trie.items()) == []
    assert trie.node_count() == 0  # every branch was pruned
    for topic in probe_topics:
        assert trie.match(topic) == set()


def test_trie_add_duplicate_and_remove_absent() -> None:
    trie: TopicTrie[str] = TopicTrie()
    assert trie.add("a.*", "x")
    assert not trie.add("a.*", "x")
    assert len(trie) == 1
    assert trie.add("a.*", "y")
    assert trie.add("a.>", "x")  # same value, another pattern
    assert len(trie) == 3
    assert not trie.remove("a.*", "z")  # absent value on a live pattern
    assert not trie.remove("a.b", "x")  # absent pattern under a live prefix
    assert not trie.remove("q.r.s", "x")  # absent branch
    assert not trie.remove("a", "x")  # prefix node exists but holds nothing
    assert len(trie) == 3
    assert trie.remove("a.*", "x")
    assert not trie.remove("a.*", "x")
    assert trie.match("a.b") == {"x", "y"}  # y via a.*, x via a.>
    assert len(trie) == 2


def test_trie_here_and_tail_on_the_same_node_are_distinct() -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add("a", "here")
    trie.add("a.>", "tail")
    assert trie.match("a") == {"here"}
    assert trie.match("a.b") == {"tail"}
    assert trie.remove("a.>", "tail")
    assert trie.match("a.b") == set()
    assert trie.match("a") == {"here"}
    assert sorted(trie.items()) == [("a", "here")]


def test_trie_items_round_trip_wildcards() -> None:
    trie: TopicTrie[int] = TopicTrie()
    pats = ["*", ">", "a.*", "*.b", "a.>", "*.*.>", "a.b.c"]
    for i, pat in enumerate(pats):
        trie.add(pat, i)
    assert sorted(trie.items()) == sorted((pat, i) for i, pat in enumerate(pats))


def test_trie_remove_prunes_branches() -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add("a.b.c.d", "x")
    trie.add("a.b", "y")
    assert trie.remove("a.b.c.d", "x")
    # The c.d branch is gone, the a and a.b nodes (a.b holding y) remain.
    assert trie.node_count() == 2
    assert sorted(trie.items()) == [("a.b", "y")]
    assert trie.remove("a.b", "y")
    assert trie.node_count() == 0


def test_trie_node_count_counts_shared_prefixes_once() -> None:
    trie: TopicTrie[str] = TopicTrie()
    assert trie.node_count() == 0
    trie.add("a.b.c", "x")
    assert trie.node_count() == 3
    trie.add("a.b.d", "x")
    trie.add("a.>", "y")  # '>' ends at a's node: no node of its own
    assert trie.node_count() == 4
    trie.add("*", "z")
    assert trie.node_count() == 5


# --- queue group names: the topic rules, at most 64 bytes ------------------------------

MAX_QUEUE_BYTES = 64


def _reference_queue(value: str) -> bool:
    if not value:
        return True  # no queue group: a plain subscription
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(raw) <= MAX_QUEUE_BYTES and _reference_valid(value, pattern=False)


_queue_candidates = st.one_of(
    _candidates,
    st.text(st.sampled_from("aé\U0001f600."), min_size=10, max_size=70),
    st.sampled_from(["", "workers", "q" * 64, "q" * 65, "é" * 32, "é" * 32 + "x", "*", ">"]),
)


@SETTINGS
@given(_queue_candidates)
def test_queue_names_follow_the_topic_rules_up_to_64_bytes(value: str) -> None:
    """The wire check (``check_queue``, refusing with 406) and the check of user
    input before SUBSCRIBE (``_validate.queue``) accept exactly the same names."""
    assert p.MAX_QUEUE_BYTES == MAX_QUEUE_BYTES
    expected = _reference_queue(value)
    frame = value.encode("utf-8", "surrogatepass")
    if expected:
        p.check_queue(frame)
        assert _validate.queue(value) == value
    else:
        with pytest.raises(ProtocolError) as info:
            p.check_queue(frame)
        assert info.value.code == p.ErrorCode.BAD_TOPIC
        with pytest.raises(ValueError):
            _validate.queue(value)


def test_queue_name_none_and_wrong_types() -> None:
    assert _validate.queue(None) == ""
    with pytest.raises(TypeError):
        _validate.queue(b"workers")
