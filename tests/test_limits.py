"""The per-host limits' arithmetic on a fake clock (pacing, cuts, climbs, flaky hosts,
concurrency, opt-out), and the rate controller against simulated hosts (tests/rate_sim.py)."""

from __future__ import annotations

import math

import pytest

from flowdc.shard.fetch.aimd import (
    DECREASE_FACTOR,
    DELIVERED_MARGIN,
    NEAR_MARGIN,
    PROBE_ANSWERS,
    PROBE_GROWTH,
    SLOW_START_STEP,
    AdaptiveConcurrency,
    AdaptiveRate,
    RateSettings,
)
from flowdc.shard.fetch.robots import opt_out_directive
from tests.rate_sim import HiddenHost, Outcome, simulate


def bucket(
    initial: float = 20, floor: float = 1, ceiling: float = 100, capacity: int = 5, adaptive=True
) -> AdaptiveRate:
    return AdaptiveRate(RateSettings(initial, floor, ceiling, capacity, adaptive))


def take_all_at(rate: AdaptiveRate, now: float) -> int:
    taken = 0
    while rate.available_at(now) <= now and taken < 1000:
        assert rate.try_take(now)
        taken += 1
    return taken


def test_fixed_rate_takes_its_burst_then_one_token_per_interval() -> None:
    rate = bucket(initial=16, capacity=5, adaptive=False)  # 1/16 s: exact in binary
    assert take_all_at(rate, 0.0) == 5
    assert rate.available_at(0.0) == 0.0625
    assert take_all_at(rate, 0.0625) == 1
    assert take_all_at(rate, 0.25) == 3
    assert take_all_at(rate, 2.0) == 5  # 1.75 s would refill 28 tokens; the bucket holds 5


def test_fixed_burst_is_at_most_one_second_of_the_rate() -> None:
    rate = bucket(initial=2, capacity=20, adaptive=False)
    assert take_all_at(rate, 100.0) == 2


def test_adaptive_rate_is_paced_evenly_with_no_burst() -> None:
    """Hosts that allow no burst refuse the second request inside 1/rate of the first."""
    rate = bucket(initial=16, capacity=20)
    assert take_all_at(rate, 0.0) == 1
    assert take_all_at(rate, 1000.0) == 1  # idle time saves nothing up
    assert rate.available_at(1000.0) == 1000.0625


def test_fixed_rate_does_not_adapt() -> None:
    rate = bucket(initial=20, adaptive=False)
    rate.on_success(sent_at=1.0, now=1.05)
    assert rate.on_throttle(sent_at=1.0, now=1.1) is False
    assert rate.rate == 20


def test_slow_start_adds_a_step_per_success_up_to_the_ceiling() -> None:
    rate = bucket(initial=20, ceiling=21)
    rate.on_success(sent_at=0.0, now=0.1)
    assert rate.rate == pytest.approx(20 + SLOW_START_STEP)
    for _ in range(100):
        rate.on_success(sent_at=0.0, now=0.1)
    assert rate.rate == 21


def test_throttle_cuts_once_per_burst() -> None:
    rate = bucket(initial=40)
    assert rate.on_throttle(sent_at=1.0, now=1.2)
    assert rate.rate == pytest.approx(40 * DECREASE_FACTOR)  # too few answers for more
    # answers to requests sent before the cut are the same burst: no second cut
    assert not rate.on_throttle(sent_at=1.1, now=1.25)
    assert rate.rate == pytest.approx(40 * DECREASE_FACTOR)
    # a request sent after the cut that is throttled again cuts again
    assert rate.on_throttle(sent_at=1.3, now=1.35)
    assert rate.rate == pytest.approx(40 * DECREASE_FACTOR**2)
    assert rate.cuts == 2


