"""The per-host limits' arithmetic, on a fake clock: token bucket, AIMD, concurrency, opt-out."""

from __future__ import annotations

import math

import pytest

from flowdc.shard.fetch.aimd import (
    ADDITIVE_MIN,
    ADDITIVE_SHARE,
    DECREASE_FACTOR,
    SLOW_START_STEP,
    AdaptiveConcurrency,
    AdaptiveRate,
    RateSettings,
)
from flowdc.shard.fetch.robots import opt_out_directive


def bucket(
    initial: float = 20, floor: float = 1, ceiling: float = 100, capacity: int = 5, adaptive=True
) -> AdaptiveRate:
    return AdaptiveRate(RateSettings(initial, floor, ceiling, capacity, adaptive))


def take_all_at(rate: AdaptiveRate, now: float) -> int:
    taken = 0
    while rate.available_at(now) <= now and taken < 1000:
        rate.take(now)
        taken += 1
    return taken


def test_burst_then_one_token_per_interval() -> None:
    rate = bucket(initial=16, capacity=5, adaptive=False)  # 1/16 s: exact in binary
    assert take_all_at(rate, 0.0) == 5
    assert rate.available_at(0.0) == 0.0625
    assert take_all_at(rate, 0.0625) == 1
    assert take_all_at(rate, 0.25) == 3
    assert take_all_at(rate, 2.0) == 5  # 1.75 s would refill 28 tokens; the bucket holds 5


def test_burst_is_at_most_one_second_of_the_rate() -> None:
    rate = bucket(initial=2, capacity=20, adaptive=False)
    assert take_all_at(rate, 100.0) == 2


def test_idle_time_saves_no_more_than_the_burst() -> None:
    rate = bucket(initial=10, capacity=3, adaptive=False)
    take_all_at(rate, 0.0)
    assert take_all_at(rate, 1000.0) == 3


def test_fixed_rate_does_not_adapt() -> None:
    rate = bucket(initial=20, adaptive=False)
    rate.on_success()
    assert rate.on_throttle(sent_at=1.0, now=1.1) is False
    assert rate.rate == 20


def test_slow_start_adds_a_step_per_success_up_to_the_ceiling() -> None:
    rate = bucket(initial=20, ceiling=21)
    rate.on_success()
    assert rate.rate == pytest.approx(20 + SLOW_START_STEP)
    for _ in range(100):
        rate.on_success()
    assert rate.rate == 21


def test_throttle_cuts_once_per_burst() -> None:
    rate = bucket(initial=40)
    assert rate.on_throttle(sent_at=1.0, now=1.2)
    assert rate.rate == pytest.approx(40 * DECREASE_FACTOR)
    # answers to requests sent before the cut are the same burst: no second cut
    assert not rate.on_throttle(sent_at=1.1, now=1.25)
    assert rate.rate == pytest.approx(40 * DECREASE_FACTOR)
    # a request sent after the cut that is throttled again cuts again
    assert rate.on_throttle(sent_at=1.3, now=1.35)
    assert rate.rate == pytest.approx(40 * DECREASE_FACTOR**2)
    assert rate.cuts == 2


def test_after_a_cut_growth_is_additive() -> None:
    rate = bucket(initial=10)
    rate.on_throttle(sent_at=0.0, now=0.0)
    assert not rate.slow_start
    before = rate.rate
    rate.on_success()
    step = max(ADDITIVE_MIN, ADDITIVE_SHARE * 10)
    assert rate.rate == pytest.approx(before + step / before)
    # at full use (successes at `rate` per second) that is `step` requests/s per second
    for _ in range(round(rate.rate * 4)):
        rate.on_success()
    assert rate.rate == pytest.approx(before + 5 * step, rel=0.1)


def test_floor_holds_under_any_number_of_cuts() -> None:
    rate = bucket(initial=10, floor=2)
    for index in range(50):
        rate.on_throttle(sent_at=float(index), now=float(index))
    assert rate.rate == 2


def test_a_cut_spends_no_saved_burst() -> None:
    rate = bucket(initial=10, capacity=10)
    rate.on_throttle(sent_at=5.0, now=5.0)
    assert rate.available_at(5.0) == 5.0
    assert take_all_at(rate, 5.0) == 1  # not the 7 tokens of a full bucket at rate 7


def test_two_processes_converge_on_equal_shares() -> None:
    """Two independent controllers over one host of capacity 30 req/s, started unequal."""
    a, b = bucket(initial=25, ceiling=1000), bucket(initial=2, ceiling=1000)
    a.slow_start = b.slow_start = False
    now = 0.0
    for _ in range(4000):  # 400 s in steps of 0.1 s
        now += 0.1
        if a.rate + b.rate > 30:  # the host pushes back on both
            a.on_throttle(now, now)
            b.on_throttle(now, now)
        else:
            for controller in (a, b):
                for _ in range(max(1, round(controller.rate * 0.1))):
                    controller.on_success()
    assert abs(a.rate - b.rate) < 0.25 * max(a.rate, b.rate)


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
