"""A recording local subscription for tests that drive ``ClientCore`` without a face."""

from __future__ import annotations

from zmqbus._client import DELIVERED
from zmqbus.message import Message


class ListSink:
    """A local subscription that records offers and answers with a fixed result."""

    def __init__(self, pattern: str, result: int = DELIVERED) -> None:
        self.pattern = pattern
        self.result = result
        self.offers: list[tuple[Message, int | None]] = []
        self.ended = 0
        self.missed_count = 0

    def offer(self, message: Message, ack_id: int | None) -> int:
        self.offers.append((message, ack_id))
        return self.result

    def end(self) -> None:
        self.ended += 1

    def missed(self, count: int) -> None:
        self.missed_count += count

    @property
    def topics(self) -> list[str]:
        return [m.topic for m, _ in self.offers]
