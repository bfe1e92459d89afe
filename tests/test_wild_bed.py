"""The wild bed, small: one host of each behaviour in network namespaces, `flowdc download` run
in a client namespace as a user runs it, and properties checked from what the hosts saw and from
the results tables (not speed). benchmarks/wild.py is the full bed.

Needs root and `ip netns`; skips with the reason otherwise, except under CI as root, where it
must run.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
ROWS = 300


def _bed_modules():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return tuple(
        importlib.import_module(name)
        for name in ("wild", "wild_corpus", "wild_hosts", "wild_measure", "wild_net")
    )


def _hosts(wild_hosts):
    """Ten hosts, one of each behaviour; the big one holds about a third of the rows."""
    Host = wild_hosts.Host
    specs = [
        Host(0, "normal", 100, rate=60, knee=32, ttfb=0.03, bandwidth=40 << 20),
        Host(1, "normal", 30, rate=4, knee=4, ttfb=0.1, retry_after=1),  # 429 with Retry-After
        Host(2, "normal", 30, rate=8, knee=8, ttfb=0.4, throttle_status=503),  # 503, none
        Host(3, "noburst", 25, rate=5, knee=8, ttfb=0.05, throttle_status=429),
        Host(4, "flaky", 30, rate=20, knee=8, ttfb=0.05, flaky_share=0.2, flaky_mode="503"),
        Host(5, "flaky", 15, rate=20, knee=8, ttfb=0.05, flaky_share=0.2, flaky_mode="reset"),
        Host(6, "blackhole", 15, rate=10),
        Host(7, "refuse", 15, rate=10),
        Host(8, "dying", 20, rate=20, knee=8, ttfb=0.05),
        Host(9, "comeback", 20, rate=20, knee=8, ttfb=0.05, back_after=5),
    ]
    assert sum(h.urls for h in specs) == ROWS
    return specs


@pytest.fixture(scope="module")
def wild_run():
    """One bed, one `flowdc download` in it, measured; the bed is gone when this returns."""
    wild, wild_corpus, wild_hosts, wild_measure, wild_net = _bed_modules()
    why = wild_net.netns_permitted()
    if why:
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"CI as root must run the wild bed: {why}")
        pytest.skip(why)
    wild_net.sweep_stale()
    hosts = _hosts(wild_hosts)
    with tempfile.TemporaryDirectory(prefix="flowdc-wild-test-") as folder:
        work = Path(folder)
        pool_dir, sizes = wild_corpus.small_pool(12, 5, work / "pool")
        rows = wild_measure.wild_rows(hosts, len(sizes), seed=5)
        urls = wild_measure.write_list(rows, work / "urls.parquet")
        out = work / "out"
        # a user's short timeout: the black hole and the dying host cost timeouts, not minutes
        command = wild.flowdc_command(urls, out, 1, "--timeout", "5", "--shard_size", "150")
        with wild.WildBed(hosts, pool_dir, 1, 200, work) as bed:
            namespaces = list(bed.net.made)
            made = set(wild_net.our_namespaces()) >= set(namespaces)
            run = bed.run("test", command, 1, limit=100)
            result = wild_measure.measure(
                hosts, rows, run.pop("log"), out, run["started"], run["seconds"]
            )
            result.update(run)
        result["namespaces_made"] = made and len(namespaces) == 2
        result["namespaces_gone"] = bed.net.gone()
        result["hosts"] = {h.index: h for h in hosts}
    return result


def test_the_run_ended_by_itself(wild_run):
    assert not wild_run["timed_out"], wild_run["stderr_tail"]
    assert wild_run["returncode"] == 0, wild_run["stderr_tail"]


def test_every_row_accounted_for_exactly_once(wild_run):
    assert wild_run["results_rows"] == ROWS
    assert (wild_run["missing"], wild_run["duplicated"], wild_run["unexpected"]) == (0, 0, 0)


def test_dead_hosts_rows_fail_and_no_success_is_invented(wild_run):
    assert wild_run["dead_rows"] == 30
    assert wild_run["dead_rows_failed"] == wild_run["dead_rows"]
    # every success row is a URL the host answered 200 (the dying host's unanswered half fails)
    assert wild_run["phantom_successes"] == 0
    assert wild_run["dying_rows_success"] <= 10
    # the healthy hosts' rows all arrive (the flaky ones after retries)
    kinds = wild_run["per_kind"]
    assert kinds["normal"]["success"] == kinds["normal"]["rows"]
    assert kinds["noburst"]["success"] == kinds["noburst"]["rows"]


def test_the_hosts_saw_every_behaviour(wild_run):
    codes = {h: t["codes"] for h, t in wild_run["timeline"].items()}
    assert 6 not in codes and 7 not in codes  # a black hole and a refusal log nothing
    assert wild_run["flaky_errors"] > 0
    assert wild_run["throttled"] > 0  # the slow hosts pushed back at least once


def test_no_host_above_its_rate_by_more_than_10_percent(wild_run):
    """The most requests a host saw in any 10 s window over 10 s x its hidden rate (server
    side): here at most 0.85 (host 1, 4 requests/s with Retry-After). On the 60-host bed of
    benchmarks/wild.py hosts of 1-1.5 requests/s still see up to 1.28 while the first cuts find
    their limit (docs/benchmarks.md)."""
    over = {h: round(v, 2) for h, v in wild_run["over_limit"].items() if v > 1.1}
    assert not over, f"hosts above their rate by more than 10% in a 10 s window: {over}"


def test_the_namespaces_are_gone(wild_run):
    assert wild_run["namespaces_made"]
    assert wild_run["namespaces_gone"]
