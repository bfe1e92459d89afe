"""Per-host adaptive limits: an evenly paced rate that adapts by AIMD (cut to just under what the
host delivered, back quickly to that good rate, then additive increase), and a concurrency limit
that shrinks when a host slows down. Pure arithmetic on a clock the caller passes in, so the
tests drive it with a fake clock.

Why independent copies of this control (one per worker process, on one machine or several)
still share a host fairly and stay under its limit together: every process sees the same signal
(the host refuses when the sum of their rates passes its limit), and every process then cuts its
rate to just under what it delivered, which is its share of what the host takes; the slow probing
past that is the same small step in every process (tests/test_limits.py runs two against one
simulated host).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from flowdc.shard.fetch.pace import LocalPace, RateState, SharedPace

DECREASE_FACTOR = 0.7
"""A throttle soon after a cut cuts the rate to at most this share of it (also on timeouts);
concurrency is always cut by it."""
DELIVERED_MARGIN = 0.9
"""... and to at most this share of the rate the host delivered (its successes per second over
DELIVERY_WINDOW): the host just showed what it takes, so the cut lands under it at once instead
of after several cuts of 0.7."""
DELIVERY_WINDOW = 4.0
DELIVERED_EVIDENCE = 8
"""Answers in the window before the delivered rate is believed: at a start at two requests in
flight, the first refusal can come before the client has sent more than the host takes."""
SLOW_START_STEP = 1.0
"""Before the first throttle, each success adds this many requests/s: the rate doubles each
second at full use.
After a cut, the same quick climb takes the rate back up to its target (the good rate)."""
NEAR_MARGIN = 0.95
"""A throttle after a long clean stretch (CLEAN_ANSWERS) found the host's limit just below the
rate: the rate steps down to this share of it and stays there."""
CLEAN_ANSWERS = 10
PROBE_GROWTH = 0.05
PROBE_ANSWERS = 30
PROBE_SECONDS_PER_STEP = 10.0
"""At or above the good rate, the rate grows by PROBE_GROWTH per PROBE_ANSWERS answers or per
PROBE_SECONDS_PER_STEP seconds of full use, whichever is slower: each crossing of the host's
limit costs a refusal or a few, so crossings are made rare (under 3% of requests). Each step
clean past the good rate doubles the next (up to PROBE_DOUBLINGS times): a rate far below the
limit, after a cut on too little evidence, climbs back in a few steps."""
PROBE_DOUBLINGS = 5
RECENT_ANSWERS = 40
"""The refusal share a throttle is judged by is over this many of the host's last answers."""
FLAKY_TEST_ANSWERS = 30
FLAKY_EARLY_ANSWERS = 10
FLAKY_WORSE = 2.0
FLAKY_WORSE_SHARE = 0.5
FLAKY_MIN_REFUSED = 2
FLAKY_SAME_SHARE = 0.5
FLAKY_MAX_SHARE = 0.5
FLAKY_TEST_SECONDS = 60.0
THROTTLER_SECONDS = 300.0
RETEST_SECONDS = 10.0
FLAKY_SERIES_SECONDS = 30.0
"""The test of FlakinessCheck: its length, the refusals and share (of the share before) that
make a host flaky, and how long a host it showed to be throttling is not tested again (when it
did not refuse once at the lower rate; after one refusal, the test is made again soon)."""
NOISE_MARGIN = 0.25
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


UNLIMITED = RateSettings(math.inf, math.inf, math.inf, 1, adaptive=False)
"""A host's limits when rate limiting is off: always a token."""


def _usable(rate: float) -> bool:
    """A rate a token's spacing can be computed from (not one a killed writer left)."""
    return 0 < rate < math.inf


