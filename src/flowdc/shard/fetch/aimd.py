"""Per-host adaptive limits: a token bucket whose rate adapts by AIMD, and a concurrency limit
that shrinks when a host slows down. Pure arithmetic on a clock the caller passes in, so the
tests drive it with a fake clock.

Why independent copies of this control (one per worker process) still share a host fairly: every
process sees the same signal (the host's 429s come when the sum of their rates passes the host's
capacity), every process then cuts its own rate by the same factor, and every process adds the
same absolute step while the host answers well. A multiplicative cut shrinks the gap between two
processes' rates, an equal additive step keeps it, so the rates converge on equal shares of the
capacity (Chiu and Jain, 1989: the argument TCP's congestion control rests on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DECREASE_FACTOR = 0.7
"""Rate and concurrency are multiplied by this on a throttle signal (429, 503, timeout)."""
SLOW_START_STEP = 0.25
"""Before the first throttle, each success adds this many requests/s: +25% a second at full use."""
ADDITIVE_SHARE = 0.05
"""After a throttle, the rate grows by this share of the rate it was cut from, per second."""
ADDITIVE_MIN = 0.1
"""... and by at least this many requests/s per second, the same in every process."""
SLOW_LATENCY_FACTOR = 3.0
SLOW_LATENCY_SLACK = 0.5
"""A host is slow when its smoothed latency passes factor x its best latency + slack seconds."""
LATENCY_SMOOTHING = 0.3
INITIAL_CONCURRENCY = 2.0
PROBE_SECONDS = 10.0
"""Once a host has slowed down at some concurrency, the limit climbs freely to one below that
level, and tries one more only every PROBE_SECONDS: a probe past a host's knee costs every
request then in flight a slow answer, so it is made rarely."""


@dataclass(frozen=True)
class RateSettings:
    """Limits for one host in one process (the run's limits divided by the processes)."""

    initial: float
    floor: float
    ceiling: float
    capacity: int
    adaptive: bool = True


class AdaptiveRate:
    """A GCRA token bucket (a reservation clock: waiters are served in order, no herd) whose
    rate grows while a host answers well and is cut on 429, 503 and timeouts.

    A throttle counts once per burst: only an answer to a request sent after the last cut can
    cut again, so the answers already in flight when the host first pushed back do not each
    halve the rate (the cooldown).
    """

    def __init__(self, settings: RateSettings) -> None:
        self.settings = settings
        self.rate = min(max(settings.initial, settings.floor), settings.ceiling)
        self.next_free = -math.inf
        self.slow_start = settings.adaptive
        self.last_cut = -math.inf
        self.cut_from = self.rate
        self.cuts = 0

    @property
    def burst(self) -> float:
        """Tokens that may be spent at once: the configured capacity, at most one second's."""
        return max(1.0, min(float(self.settings.capacity), self.rate))

    def available_at(self, now: float) -> float:
        """When the next token may be taken (now or later)."""
        tolerance = (self.burst - 1.0) / self.rate
        return max(now, self.next_free - tolerance)

    def take(self, now: float) -> None:
        """Spend a token; call only when available_at(now) <= now."""
        self.next_free = max(self.next_free, now) + 1.0 / self.rate

    def on_success(self) -> None:
        if not self.settings.adaptive:
            return
        if self.slow_start:
            self.rate += SLOW_START_STEP
        else:
            step_per_second = max(ADDITIVE_MIN, ADDITIVE_SHARE * self.cut_from)
            self.rate += step_per_second / self.rate
        self.rate = min(self.rate, self.settings.ceiling)

    def on_throttle(self, sent_at: float, now: float) -> bool:
        """A 429, 503 or timeout for a request sent at `sent_at`; True when it cut the rate."""
        if not self.settings.adaptive or sent_at < self.last_cut:
            return False
        self.cut_from = self.rate
        self.rate = max(self.settings.floor, self.rate * DECREASE_FACTOR)
        self.slow_start = False
        self.last_cut = now
        self.cuts += 1
        # spend no saved-up burst right after a cut: the host just said it is full
        self.next_free = max(self.next_free, now + (self.burst - 1.0) / self.rate)
        return True


class AdaptiveConcurrency:
    """How many requests one host may have in flight: grows by one per success until the host
    first slows down, then by about one per window of successes; cut when the host's smoothed
    latency rises well above the best it has shown, or on a timeout."""

    def __init__(self, initial: float = INITIAL_CONCURRENCY) -> None:
        self.limit = initial
        self.knee = math.inf  # the concurrency at which the host last slowed down
        self.next_probe = -math.inf
        self.best_latency = math.inf
        self.smoothed_latency: float | None = None
        self.slow_start = True
        self.last_cut = -math.inf
        self.cuts = 0

    def allowed(self, share: int) -> int:
        """Requests this host may have in flight, never above its share of the slots."""
        return max(1, min(int(self.limit), share))

    def on_answer(self, latency: float, sent_at: float, now: float, in_flight: int) -> None:
        """An answer (any status) that took `latency` seconds to its headers."""
        self.best_latency = min(self.best_latency, latency)
        if sent_at < self.last_cut:
            return  # sent under the old limit: says nothing of the new one
        if self.smoothed_latency is None:
            self.smoothed_latency = latency
        else:
            self.smoothed_latency += LATENCY_SMOOTHING * (latency - self.smoothed_latency)
        slow = self.smoothed_latency > (
            SLOW_LATENCY_FACTOR * self.best_latency + SLOW_LATENCY_SLACK
        )
        if slow:
            self._cut(sent_at, now)
        elif in_flight >= int(self.limit):  # only a limit in use is worth raising
            self._raise(now)

    def _raise(self, now: float) -> None:
        if self.slow_start:
            self.limit += 1.0
        elif int(self.limit) + 1 < self.knee:
            self.limit += 1.0 / self.limit
        elif now >= self.next_probe:
            self.limit = float(int(self.limit) + 1)
            self.knee = max(self.knee, self.limit + 1)  # if this holds, the next may be tried
            self.next_probe = now + PROBE_SECONDS

    def on_timeout(self, sent_at: float, now: float) -> None:
        self._cut(sent_at, now)

    def _cut(self, sent_at: float, now: float) -> None:
        if sent_at < self.last_cut:
            return
        self.knee = int(self.limit)
        self.next_probe = now + PROBE_SECONDS
        self.limit = max(1.0, self.limit * DECREASE_FACTOR)
        self.slow_start = False
        self.last_cut = now
        self.cuts += 1
        self.smoothed_latency = None  # judge the new limit by answers sent under it
