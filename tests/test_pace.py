"""The machine's pacing table (fetch/pace.py) with real processes: turns taken from several
processes are spaced by the interval, successes are counted for all, the file goes with its last
user, a killed run's file is taken over, and a host that finds no slot paces on its own."""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from flowdc.shard.fetch import pace
from flowdc.shard.fetch.aimd import AdaptiveRate, RateSettings
from flowdc.shard.fetch.pace import LocalPace, SharedPace, open_table, release_table, table_path

INTERVAL = 0.01
TURNS = 40
FIXED = RateSettings(1 / INTERVAL, 1, 1000, 1, adaptive=False)


def take_turns(run_key: str, host: str, turns: int, times: mp.Queue) -> None:
    """A worker process: take `turns` turns of `host` as fast as they come, note when."""
    table = open_table(run_key)
    assert table is not None
    rate = AdaptiveRate(FIXED, table.pace(host))
    taken: list[float] = []
    deadline = time.monotonic() + 30
    while len(taken) < turns and time.monotonic() < deadline:
        now = time.monotonic()
        if rate.try_take(now):
            taken.append(now)
            with rate.pace.locked() as state:
                state.successes += 1
        else:
            time.sleep(max(0.0, rate.available_at(now) - now))
    times.put(taken)
    release_table(table)


@pytest.fixture
def run_key() -> str:
    key = f"test-{uuid.uuid4().hex}"
    yield key
    table_path(key).unlink(missing_ok=True)


