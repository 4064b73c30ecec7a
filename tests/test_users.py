"""Users and their permissions (zmqbus.users), and CURVE keys (zmqbus.keys)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from zmqbus import User
from zmqbus.keys import keygen, load_keypair, load_public_key, load_secret_key
from zmqbus.topics import matches
from zmqbus.users import covers, overlaps

pytestmark = pytest.mark.timeout(60)

PUBLIC, SECRET = zmq.curve_keypair()


def test_a_user_checks_what_it_is_given() -> None:
    with pytest.raises(ValueError, match="needs a public_key"):
        User("billing")
    with pytest.raises(ValueError, match="without ':'"):
        User("a:b", PUBLIC)
    with pytest.raises(TypeError, match="list of patterns"):
        User("billing", PUBLIC, publish="orders.>")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'>' may only be the last token"):
        User("billing", PUBLIC, subscribe=["a.>.b"])
    with pytest.raises(ValueError, match="neither a UUID nor"):
        User("billing", PUBLIC, channels=["orders"])
    with pytest.raises(ValueError, match="max_connections"):
        User("billing", PUBLIC, max_connections=0)
    with pytest.raises(ValueError, match="rate"):
        User("billing", PUBLIC, rate=-1)
    assert User("anonymous").free
    assert not User("billing", PUBLIC, deny_publish=["x"]).free


def test_channels_are_uuids_or_every_one() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    user = User("billing", PUBLIC, channels=[str(a)])
    assert user.may_join(a.bytes) and not user.may_join(b.bytes)
    assert User("billing", PUBLIC, channels=["*"]).may_join(b.bytes)


def test_publish_is_allowed_by_a_pattern_and_denied_by_any() -> None:
    user = User("billing", PUBLIC, publish=["orders.>", "audit"], deny_publish=["orders.secret.*"])
    assert user.may_publish(b"orders.created") and user.may_publish(b"orders.a.b")
    assert user.may_publish(b"audit")
    assert not user.may_publish(b"orders")  # '>' takes one token or more
    assert not user.may_publish(b"audit.x")
    assert not user.may_publish(b"orders.secret.x")
    assert user.may_publish(b"orders.secret")  # '*' takes exactly one
    assert not user.may_publish(b"orders.secret.x")  # asked again: the cached answer


def test_a_pattern_is_allowed_only_if_every_topic_it_matches_is() -> None:
    user = User("billing", PUBLIC, subscribe=["orders.created", "billing.*", "logs.>"])
    assert user.may_subscribe("orders.created") and user.may_subscribe("billing.*")
    assert user.may_subscribe("billing.x") and user.may_subscribe("logs.*.error")
    assert not user.may_subscribe("orders.*")  # would match orders.deleted
    assert not user.may_subscribe("billing.>")  # would match billing.a.b
    assert not user.may_subscribe(">")
    denied = User("billing", PUBLIC, subscribe=[">"], deny_subscribe=["billing.secret"])
    assert not denied.may_subscribe("billing.*")  # can match billing.secret
    assert not denied.may_subscribe(">") and denied.may_subscribe("billing.public")


_TOKENS = st.sampled_from(["a", "b", "*"])
_PATTERNS = st.builds(
    lambda toks, tail: ".".join(toks + ([">"] if tail else [])),
    st.lists(_TOKENS, min_size=1, max_size=3),
    st.booleans(),
)
_TOPICS = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5).map(".".join)


@given(_PATTERNS, _PATTERNS, st.lists(_TOPICS, min_size=1, max_size=30))
def test_covers_and_overlaps_agree_with_matching(x: str, y: str, topics: list[str]) -> None:
    both = [t for t in topics if matches(x, t) and matches(y, t)]
    if both:
        assert overlaps(x, y) and overlaps(y, x)
    if covers(x, y):
        assert all(matches(x, t) for t in topics if matches(y, t))


def test_keys_in_every_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    raw = zmq.utils.z85.decode(PUBLIC)
    assert load_public_key(PUBLIC) == load_public_key(PUBLIC.decode()) == PUBLIC
    assert load_public_key(raw) == PUBLIC
    assert load_keypair((PUBLIC, SECRET)) == (PUBLIC, SECRET)
    assert load_keypair(SECRET) == (PUBLIC, SECRET)
    assert load_secret_key(SECRET.decode()) == SECRET
    public_file, secret_file = keygen("billing", tmp_path / "certs")
    assert secret_file.stat().st_mode & 0o077 == 0
    pair = load_keypair(secret_file)
    assert load_public_key(public_file) == pair[0] == load_public_key(str(secret_file))
    with pytest.raises(ValueError, match="holds no secret key"):
        load_keypair(public_file)
    with pytest.raises(ValueError, match="not the secret key's"):
        load_keypair((zmq.curve_keypair()[0], SECRET))
    with pytest.raises(ValueError, match="no key file"):
        load_public_key(tmp_path / "missing.key")
    with pytest.raises(ValueError, match="Z85"):
        load_public_key(b"short")
    with pytest.raises(TypeError):
        load_public_key(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a file name"):
        keygen("../evil", tmp_path)

    # A key file whose path happens to be 40 characters long is a file, not Z85.
    _, secret40 = keygen("x" * (40 - len("k/.key_secret")), "k")
    assert len(str(secret40)) == 40
    assert load_keypair(str(secret40)) == load_keypair(tmp_path / secret40)
