"""Per-key rate limits of the write routes: a token bucket per (API key, kind of work), kept in the process.

Each bucket holds up to ``burst`` tokens and refills at ``per_minute`` tokens a minute; a request takes its cost
(1 per write request, 1 per uploaded photo) or is refused with 429 and ``Retry-After``: the whole seconds until
the bucket holds enough. With ``serve --workers N`` every process holds its own buckets, so a key may get up to N
times the rate in all (a shared limit would need a shared store, such as Redis, which this service does not run).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, status


@dataclass(frozen=True)
class Rate:
    per_minute: float
    burst: int


class TokenBuckets:
    """Token buckets by key, all at one `Rate`; thread-safe (routes take tokens from the thread pool too)."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic):
        if rate.per_minute <= 0 or rate.burst < 1:
            raise ValueError(f"a rate needs per_minute > 0 and burst >= 1, got {rate}")
        self.rate = rate
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)
        self._lock = threading.Lock()

    def take(self, key: str, cost: int = 1) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0 when taken, else the seconds to wait (nothing taken)."""
        if cost > self.rate.burst:
            raise ValueError(f"a cost of {cost} can never be paid from a bucket of {self.rate.burst}")
        per_second = self.rate.per_minute / 60
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(key, (float(self.rate.burst), now))
            tokens = min(float(self.rate.burst), tokens + (now - then) * per_second)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (cost - tokens) / per_second


class RateLimits:
    """The service's buckets, one `TokenBuckets` per kind of work (``writes``, ``photos``, ``events``)."""

    def __init__(self, rates: dict[str, Rate], clock: Callable[[], float] = time.monotonic):
        self.buckets = {kind: TokenBuckets(rate, clock) for kind, rate in rates.items()}

    def check(self, kind: str, key_id: str, cost: int = 1) -> None:
        """Take ``cost`` from the key's ``kind`` bucket, or raise 429 with ``Retry-After`` (whole seconds)."""
        if cost <= 0:
            return
        wait = self.buckets[kind].take(key_id, cost)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            rate = self.buckets[kind].rate
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"the API key {key_id} is over its {kind} rate ({rate.per_minute:g} a minute, bursts of "
                f"{rate.burst}); retry in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