class FlakinessCheck:
    """Tells a flaky host from a throttling one by their refusals that do not say what they are
    about (503 without Retry-After): does their share fall when the rate falls? Its state is
    the host's RateState, so a test or a verdict holds for every process of the machine.

    The first such refusal starts a test: the rate is halved (or cut under what the host
    delivered, if that is less) for FLAKY_TEST_ANSWERS answers, during which such refusals do
    not cut again. A host over its limit stops refusing there (its share was at most
    FLAKY_MAX_SHARE, so half the rate is under the limit); a host that fails a share of
    requests whatever the rate goes on refusing. A flaky host gets its rate back, and the share
    it refused at half the rate is its noise: such refusals cut again only when their share
    passes it by NOISE_MARGIN. A host that refuses more during the test than before it ends the
    test at once as a throttler."""

    @staticmethod
    def note_cut(state: RateState, now: float, rate: float) -> None:
        """A cut from `rate` for a refusal that may be noise."""
        if now - state.peak_at > FLAKY_SERIES_SECONDS:
            state.peak = 0.0
        state.peak = max(state.peak, rate)
        state.peak_at = now

    @staticmethod
    def holds(state: RateState, now: float, recent: deque[bool]) -> bool:
        """Whether a refusal that may be noise must not cut now (a test runs, or it is noise)."""
        if state.test_since > -math.inf:
            worse = state.test_answers >= FLAKY_EARLY_ANSWERS and state.test_refused > (
                state.test_answers * max(FLAKY_WORSE * state.share_before, FLAKY_WORSE_SHARE)
            )
            if not worse and now - state.test_since <= FLAKY_TEST_SECONDS:
                return True
            FlakinessCheck._end(state, now, sure=worse)  # too long without a verdict: retest
            return False
        if state.noise_share == 0:
            return False
        share = sum(recent) / len(recent)
        return len(recent) < (recent.maxlen or 0) or share <= state.noise_share + NOISE_MARGIN

    @staticmethod
    def starts_test(state: RateState, now: float, rate: float, recent: deque[bool]) -> bool:
        """Whether this refusal starts a test (the caller then cuts to half the rate)."""
        share = sum(recent) / len(recent)
        if state.noise_share > 0 or now < state.throttler_until or share > FLAKY_MAX_SHARE:
            return False
        state.test_since, state.share_before = now, share
        state.restore_to = max(rate, state.peak)
        state.test_answers = state.test_refused = 0
        return True

    @staticmethod
    def verdict(state: RateState, sent_at: float, refused: bool, now: float) -> float | None:
        """Count an answer (of any process); the rate to give back when the test just ended
        with noise or with too few refusals to tell."""
        if state.test_since == -math.inf or sent_at < state.test_since:
            return None
        state.test_answers += 1
        state.test_refused += refused
        if state.test_answers < FLAKY_TEST_ANSWERS:
            return None
        share = state.test_refused / state.test_answers
        if (
            state.test_refused >= FLAKY_MIN_REFUSED
            and share >= FLAKY_SAME_SHARE * state.share_before
        ):
            state.test_since = -math.inf
            state.noise_share = share
            return state.restore_to
        if state.test_refused == 0:
            FlakinessCheck._end(state, now, sure=True)
            return None
        FlakinessCheck._end(state, now, sure=False)  # one refusal: too few to tell, try again soon
        return state.restore_to

    @staticmethod
    def _end(state: RateState, now: float, sure: bool) -> None:
        """No test for a while: a long one when the host stopped refusing at the lower rate."""
        state.test_since = -math.inf
        state.throttler_until = now + (THROTTLER_SECONDS if sure else RETEST_SECONDS)


