"""Token buckets for the users' rate limits (sans-IO: time is given)."""

from __future__ import annotations

import math

__all__ = ["Bucket"]


class Bucket:
    """One user's messages-per-second and bytes-per-second allowance.

    Each holds up to ``burst`` seconds' worth of its rate and starts full. A
    message passes when one message and its bytes are there; a message larger
    than the whole byte allowance passes once it is full, and leaves it in
    debt (so no size is ever refused for good, and the average still holds).
    """

    __slots__ = ("_at", "_bytes", "_msgs", "burst", "byte_rate", "rate")

    def __init__(self, rate: float | None, byte_rate: float | None, burst: float, now: float):
        self.rate = rate
        self.byte_rate = byte_rate
        self.burst = burst
        self._msgs = self._cap(rate)
        self._bytes = self._cap(byte_rate)
        self._at = now

    def _cap(self, rate: float | None) -> float:
        # At least one message's worth, or a bucket could never pass anything.
        return math.inf if rate is None else max(1.0, rate * self.burst)

    def take(self, size: int, now: float) -> float:
        """Spend one message of ``size`` bytes at ``now``: 0.0 if it passes,
        else the seconds until it would (nothing is spent then)."""
        rate, byte_rate = self.rate, self.byte_rate
        elapsed = now - self._at
        if elapsed > 0:
            self._at = now
            if rate is not None:
                self._msgs = min(self._cap(rate), self._msgs + elapsed * rate)
            if byte_rate is not None:
                self._bytes = min(self._cap(byte_rate), self._bytes + elapsed * byte_rate)
        wait = 0.0
        if rate is not None and self._msgs < 1.0:
            wait = (1.0 - self._msgs) / rate
        if byte_rate is not None:
            need = min(float(size), self._cap(byte_rate))
            if self._bytes < need:
                wait = max(wait, (need - self._bytes) / byte_rate)
        if wait > 0.0:
            return wait
        if rate is not None:
            self._msgs -= 1.0
        if byte_rate is not None:
            self._bytes -= size
        return 0.0