def test_turns_from_several_processes_are_spaced_by_the_interval(run_key: str) -> None:
    context = mp.get_context("spawn")
    times: mp.Queue = context.Queue()
    workers = [
        context.Process(target=take_turns, args=(run_key, "host.test", TURNS, times))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    taken = sorted(at for _ in workers for at in times.get(timeout=60))
    for worker in workers:
        worker.join(timeout=30)
    assert len(taken) == 3 * TURNS
    gaps = [later - earlier for earlier, later in itertools.pairwise(taken)]
    # no two turns closer than the interval, whoever took them (one clock for all processes)
    assert min(gaps) >= INTERVAL - 1e-9
    assert not table_path(run_key).exists()  # the last process to leave removed it


def test_one_rate_for_the_machine(run_key: str) -> None:
    """A cut made by one process holds for the other (one table, two openings here stand for
    two processes: the state is read from the table every time)."""
    first = open_table(run_key)
    assert first is not None
    try:
        settings = RateSettings(20, 1, 1000, 1)
        a = AdaptiveRate(settings, first.pace("host.test"))
        assert isinstance(a.pace, SharedPace)
        b = AdaptiveRate(RateSettings(5, 1, 1000, 1), first.pace("host.test"))
        assert b.rate == 20  # the first to meet the host set its rate
        assert a.try_take(100.0)
        assert not b.try_take(100.01) and b.available_at(100.01) == 100.05
        assert b.on_throttle(sent_at=100.0, now=100.1)
        assert a.rate == b.rate == 20 * 0.7 and a.cuts == 1
        assert not a.on_throttle(sent_at=100.05, now=100.12)  # same burst: one cut for both
        a.on_success(sent_at=100.2, now=100.3)
        assert b.pace.peek().successes == 1
        assert AdaptiveRate(settings, first.pace("other.test")).rate == 20  # its own slot
    finally:
        release_table(first)
    assert not table_path(run_key).exists()


def test_a_killed_runs_table_is_taken_over(run_key: str) -> None:
    context = mp.get_context("spawn")
    times: mp.Queue = context.Queue()
    worker = context.Process(target=take_turns, args=(run_key, "host.test", 10**6, times))
    worker.start()
    deadline = time.monotonic() + 30
    while not table_path(run_key).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(timeout=30)
    assert table_path(run_key).exists()  # nobody was left to remove it
    table = open_table(run_key)
    assert table is not None
    host_pace = table.pace("host.test")
    assert host_pace.peek().successes > 0  # the killed process's slot, found again
    assert AdaptiveRate(FIXED, host_pace).try_take(time.monotonic() + 1.0)
    release_table(table)
    assert not table_path(run_key).exists()


def test_stale_tables_are_swept_and_used_ones_kept(
    run_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pace, "STALE_SECONDS", 0.0)
    in_use = open_table(run_key)
    assert in_use is not None
    stale = table_path(f"{run_key}-killed")
    stale.write_bytes(b"\0" * 64)  # what a killed run leaves: a file nobody holds
    try:
        other = open_table(f"{run_key}-next")
        assert other is not None
        release_table(other)
        assert not stale.exists()
        assert table_path(run_key).exists()  # held by this process: kept
    finally:
        stale.unlink(missing_ok=True)
        release_table(in_use)


def test_a_host_that_finds_no_free_slot_paces_on_its_own(
    run_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pace, "PACE_SLOTS", 4)  # a table of 4 slots: the 5th host finds none
    table = open_table(run_key)
    assert table is not None
    try:
        paces = [table.pace(f"host{index}.test") for index in range(5)]
        assert sum(isinstance(each, SharedPace) for each in paces) == 4
        assert isinstance(paces[4], LocalPace)
    finally:
        release_table(table)


def test_no_shared_memory_means_no_table(run_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pace, "SHM", Path("/nonexistent-shm"))
    assert open_table(run_key) is None


def hammer(run_key: str, seed: int, seconds: float, errors: mp.Queue) -> None:
    """A worker process: read and change the rates of a few hosts as fast as it can."""
    import random
    import traceback

    try:
        rng = random.Random(seed)
        table = open_table(run_key)
        assert table is not None
        rates: dict[str, AdaptiveRate] = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            host = f"host{rng.randrange(20)}.test"
            if host not in rates:
                rates[host] = AdaptiveRate(RateSettings(2, 0.5, 500, 20), table.pace(host))
            rate, now = rates[host], time.monotonic()
            rate.available_at(now)
            rate.try_take(now)
            if rng.random() < 0.9:
                rate.on_success(sent_at=now - 0.01, now=now)
            else:
                rate.on_throttle(sent_at=now - 0.01, now=now, may_be_noise=rng.random() < 0.5)
        release_table(table)
        errors.put(None)
    except Exception:  # the test reads it
        errors.put(traceback.format_exc())


def test_processes_changing_one_hosts_rate_never_see_half_a_change(run_key: str) -> None:
    """A regression: reads beside writes once saw a rate of 0 (struct.pack_into zero-fills the
    slot before it writes it) and a worker's request slot died of a ZeroDivisionError."""
    context = mp.get_context("spawn")
    errors: mp.Queue = context.Queue()
    workers = [
        context.Process(target=hammer, args=(run_key, seed, 2.0, errors)) for seed in range(3)
    ]
    for worker in workers:
        worker.start()
    failures = [errors.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert failures == [None, None, None], failures


def test_another_processs_cut_restarts_this_ones_probe() -> None:
    """Two rates on one state stand for two processes: after A's cut, B probes from its first
    small step again, not from the large steps of its long clean stretch."""
    shared = LocalPace()
    settings = RateSettings(2, 0.5, 1000, 1)
    a, b = AdaptiveRate(settings, shared), AdaptiveRate(settings, shared)
    a.on_throttle(sent_at=0.0, now=0.0)  # out of slow start
    for index in range(2000):
        b.on_success(sent_at=1.0 + index * 0.01, now=1.0 + index * 0.01)
    assert b.probe_answers > 500
    assert a.on_throttle(sent_at=30.0, now=30.0)
    while b.rate < b.good_rate:
        b.on_success(sent_at=31.0, now=31.0)
    before = b.rate
    b.on_success(sent_at=31.0, now=31.0)
    # the first probe step's growth (5% over at least 30 answers), not its sixth (32 times that)
    assert b.probe_answers == 1 and b.rate - before <= before * 0.05 / 30 + 1e-9


def test_a_flaky_test_holds_for_every_process() -> None:
    """A test started by one process's bare 503 is not started again (nor cut for) by another's."""
    shared = LocalPace()
    settings = RateSettings(20, 0.5, 1000, 1)
    a, b = AdaptiveRate(settings, shared), AdaptiveRate(settings, shared)
    now = 10.0
    for rate in (a, b):
        assert rate.try_take(0.0) or True
        for _ in range(20):
            rate.on_success(sent_at=now - 0.1, now=now)
    a.on_throttle(sent_at=now, now=now + 0.1)  # leaves slow start
    start = now + 0.5
    assert a.on_throttle(sent_at=start, now=start + 0.1, may_be_noise=True)  # the test: half
    halved = a.rate
    assert shared.peek().test_since > -math.inf
    assert not b.on_throttle(sent_at=start + 0.2, now=start + 0.3, may_be_noise=True)
    assert b.rate == halved


def test_a_torn_slot_is_set_again_not_divided_by() -> None:
    """A process killed inside a write may leave a rate of 0: the next user sets it again."""
    shared = LocalPace()
    rate = AdaptiveRate(RateSettings(4, 0.5, 1000, 1), shared)
    shared.state.rate = 0.0
    assert rate.available_at(5.0) == 5.0
    assert rate.try_take(5.0) and rate.rate == 4


def test_hosts_the_full_table_cannot_hold_get_a_processs_share(
    run_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from flowdc.config.options import DownloadConfig
    from flowdc.shard.fetch.client import Fetcher

    monkeypatch.setattr(pace, "PACE_SLOTS", 1)
    monkeypatch.setattr(pace, "PROBES", 1)
    config = DownloadConfig(input="x.csv", output="out", rate_limit=8)

    async def limits() -> list[float]:
        fetcher = Fetcher(config, processes=4, run_key=run_key, machines=1)
        try:
            return [
                fetcher.scheduler.host(f"h{index}.test").rate.settings.initial for index in range(3)
            ]
        finally:
            await fetcher.close()

    # one host holds the table's one slot (the machine's 8/s); the others pace in the process
    assert sorted(asyncio.run(limits())) == [2.0, 2.0, 8.0]
