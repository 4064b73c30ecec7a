"""A bus's connection state: one enum and the moves allowed between its values.

Like h11's ``_state``: the client core asks to ``move`` and a move the table
does not allow raises ``IllegalMove`` at once, so a bug shows where it is made
instead of as a bus that later hangs.

    NEW -> JOINING -> READY <-> RECONNECTING -> REJOINING -> READY ...
    REJOINING -> RECONNECTING (no WELCOME in time, or lost again)
    any -> CLOSED (final)
"""

from __future__ import annotations

import enum

__all__ = ["Conn", "Connection", "IllegalMove"]


class Conn(enum.StrEnum):
    """Where a bus is with its broker (a str: compares equal to its value)."""

    NEW = "new"  # no HELLO sent yet
    JOINING = "joining"  # first HELLO sent, no WELCOME yet
    READY = "ready"  # WELCOME received: commands flow
    RECONNECTING = "reconnecting"  # session lost; waiting to try again, holding frames
    REJOINING = "rejoining"  # HELLO sent on a fresh socket, no WELCOME yet
    CLOSED = "closed"  # closed by the user or a fatal error; final


_MOVES: dict[Conn, frozenset[Conn]] = {
    Conn.NEW: frozenset((Conn.JOINING, Conn.CLOSED)),
    Conn.JOINING: frozenset((Conn.READY, Conn.CLOSED)),
    Conn.READY: frozenset((Conn.RECONNECTING, Conn.CLOSED)),
    Conn.RECONNECTING: frozenset((Conn.REJOINING, Conn.CLOSED)),
    Conn.REJOINING: frozenset((Conn.READY, Conn.RECONNECTING, Conn.CLOSED)),
    Conn.CLOSED: frozenset(),
}


class IllegalMove(RuntimeError):
    """A move the state table does not allow: a bug in the caller."""


class Connection:
    """The current ``Conn`` of one bus."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = Conn.NEW

    def move(self, to: Conn) -> Conn:
        """Go to ``to``; returns the state left. ``IllegalMove`` if not allowed."""
        was = self.state
        if to not in _MOVES[was]:
            raise IllegalMove(f"connection cannot go from {was.value} to {to.value}")
        self.state = to
        return was
