"""What finishing a big output costs: overview, attribution, Croissant and report at the end of a
run, `flowdc report` and `flowdc validate`, in seconds and peak memory, at 250,000 and 1,000,000
rows.

    .venv/bin/python benchmarks/finish_scale.py [--rows 250000 1000000] [--real-rows 20000]
        [--workdir DIR] [--keep] [--reuse DIR] [--steps finish report validate]

1. A real `flowdc download` of --real-rows rows (shards of 10,000) from FLOW-DC's test server on
   127.0.0.1 and 127.0.0.2: 200 small generated JPEGs, 1 row in 50 a 404, 1,000 labels, a
   licence, a creator and a title per row, croissant.json asked for (--dataset_name).
2. For each --rows N: the list of N rows made by the same rule (row i depends on i mod
   --real-rows only), planned by FLOW-DC's planner into its own output, and its shards filled with
   copies of the real run's committed shards: shard s is real shard s mod (real shards), with the
   keys, shard numbers and paths rewritten in its results table, its tar (members renamed, each
   sample's JSON rewritten, image bytes as downloaded) and its stats marker. The 250,000-row output
   shares its shards with the 1,000,000-row one through hard links.
3. Each measured step is a child process running the real command, timed, with its peak RSS
   (VmHWM, read as it exits): `flowdc download` run again on the complete output (nothing to
   fetch: the finish step as the runner does it, overview.json, attribution.csv, croissant.json
   and report.html), `flowdc report OUTPUT` and `flowdc validate OUTPUT`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.config.loading import build_config
from flowdc.core.layout import RUNS_FILE, results_path, stats_path, tar_path
from flowdc.planning.inputs import InputTable
from flowdc.planning.plan import make_plan
from flowdc.testserver import ImageServer, make_image

SHARD_SIZE = 10_000
IMAGES = 200
LICENSES = ("CC0", "CC-BY 4.0", "CC-BY-NC 4.0", "CC-BY-SA 4.0")


def _options(urls: Path, output: Path) -> list[str]:
    """The download's options: the real run and the finish run give the same ones."""
    return [
        "--input", str(urls), "--output", str(output), "--label", "label",
        "--shard_size", str(SHARD_SIZE), "--processes", "2", "--no-enable_rate_limiting",
        "--max_retry_attempts", "0", "--no-progress", "--dataset_name", "finish-scale",
        "--dataset_creator", "benchmarks/finish_scale.py", "--dataset_license", "CC-BY-4.0",
    ]  # fmt: skip