def test_a_cut_lands_under_what_the_host_delivered() -> None:
    rate = bucket(initial=20, ceiling=1000)
    assert rate.try_take(0.0)
    for index in range(40):  # 40 answers over 4 s, 12 of them successes: 3 a second
        now = 0.1 * (index + 1)
        if index % 10 < 3:
            rate.on_success(sent_at=now - 0.05, now=now)
        else:
            rate.on_throttle(sent_at=-1.0, now=now)  # sent before: no cut yet
    assert rate.on_throttle(sent_at=3.9, now=4.0)
    assert rate.rate == pytest.approx(DELIVERED_MARGIN * 12 / 4)


def test_after_a_clean_stretch_a_refusal_steps_down_just_under_it() -> None:
    rate = bucket(initial=10)
    rate.on_throttle(sent_at=0.0, now=0.0)
    now = 0.0
    for _ in range(200):
        now += 0.1
        rate.on_success(sent_at=now - 0.05, now=now)
    refused_at = rate.rate
    assert rate.on_throttle(sent_at=now, now=now + 0.05)
    assert rate.rate == pytest.approx(NEAR_MARGIN * refused_at)
    assert rate.good_rate == rate.rate  # no quick climb past it: it probes slowly from there


def test_after_a_cut_the_rate_climbs_back_quickly_to_the_good_rate_then_slowly() -> None:
    rate = bucket(initial=40, ceiling=1000)
    rate.on_throttle(sent_at=0.0, now=0.0)  # 40 -> 28, good rate halfway: 34
    assert rate.good_rate == pytest.approx((28 + 40) / 2)
    successes = 0
    while rate.rate < rate.good_rate and successes < 100:
        rate.on_success(sent_at=1.0, now=1.0)
        successes += 1
    assert successes == math.ceil(6 / SLOW_START_STEP)  # +6 requests/s in 24 answers
    before = rate.rate
    for _ in range(PROBE_ANSWERS):
        rate.on_success(sent_at=1.0, now=1.0)
    # past the good rate: +5% per the longer of 30 answers and 10 s of answers
    assert rate.rate < before * (1 + PROBE_GROWTH)


def test_floor_holds_under_any_number_of_cuts() -> None:
    rate = bucket(initial=10, floor=2)
    for index in range(50):
        rate.on_throttle(sent_at=float(index), now=float(index))
    assert rate.rate == 2


def test_a_cut_keeps_the_new_spacing_from_the_last_request() -> None:
    rate = bucket(initial=10)
    assert rate.try_take(5.0)
    rate.on_throttle(sent_at=5.0, now=5.05)  # 10 -> 7 requests/s
    assert rate.available_at(5.05) == pytest.approx(5.0 + 1 / 7)


@pytest.mark.parametrize("latency", [0.05, 0.5])
@pytest.mark.parametrize(
    ("limit", "burst", "says_rate"),
    [
        (10, 0, True),
        (3, 0, True),
        (40, 0, True),
        (10, 10, True),
        (100, 100, True),
        (10, 0, False),
        (5, 5, False),
        (50, 50, False),
    ],
)
def test_a_host_gets_close_to_its_limit_and_is_not_flooded(
    limit: float, burst: float, says_rate: bool, latency: float
) -> None:
    """Hosts with and without burst, refusing with 429 (or Retry-After) or a bare 503, reached
    from a start at 20 requests/s: two minutes on a fake clock (tests/rate_sim.py)."""
    outcome = simulate(HiddenHost(limit, burst), 120, latency=latency, refusal_says_rate=says_rate)
    assert outcome.accepted >= 0.75 * limit * 120
    assert outcome.refused <= 0.08 * len(outcome.sent)
    settled = [at for at in outcome.sent if at >= 10]  # the first climb is over
    assert Outcome(settled, 0, 0, 0, outcome.controller).most_in_window() <= 1.2 * limit * 10
    assert outcome.controller.pace.peek().noise_share == 0  # a throttling host is not flaky


@pytest.mark.parametrize("latency", [0.05, 0.5])
@pytest.mark.parametrize("share", [0.1, 0.2, 0.3])
def test_a_flaky_host_keeps_its_rate(share: float, latency: float) -> None:
    """A host that answers a share of requests 503 (no Retry-After) whatever the rate: its
    rate is not driven down by the refusals (before, it ended at the floor)."""
    host = HiddenHost(1000, burst=1000, flaky=share)
    outcome = simulate(host, 120, latency=latency, refusal_says_rate=False)
    assert outcome.controller.pace.peek().noise_share > 0
    assert outcome.controller.rate >= 20


