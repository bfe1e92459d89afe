"""A per-host circuit breaker: a host that stops answering is marked down, not waited on.

GBIF's images live on hundreds of museum servers, some gone. Without a breaker every URL of a dead
host waits out its timeouts and retries; a host holding 100,000 URLs costs days. After
`threshold` connection failures or timeouts in a row (any HTTP answer, even a 404, breaks the
run), the host is down: its queued and new URLs fail at once as `host_unavailable`, retryable, so
`--retry_failed` takes them later. After `cooldown` seconds one request probes the host; an
answer closes the breaker, a failure opens it again for twice as long (at most MAX_COOLDOWN_FACTOR
times the cool-down). A name that does not resolve opens the breaker at once: asking again per URL
would only ask the resolver again (fetch/dns.py caches the failure for as long). A host that has
never answered is marked down after NEW_HOST_THRESHOLD connections that failed.

Pure arithmetic on a caller's clock, like fetch/aimd.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_COOLDOWN_FACTOR = 8
NEW_HOST_THRESHOLD = 2
"""A host that has not answered once in this process is marked down after this many failed
connections in a row (refused, or no answer to the SYN within the connect timeout), not the
threshold: a black hole then costs one connect timeout, not minutes."""


@dataclass(frozen=True)
class BreakerSettings:
    threshold: int
    """Failures in a row that mark a host down; 0 turns the breaker off."""
    cooldown: float
    """Seconds a host stays down before one request probes it."""


NO_BREAKER = BreakerSettings(0, 0.0)


@dataclass
class Breaker:
    settings: BreakerSettings
    failures: int = 0
    """Connection failures and timeouts since the host last answered."""
    opened_at: float = -math.inf
    reopen_at: float = -math.inf
    times_opened: int = 0
    probes_failed: int = 0
    reason: str = ""
    answered: bool = False
    """The host has answered at least once."""

    @property
    def tripped(self) -> bool:
        """Down, or probing: the host has not answered since it was marked down."""
        return self.opened_at > -math.inf

    def is_open(self, now: float) -> bool:
        """Down and still cooling: its URLs fail at once."""
        return self.tripped and now < self.reopen_at

    def probing(self, now: float) -> bool:
        """Cooled down, not yet answered: one request at a time may try it."""
        return self.tripped and now >= self.reopen_at

    def doubtful(self) -> bool:
        """Never answered, and a request to it failed: one request at a time until it answers
        or is marked down (more would each wait out a connect timeout after it is)."""
        return not self.answered and self.failures > 0

    def on_answer(self) -> None:
        """Any HTTP answer: the host is up."""
        self.failures = 0
        self.answered = True
        self.probes_failed = 0
        self.opened_at = self.reopen_at = -math.inf
        self.reason = ""

    def on_failure(
        self,
        sent_at: float,
        now: float,
        reason: str,
        at_once: bool = False,
        no_connection: bool = False,
    ) -> bool:
        """A connection failure or timeout of a request sent at `sent_at`; True when this marks
        the host down. A failure of a request sent before the host was marked down is old news
        and does not lengthen the cool-down. `no_connection`: no connection was made."""
        if self.settings.threshold <= 0:
            return False
        self.failures += 1
        if self.tripped:
            if sent_at < self.opened_at:
                return False
            self.probes_failed += 1  # the probe failed: down again, for longer
        elif not at_once and self.failures < self._threshold(no_connection):
            return False
        factor = min(MAX_COOLDOWN_FACTOR, 2**self.probes_failed)
        self.opened_at = now
        self.reopen_at = now + self.settings.cooldown * factor
        self.times_opened += 1
        self.reason = reason
        return True

    def _threshold(self, no_connection: bool) -> int:
        if no_connection and not self.answered:
            return min(NEW_HOST_THRESHOLD, self.settings.threshold)
        return self.settings.threshold

    def describe(self, now: float) -> str:
        """Why the host's URLs fail: the error of a `host_unavailable` row."""
        wait = max(0.0, self.reopen_at - now)
        after = (
            "a failed connection"
            if self.failures == 1
            else f"{self.failures} connection failures or timeouts in a row"
        )
        return (
            f"host unavailable: marked down after {after} (last: {self.reason}); "
            f"probed again in {wait:.0f} s"
        )