def _write_list(path: Path, rows: int, period: int, base: list[str]) -> None:
    """Row i, by i mod `period`: a URL on one of the two hosts (1 in 50 a 404), its label,
    licence, creator and title."""
    writer = None
    for start in range(0, rows, 100_000):
        index = [i % period for i in range(start, min(rows, start + 100_000))]
        urls = [
            f"{base[i % 2]}/status/404/{i}.jpg"
            if i % 50 == 49
            else f"{base[i % 2]}/img/{i % IMAGES}.jpg"
            for i in index
        ]
        batch = pa.table(
            {
                "url": urls,
                "label": [f"species {i % 1000}" for i in index],
                "license": [LICENSES[i % len(LICENSES)] for i in index],
                "creator": [f"photographer {i % 500}" for i in index],
                "title": [f"observation {i}" for i in index],
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(path, batch.schema)
        writer.write_table(batch)
    assert writer is not None
    writer.close()


# The command runs in a child process that reports its own peak RSS (VmHWM, the high-water mark
# of its memory since exec) when it exits: wait4's ru_maxrss also counts the RSS this process had
# when it forked the child, which is larger than what is measured.
_PEAK_RSS = """
import atexit, os, runpy, sys
def report():
    status = open("/proc/self/status").read()
    peak = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    open(os.environ["FINISH_SCALE_PEAK"], "w").write(peak)
atexit.register(report)
sys.argv = ["flowdc", *sys.argv[1:]]
runpy.run_module("flowdc", run_name="__main__")
"""


def _measure(args: list[str], log: Path) -> tuple[float, float, int]:
    """Seconds, peak RSS (MB) and exit status of `flowdc ARGS`; its output goes to `log`."""
    peak_file = log.with_suffix(".peak")
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as sink:
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FINISH_SCALE_PEAK": str(peak_file)},
        )
    seconds = time.perf_counter() - started
    return seconds, int(peak_file.read_text()) / 1024, done.returncode


def _real_run(folder: Path, rows: int, server: ImageServer) -> Path:
    base = [server.url("").rstrip("/"), server.url("", host=1).rstrip("/")]
    urls = folder / f"list-{rows}.parquet"
    _write_list(urls, rows, rows, base)
    output = folder / f"real-{rows}"
    log = folder / "real-run.log"
    seconds, peak, code = _measure(["download", *_options(urls, output)], log)
    text = log.read_text(encoding="utf-8")
    if code != 0:
        raise SystemExit(f"the real run failed ({code}):\n{text[-3000:]}")
    print(
        f"real run: {rows:,} rows in {seconds:.1f} s (peak {peak:.0f} MB): {text.splitlines()[-1]}"
    )
    return output


class _RealShard:
    """A real shard's tar in memory, with where every member's name and every sample JSON's key
    start: a copy under another shard number patches those bytes (the keys keep their length)
    and each header's checksum, so the samples are the downloaded bytes."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.headers: list[int] = []
        self.json_keys: list[int] = []
        offset = 0
        while offset + 512 <= len(self.data) and self.data[offset] != 0:
            size = int(self.data[offset + 124 : offset + 136].strip(b"\0 ") or b"0", 8)
            self.headers.append(offset)
            name = self.data[offset : offset + 100].rstrip(b"\0")
            if name.endswith(b".json"):
                found = self.data.find(b'"key": "', offset + 512, offset + 512 + size)
                assert found >= 0, name
                self.json_keys.append(found + len(b'"key": "'))
            offset += 512 + -(-size // 512) * 512

    def copy(self, shard: int) -> bytes:
        prefix = b"%05d" % shard
        data = bytearray(self.data)
        for header in self.headers:
            old = sum(data[header : header + 5])
            data[header : header + 5] = prefix
            checksum = int(data[header + 148 : header + 154], 8) - old + sum(prefix)
            data[header + 148 : header + 156] = b"%06o\0 " % checksum
        for key in self.json_keys:
            data[key : key + 5] = prefix
        return bytes(data)


def _copy_shard(source: Path, real_shard: int, tar: _RealShard, target: Path, shard: int) -> None:
    """Shard `real_shard` of `source` as shard `shard` of `target`: new keys, same samples."""
    prefix = f"{shard:05d}"
    table = pq.read_table(results_path(source, real_shard))
    for name in ("key", "path"):
        column = pc.utf8_replace_slice(table.column(name), 0, 5, prefix)
        table = table.set_column(table.schema.get_field_index(name), name, column)
    shards = pa.repeat(pa.scalar(shard, pa.int32()), table.num_rows)
    table = table.set_column(table.schema.get_field_index("shard"), "shard", shards)
    tar_path(target, shard).write_bytes(tar.copy(shard))
    pq.write_table(table, results_path(target, shard), compression="zstd")
    stats = json.loads(stats_path(source, real_shard).read_text(encoding="utf-8"))
    stats["shard"] = shard
    stats_path(target, shard).write_text(json.dumps(stats, indent=1), encoding="utf-8")


def _big_output(
    folder: Path, rows: int, real_output: Path, real_rows: int, base: list[str],
    links_from: Path | None,
) -> tuple[Path, Path]:  # fmt: skip
    urls = folder / f"list-{rows}.parquet"
    _write_list(urls, rows, real_rows, base)
    output = folder / f"out-{rows}"
    output.mkdir()
    config = build_config(
        overrides={"input": str(urls), "output": str(output), "label": "label",
                   "shard_size": SHARD_SIZE}
    )  # fmt: skip
    plan = make_plan(config, InputTable(urls, wanted=("label",)))
    real_shards = -(-real_rows // SHARD_SIZE)
    tars = (
        {} if links_from else {s: _RealShard(tar_path(real_output, s)) for s in range(real_shards)}
    )
    started = time.perf_counter()
    for shard in range(plan.shard_count):
        if links_from is not None:
            for path in (tar_path, results_path, stats_path):
                os.link(path(links_from, shard), path(output, shard))
        else:
            real = shard % real_shards
            _copy_shard(real_output, real, tars[real], output, shard)
    shutil.copy(real_output / RUNS_FILE, output / RUNS_FILE)
    how = "linked" if links_from is not None else "copied with new keys"
    print(
        f"{rows:,} rows: {plan.shard_count} shards {how} in {time.perf_counter() - started:.0f} s"
    )
    return urls, output


def _build(folder: Path, sizes: list[int], real_rows: int) -> None:
    """The real run, then an output of each size (module docstring, steps 1 and 2)."""
    images = {f"{i}.jpg": make_image(i, 64 + i % 7 * 8, 48 + i % 5 * 8) for i in range(IMAGES)}
    with ImageServer(images, hosts=("127.0.0.1", "127.0.0.2")) as server:
        base = [server.url("").rstrip("/"), server.url("", host=1).rstrip("/")]
        real_output = _real_run(folder, real_rows, server)
    largest = _big_output(folder, sizes[-1], real_output, real_rows, base, None)
    for rows in sizes[:-1]:
        _big_output(folder, rows, real_output, real_rows, base, largest[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--real-rows", type=int, default=20_000)
    parser.add_argument("--workdir", help="where the outputs go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    parser.add_argument("--reuse", help="measure the outputs a run with --keep left in this folder")
    parser.add_argument("--steps", nargs="+", default=["finish", "report", "validate"])
    args = parser.parse_args()
    sizes = sorted(args.rows)
    assert all(n % SHARD_SIZE == 0 for n in [*sizes, args.real_rows]), "whole shards only"
    folder = Path(args.reuse or tempfile.mkdtemp(prefix="finish-scale-", dir=args.workdir))
    try:
        if not args.reuse:
            _build(folder, sizes, args.real_rows)
        print("\n| rows | step | seconds | peak RSS (MB) | exit |")
        print("| ---: | --- | ---: | ---: | ---: |")
        for rows in sizes:
            urls, output = folder / f"list-{rows}.parquet", folder / f"out-{rows}"
            commands = {
                "finish": ["download", *_options(urls, output)],
                "report": ["report", str(output)],
                "validate": ["validate", str(output)],
            }
            for step in args.steps:
                log = folder / f"{step}-{rows}.log"
                seconds, peak, code = _measure(commands[step], log)
                print(f"| {rows:,} | {step} | {seconds:.1f} | {peak:.0f} | {code} |", flush=True)
                if code != 0:
                    print(log.read_text(encoding="utf-8")[-3000:], file=sys.stderr)
    finally:
        if args.keep or args.reuse:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
