"""Politeness against hosts of very different, hidden capacity.

    .venv/bin/python benchmarks/polite.py [--urls-per-host 400] [--repeat 3]

One loopback server plays 8 hosts, 127.0.0.1 to 127.0.0.8 (flowdc.testserver with a HostPolicy
each). Their capacities are hidden from the downloader: 5, 10, 20, 40, 80, 150, 300 requests/s and
unlimited; above it a host answers 429 (a token bucket holding one second's worth). The hosts of
5, 20, 80 and 300 requests/s send `Retry-After: 1`, the others no Retry-After. The unlimited host
answers after 20 ms, and after a further second while more than 4 requests are in flight on it.
Each host gets `--urls-per-host` URLs, interleaved in the list.

`flowdc download` runs with its defaults (rate limiting and adaptation on; shards of 400 URLs, so
that in the 2-process run both processes, each with its own limits, share every host), once with
1 and once with 2 processes, `--repeat` times in alternation. Reported (medians): total time
against the ideal (the slowest host's URLs divided by its rate), 429s as a share of all requests
the hosts answered, success rate, and each host's requests/s over the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.testserver import HostPolicy, ImageServer, make_image

HOSTS = tuple(f"127.0.0.{index}" for index in range(1, 9))
RATES: tuple[float | None, ...] = (5, 10, 20, 40, 80, 150, 300, None)
RETRY_AFTER = (1, None, 1, None, 1, None, 1, None)
SHARD_SIZE = 400  # 8 shards of 3,200 URLs: both processes of the 2-process run work at once
TARGET_TIME_RATIO = 1.3
TARGET_THROTTLED_SHARE = 0.05


def policies() -> dict[str, HostPolicy]:
    made = {}
    for host, rate, retry_after in zip(HOSTS, RATES, RETRY_AFTER, strict=True):
        made[host] = HostPolicy(rate=rate, retry_after=retry_after)
    made[HOSTS[-1]] = HostPolicy(rate=None, delay=0.02, slow_above=4, slow_seconds=1.0)
    return made


def write_list(server: ImageServer, per_host: int, path: Path) -> None:
    urls, labels = [], []
    for index in range(per_host):
        for host_index in range(len(HOSTS)):
            urls.append(server.url(f"/img/{index % 50}.jpg", host=host_index))
            labels.append(str(host_index))
    pq.write_table(pa.table({"url": urls, "label": labels}), path)


def run_once(server: ImageServer, input_path: Path, work: Path, processes: int) -> dict:
    server.reset_counters()
    output = work / f"out-{processes}-{time.monotonic_ns()}"
    command = [
        sys.executable,
        "-m",
        "flowdc",
        "download",
        "--input",
        str(input_path),
        "--output",
        str(output),
        "--label",
        "label",
        "--processes",
        str(processes),
        "--no-progress",
        "--shard_size",
        str(SHARD_SIZE),
    ]
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    statuses = [
        status
        for path in sorted(output.glob("[0-9][0-9][0-9][0-9][0-9].parquet"))
        for status in pq.read_table(path, columns=["status"]).column("status").to_pylist()
    ]
    answers = {host: list(entries) for host, entries in server.log.items()}
    requests = sum(len(entries) for entries in answers.values())
    throttled = sum(status == 429 for entries in answers.values() for _, status in entries)
    per_host_rate = {}
    per_host_throttled = {
        host: sum(status == 429 for _, status in entries) for host, entries in answers.items()
    }
    for host, entries in answers.items():
        times = [when for when, status in entries if status == 200]
        span = (max(times) - min(times)) if len(times) > 1 else 0.0
        per_host_rate[host] = len(times) / span if span else float("nan")
    # the rate each worker process's limiter settled at for each host (fairness across processes)
    settled: dict[str, dict[str, float]] = {}
    for stats_file in output.glob("*_stats.json"):
        stats = json.loads(stats_file.read_text())
        for host, figures in stats["hosts"].items():
            if figures["rate"] is not None:
                settled.setdefault(host, {})[stats["worker"]] = figures["rate"]
    first = min(when for entries in answers.values() for when, _ in entries)
    last = max(when for entries in answers.values() for when, _ in entries)
    return {
        "seconds": seconds,
        "request_span": last - first,
        "success": statuses.count("success") / len(statuses),
        "rows": len(statuses),
        "requests": requests,
        "throttled_share": throttled / requests if requests else 0.0,
        "throttled": throttled,
        "per_host_rate": per_host_rate,
        "per_host_throttled": per_host_throttled,
        "settled": settled,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls-per-host", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    images = {f"{index}.jpg": make_image(index, 160, 120) for index in range(50)}
    ideal = args.urls_per_host / min(rate for rate in RATES if rate is not None)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with (
        tempfile.TemporaryDirectory(prefix="flowdc-polite-") as tmp,
        ImageServer(images, hosts=HOSTS, policies=policies()) as server,
    ):
        work = Path(tmp)
        input_path = work / "urls.parquet"
        write_list(server, args.urls_per_host, input_path)
        for round_index in range(args.repeat):
            for processes in (1, 2):
                result = run_once(server, input_path, work, processes)
                runs[processes].append(result)
                print(
                    f"round {round_index + 1} processes={processes}: {result['seconds']:.1f} s, "
                    f"{result['throttled']} 429s of {result['requests']} requests, "
                    f"success {result['success']:.1%}",
                    flush=True,
                )
    print(f"\nideal time: {ideal:.1f} s ({args.urls_per_host} URLs at the slowest host's rate)")
    print(
        "| processes | time (s) | time / ideal | first to last request (s) | 429s / requests "
        "| success |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    ok = True
    for processes, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        span = statistics.median(r["request_span"] for r in results)
        share = statistics.median(r["throttled_share"] for r in results)
        success = min(r["success"] for r in results)
        ok &= seconds / ideal <= TARGET_TIME_RATIO and share < TARGET_THROTTLED_SHARE
        ok &= success == 1.0
        print(
            f"| {processes} | {seconds:.1f} | {seconds / ideal:.2f} | {span:.1f} | {share:.1%} "
            f"| {success:.1%} |"
        )
    print("\nper-host successful requests/s (median), capacity in brackets:")
    for processes, results in runs.items():
        cells = []
        for host, rate in zip(HOSTS, RATES, strict=True):
            observed = statistics.median(r["per_host_rate"].get(host, 0.0) for r in results)
            throttled = statistics.median(r["per_host_throttled"].get(host, 0) for r in results)
            cells.append(
                f"{host.rsplit('.', 1)[1]}: {observed:.0f} [{rate or 'inf'}] {throttled:.0f}x429"
            )
        print(f"processes={processes}: " + ", ".join(cells))
    print("\n2 processes: the rate each process's limiter settled at (requests/s), per host")
    for host, rate in zip(HOSTS, RATES, strict=True):
        if rate is None or rate > 40:
            continue
        shares = [sorted(r["settled"].get(host, {}).values()) for r in runs[2]]
        text = "; ".join(" + ".join(f"{value:.1f}" for value in share) for share in shares)
        print(f"{host} (capacity {rate}): {text}")
    print("\ntargets met" if ok else "\nTARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