@pytest.mark.parametrize("burst", [0, 30])
def test_two_processes_of_one_machine_share_a_host_under_its_limit(burst: float) -> None:
    """Two controllers taking their turns from one pace (the machine's table) against one host
    of 30 requests/s: together close to its limit, not above it once settled."""
    outcome = simulate(HiddenHost(30, burst), 120, latency=0.1, clients=2, shared=True)
    assert outcome.accepted >= 0.8 * 30 * 120
    settled = [at for at in outcome.sent if at >= 10]
    assert Outcome(settled, 0, 0, 0, outcome.controller).most_in_window() <= 1.2 * 30 * 10


def test_machines_pacing_apart_stay_under_a_host_limit_together() -> None:
    """Two machines (each its own pace and half the limits) against a host of 30 requests/s
    that takes bursts: together under its limit once settled, and close to it."""
    outcome = simulate(HiddenHost(30, 30), 120, latency=0.1, clients=2)
    assert outcome.accepted >= 0.8 * 30 * 120
    settled = [at for at in outcome.sent if at >= 10]
    assert Outcome(settled, 0, 0, 0, outcome.controller).most_in_window() <= 1.2 * 30 * 10


def test_concurrency_grows_only_while_in_use_and_never_above_the_share() -> None:
    limit = AdaptiveConcurrency(initial=4)
    limit.on_answer(0.01, sent_at=0.0, now=0.01, in_flight=1)  # not using its limit
    assert limit.limit == 4
    for _ in range(10):
        limit.on_answer(0.01, sent_at=0.0, now=0.01, in_flight=int(limit.limit))
    assert limit.limit == 14
    assert limit.allowed(share=6) == 6
    assert limit.allowed(share=100) == 14


def test_concurrency_cut_when_the_host_slows_down() -> None:
    limit = AdaptiveConcurrency(initial=8)
    for index in range(5):
        limit.on_answer(0.02, sent_at=index, now=index + 0.02, in_flight=2)
    for index in range(5):
        limit.on_answer(1.5, sent_at=10 + index, now=11.5 + index, in_flight=8)
    assert limit.limit < 8 * DECREASE_FACTOR + 1e-9
    assert limit.cuts >= 1
    limit.on_timeout(sent_at=100.0, now=130.0)
    assert limit.limit >= 1


def test_concurrency_never_below_one() -> None:
    limit = AdaptiveConcurrency(initial=2)
    for index in range(30):
        limit.on_timeout(sent_at=float(index), now=float(index))
    assert limit.limit == 1 and limit.allowed(share=10) == 1


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["noai"], "noai"),
        (["noimageai"], "noimageai"),
        (["noindex, nofollow"], "noindex"),
        (["NoImageIndex"], "noimageindex"),
        (["none"], "none"),
        (["nofollow", "noarchive"], None),
        (["otherbot: noindex"], None),
        (["otherbot: noindex", "flowdc: noai"], "noai"),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST, noai"], "noai"),
        (["max-image-preview:large"], None),
        ([], None),
    ],
)
def test_opt_out_directives(values: list[str], expected: str | None) -> None:
    assert opt_out_directive(values) == expected


def test_unlimited_rate_is_always_available() -> None:
    rate = AdaptiveRate(RateSettings(math.inf, math.inf, math.inf, 1, False))
    assert take_all_at(rate, 0.0) == 1000


def test_every_result_column_is_reserved_from_input_columns() -> None:
    """An input column named like a result column is renamed (input_...), never overwritten."""
    from flowdc.core.results import RESULT_FIELDS
    from flowdc.planning.plan import RESERVED_COLUMNS

    assert {name for name, _ in RESULT_FIELDS} <= set(RESERVED_COLUMNS)
