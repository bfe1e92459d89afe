"""The wild bed's lists, ideal and measurements: what the hosts saw, against what they allow.

Everything here reads only the bed's own knowledge (the hidden host parameters, the server's log)
and a tool's output as a user sees it: the results tables NNNNN.parquet (`url`, `status`) that
FLOW-DC and img2dataset both write at the output's root.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from wild_hosts import DEAD_KINDS, FLAKY, Host
from wild_net import host_name

WINDOW = 10.0  # seconds: the window of the over-limit measure
LINK_EFFICIENCY = 0.95  # payload per byte on the wire (1448 of 1514 bytes of a full frame, ~)
THROTTLES = (429, 503)


def url(host: int, row: int, pick: int) -> str:
    return f"http://{host_name(host)}/i/{row}/{pick}.jpg"


def wild_rows(hosts: list[Host], pool: int, seed: int) -> list[tuple[int, int, int]]:
    """(row, host, pool pick) for every URL of the wild hosts, shuffled (seeded)."""
    rng = random.Random(seed + 1)
    owners = [h.index for h in hosts if h.kind != "open" for _ in range(h.urls)]
    rng.shuffle(owners)
    return [(row, host, rng.randrange(pool)) for row, host in enumerate(owners)]


def open_rows(hosts: list[Host], count: int, pool: int, seed: int) -> list[tuple[int, int, int]]:
    """`count` URLs spread evenly over the hosts without limits (rows numbered from 10**7)."""
    rng = random.Random(seed + 2)
    opened = [h.index for h in hosts if h.kind == "open"]
    return [(10**7 + i, opened[i % len(opened)], rng.randrange(pool)) for i in range(count)]


def write_list(rows: list[tuple[int, int, int]], path: Path) -> Path:
    urls = [url(host, row, pick) for row, host, pick in rows]
    labels = [f"h{host:03d}" for _, host, _ in rows]
    pq.write_table(pa.table({"url": urls, "label": labels}), path)
    return path


def ideal(
    hosts: list[Host],
    rows: list[tuple[int, int, int]],
    sizes: list[int],
    machines: int,
    mbit: float | None,
    timeout: float,
) -> dict:
    """The least time any client could take, from the hidden parameters: the longest of each
    host's URLs at what it allows (its rate, its concurrency over its time to first byte, its
    bandwidth; a flaky host's failures asked again; a comeback host from its return), the bytes
    at the machines' bandwidth, and what dead hosts cost at least (a black hole: one timeout to
    learn it is dead; the dying host: its first half, then one timeout)."""
    count: Counter[int] = Counter()
    volume: Counter[int] = Counter()
    for _, host, pick in rows:
        count[host] += 1
        volume[host] += sizes[pick]
    per_host: dict[int, float] = {}
    fetched = 0.0
    for host in hosts:
        n = count[host.index]
        if not n:
            continue
        if host.kind == "blackhole":
            per_host[host.index] = timeout
            continue
        if host.kind == "refuse":
            per_host[host.index] = 0.0
            continue
        share = 0.5 if host.kind == "dying" else 1.0
        requests = n * share / (1 - host.flaky_share)
        nbytes = volume[host.index] * share
        fetched += nbytes
        limits = [requests * host.ttfb / host.knee]
        if host.rate:
            limits.append(requests / host.rate)
        if host.bandwidth:
            limits.append(nbytes / host.bandwidth)
        one = host.ttfb + (nbytes / n / host.bandwidth if host.bandwidth else 0.0)
        seconds = max(limits) + one
        if host.kind == "comeback":
            seconds += host.back_after
        if host.kind == "dying":
            seconds += timeout
        per_host[host.index] = seconds
    link = machines * mbit * 1e6 / 8 * LINK_EFFICIENCY if mbit else None
    bandwidth = fetched / link if link else 0.0
    slowest = max(per_host, key=per_host.__getitem__)
    return {
        "seconds": max(bandwidth, per_host[slowest]),
        "bandwidth_seconds": bandwidth,
        "slowest_host": slowest,
        "slowest_host_seconds": per_host[slowest],
        "bytes": fetched,
        "per_host": per_host,
    }


def window_max(times: list[float], window: float = WINDOW) -> int:
    """The most requests in any `window` seconds (a sliding window over sorted times)."""
    times = sorted(times)
    best, start = 0, 0
    for end, when in enumerate(times):
        while when - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def read_results(output: Path) -> list[tuple[str, str]]:
    rows = []
    for path in sorted(output.glob("[0-9][0-9][0-9][0-9][0-9].parquet")):
        table = pq.read_table(path, columns=["url", "status"])
        rows += zip(
            table.column("url").to_pylist(), table.column("status").to_pylist(), strict=True
        )
    return rows


def measure(
    hosts: list[Host],
    rows: list[tuple[int, int, int]],
    log: dict,
    output: Path,
    started: float,
    seconds: float,
) -> dict:
    """What a run did, server side and in its results tables."""
    by_index = {h.index: h for h in hosts}
    requests: dict[int, list[float]] = defaultdict(list)
    codes: Counter[int] = Counter()
    host_codes: dict[int, Counter[int]] = defaultdict(Counter)
    served_rows = set()
    machine_bytes: Counter[int] = Counter()
    profile: Counter[int] = Counter()  # bytes served per 10 s from the run's start
    for when, host, code, nbytes, row, machine in log["log"]:
        if code in (-2, -3) or when < started - 1:  # a death, a return; before the tool
            continue
        machine_bytes[int(machine)] += nbytes
        profile[int((when - started) // WINDOW)] += nbytes
        requests[int(host)].append(when)
        codes[int(code)] += 1
        host_codes[int(host)][int(code)] += 1
        if code == 200:
            served_rows.add(int(row))
    total = sum(codes.values())
    throttled = sum(codes[c] for c in THROTTLES)
    flaky_errors = sum(n for c, n in codes.items() if c == -1 or c > FLAKY)
    over: dict[int, float] = {}
    for host, times in requests.items():
        rate = by_index[host].rate
        if rate:
            over[host] = window_max(times) / (rate * WINDOW)
    # rows: each input row exactly once, failures where the host could not have answered
    expected = {url(host, row, pick): (row, host) for row, host, pick in rows}
    results = read_results(output)
    seen = Counter(u for u, _ in results)
    status = {u: s for u, s in results}
    missing = [u for u in expected if u not in seen]
    duplicated = [u for u, n in seen.items() if n > 1]
    unexpected = [u for u in seen if u not in expected]
    successes = [u for u, s in status.items() if s == "success" and u in expected]
    phantom = [u for u in successes if expected[u][0] not in served_rows]
    dead = [u for u, (_, h) in expected.items() if by_index[h].kind in ("blackhole", "refuse")]
    dying = [u for u, (r, h) in expected.items() if by_index[h].kind == "dying"]
    per_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for u, (_, h) in expected.items():
        per_kind[by_index[h].kind]["rows"] += 1
        per_kind[by_index[h].kind]["success"] += status.get(u) == "success"
    # per host: when its requests came, against the run's start
    timeline = {
        host: {
            "first": min(times) - started,
            "last": max(times) - started,
            "requests": len(times),
            "codes": dict(host_codes[host]),
            "max_inflight": log.get("hosts", {}).get(str(host), {}).get("max_inflight"),
        }
        for host, times in requests.items()
    }
    worst = max(over, key=over.__getitem__) if over else None
    # the time only dead hosts kept the run going: after the last request of a living host
    living = [t["last"] for h, t in timeline.items() if by_index[h].kind not in DEAD_KINDS]
    dying_served = [
        when - started for when, h, code, *_ in log["log"]
        if code == 200 and by_index[int(h)].kind == "dying"
    ]  # fmt: skip
    last_useful = max(living + dying_served, default=0.0)
    # per host of a behaviour: what it allowed, what it got
    behaviour = {}
    listed = {h for _, h in expected.values()}
    for host in hosts:
        if host.kind not in ("flaky", "noburst", "comeback", "dying") or host.index not in listed:
            continue
        times = requests.get(host.index, [])
        span = (max(times) - min(times)) if len(times) > 1 else 0.0
        allowed = min(host.rate or 1e9, host.knee / host.ttfb)
        got = host_codes[host.index]
        ok = sum(status.get(u) == "success" for u, (_, h) in expected.items() if h == host.index)
        behaviour[host.index] = {
            "kind": host.kind,
            "urls": host.urls,
            "success": ok,
            "requests": len(times),
            "allowed_rate": round(allowed, 2),
            "achieved_rate": round(len(times) / span, 2) if span else None,
            "refused_share": round(sum(got[c] for c in THROTTLES) / len(times), 3)
            if times
            else 0.0,
            "first": min(times) - started if times else None,
            "last": max(times) - started if times else None,
        }
    return {
        "seconds": seconds,
        "rows": len(expected),
        "results_rows": len(results),
        "success": len(successes),
        "missing": len(missing),
        "duplicated": len(duplicated),
        "unexpected": len(unexpected),
        "accounted": not missing and not duplicated and not unexpected,
        "phantom_successes": len(phantom),
        "dead_rows": len(dead),
        "dead_rows_failed": sum(status.get(u) not in (None, "success") for u in dead),
        "dying_rows": len(dying),
        "dying_rows_success": sum(status.get(u) == "success" for u in dying),
        "requests": total,
        "throttled": throttled,
        "throttled_share": throttled / total if total else 0.0,
        "flaky_errors": flaky_errors,
        "over_limit": over,
        "max_over_limit": over[worst] if worst is not None else 0.0,
        "max_over_limit_host": worst,
        "hosts_over_1_1": sorted(h for h, v in over.items() if v > 1.1),
        "last_useful_request": last_useful,
        "machine_mb": {m: round(b / 1e6) for m, b in sorted(machine_bytes.items())},
        "mb_per_s_by_10s": [round(profile[i] / 1e6 / WINDOW, 1) for i in range(max(profile) + 1)]
        if profile
        else [],
        "dead_tail": seconds - last_useful,
        "behaviour": behaviour,
        "per_kind": {k: dict(v) for k, v in per_kind.items()},
        "timeline": timeline,
        "statuses": dict(Counter(s for _, s in results)),
    }


def load_log(path: Path) -> dict:
    return json.loads(path.read_text())