class AdaptiveRate:
    """A GCRA reservation clock (waiters are served in order, no herd) whose rate grows while a
    host answers well and is cut on 429, 503 and timeouts.

    An adaptive rate is paced evenly, one request every 1/rate seconds, with no burst: many
    servers refuse the second request that comes inside 1/rate of the first (nginx's limit_req
    without burst), and a client that spends its tokens in bursts is refused there far below
    the host's real rate. A fixed rate (--no-adaptive_rate_limit) takes the configured burst.

    A throttle counts once per burst: only an answer to a request sent after the last cut can
    cut again, so the answers already in flight when the host first pushed back do not each cut
    the rate (the cooldown).
    """

    def __init__(self, settings: RateSettings, pace: LocalPace | SharedPace | None = None) -> None:
        """`pace`: where the host's rate, turns and successes are kept: this process's, or
        the machine's (fetch/pace.py), which every process of the run on it changes."""
        self.settings = settings
        self.pace = pace or LocalPace()
        with self.pace.locked() as state:
            self._valid(state)
            self.delivered_before = state.successes  # the successes before the window
            self.seen_cuts = state.cuts
            """The host's cuts when this process last counted: another process's cut restarts
            the counts below too."""
        self.first_sent: float | None = None
        self.last_taken = -math.inf
        self.window: deque[tuple[float, int]] = deque()
        """(time, the host's successes then) at this process's answers in the delivery window."""
        self.recent: deque[bool] = deque(maxlen=RECENT_ANSWERS)  # refused or not
        self.answers_since_cut = 0
        self.refused_since_cut = 0
        self.probe_answers = 0
        """Successes at or past the good rate since the last cut."""

    def _valid(self, state: RateState) -> None:
        """Set the rate when this is the first process to meet the host, or when a process
        killed halfway through writing the slot left it unusable."""
        if not _usable(state.rate):
            settings = self.settings
            state.rate = min(max(settings.initial, settings.floor), settings.ceiling)
            state.slow_start = settings.adaptive

    def _recount(self, state: RateState) -> None:
        """Start this process's counts again when another process cut the rate."""
        if state.cuts != self.seen_cuts:
            self.seen_cuts = state.cuts
            self.answers_since_cut = self.refused_since_cut = self.probe_answers = 0

    @property
    def rate(self) -> float:
        return self.pace.peek().rate

    @property
    def good_rate(self) -> float:
        """The quick climb after a cut goes up to this rate; slow probing goes on past it."""
        return self.pace.peek().good_rate

    @property
    def last_cut(self) -> float:
        return self.pace.peek().last_cut

    @property
    def cuts(self) -> int:
        return self.pace.peek().cuts

    def _burst(self, rate: float) -> float:
        """Tokens that may be spent at once: one for an adaptive rate, else the configured
        capacity, at most one second's."""
        if self.settings.adaptive:
            return 1.0
        return max(1.0, min(float(self.settings.capacity), rate))

    def available_at(self, now: float) -> float:
        """When the next token may be taken (now or later)."""
        state = self.pace.peek()
        if not _usable(state.rate):
            return now  # try_take sets it again
        tolerance = (self._burst(state.rate) - 1.0) / state.rate
        return max(now, state.next_free - tolerance)

    def try_take(self, now: float) -> bool:
        """Spend a token if one is available now (another process may just have taken it)."""
        with self.pace.locked() as state:
            self._valid(state)
            tolerance = (self._burst(state.rate) - 1.0) / state.rate
            if state.next_free - tolerance > now:
                return False
            state.next_free = max(state.next_free, now) + 1.0 / state.rate
        if self.first_sent is None:
            self.first_sent = now
        self.last_taken = now
        return True

    def _delivered(self, state: RateState, now: float) -> float | None:
        """Successes per second (of every process) over the last DELIVERY_WINDOW, or the time
        DELIVERED_EVIDENCE answers take at the rate if longer (or since the first request, at
        least one second); None on too few answers to tell."""
        horizon = max(DELIVERY_WINDOW, DELIVERED_EVIDENCE / state.rate)
        while self.window and self.window[0][0] < now - horizon:
            self.delivered_before = self.window.popleft()[1]
        if self.first_sent is None or len(self.window) < DELIVERED_EVIDENCE:
            return None
        span = min(horizon, max(1.0, now - self.first_sent))
        return (state.successes - self.delivered_before) / span

    def on_success(self, sent_at: float, now: float) -> None:
        if not self.settings.adaptive:
            return
        with self.pace.locked() as state:
            self._valid(state)
            self._recount(state)
            state.successes += 1
            self._answer(state, sent_at, now, refused=False)
            self.answers_since_cut += sent_at >= state.last_cut
            if state.slow_start:
                state.rate += SLOW_START_STEP
            elif state.rate < state.good_rate:
                state.rate = min(state.good_rate, state.rate + SLOW_START_STEP)
            else:
                answers_per_step = max(PROBE_ANSWERS, PROBE_SECONDS_PER_STEP * state.rate)
                steps = min(PROBE_DOUBLINGS, self.probe_answers // answers_per_step)
                state.rate += state.rate * PROBE_GROWTH * 2**steps / answers_per_step
                self.probe_answers += 1
            state.rate = min(state.rate, self.settings.ceiling)

    def on_throttle(self, sent_at: float, now: float, may_be_noise: bool = False) -> bool:
        """A 429, 503 or timeout for a request sent at `sent_at`; True when it cut the rate.

        After a long clean stretch the refusal marks the host's limit: the rate steps down just
        under it. Otherwise (in the first climb, or soon after a cut) the rate is cut under what
        the host delivered, and climbs quickly back to halfway between there and the refused
        rate (a binary search for the limit), then probes slowly.

        `may_be_noise`: a refusal that does not say it is about the rate (a 503 without
        Retry-After), which a flaky host gives whatever the rate (FlakinessCheck)."""
        if not self.settings.adaptive:
            return False
        with self.pace.locked() as state:
            self._valid(state)
            self._recount(state)
            self._answer(state, sent_at, now, refused=True)
            if sent_at < state.last_cut:
                return False
            self.answers_since_cut += 1
            self.refused_since_cut += 1
            if may_be_noise and FlakinessCheck.holds(state, now, self.recent):
                return False
            self._cut(state, now, may_be_noise)
            return True

    def _cut(self, state: RateState, now: float, may_be_noise: bool) -> None:
        refused_rate = state.rate
        delivered = self._delivered(state, now)
        if may_be_noise:
            FlakinessCheck.note_cut(state, now, refused_rate)
        if (
            may_be_noise
            and not self._first_window(now)  # it may end far above the limit, or in a burst
            and FlakinessCheck.starts_test(state, now, refused_rate, self.recent)
        ):
            state.rate = refused_rate / 2
            if delivered is not None:
                state.rate = min(state.rate, DELIVERED_MARGIN * delivered)
            state.good_rate = state.rate
        elif (
            not state.slow_start
            and self.refused_since_cut == 1
            and self.answers_since_cut > CLEAN_ANSWERS
        ):
            state.rate = state.good_rate = NEAR_MARGIN * refused_rate
        else:
            state.rate *= DECREASE_FACTOR
            if delivered is not None:
                state.rate = min(state.rate, DELIVERED_MARGIN * delivered)
            state.good_rate = (state.rate + refused_rate) / 2
        state.rate = max(self.settings.floor, state.rate)
        state.slow_start = False
        state.last_cut = now
        state.cuts += 1
        self.seen_cuts = state.cuts
        self.answers_since_cut = self.refused_since_cut = self.probe_answers = 0
        # the next request keeps the new spacing from the last one: none saved up is spent
        state.next_free = max(state.next_free, now, self.last_taken + 1.0 / state.rate)

    def _first_window(self, now: float) -> bool:
        return self.first_sent is None or now - self.first_sent < DELIVERY_WINDOW

    def _answer(self, state: RateState, sent_at: float, now: float, refused: bool) -> None:
        self.window.append((now, state.successes))
        self.recent.append(refused)
        restore = FlakinessCheck.verdict(state, sent_at, refused, now)
        if restore is not None:  # the host is flaky: the cuts were for nothing
            state.rate = state.good_rate = max(state.rate, restore)
            self.probe_answers = 0


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
