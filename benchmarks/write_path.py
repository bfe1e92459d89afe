"""CPU of writing a shard's bytes: ordinary buffered writes against AppendFile's direct ones.

    .venv/bin/python benchmarks/write_path.py [--folder /tmp] [--gigabytes 1.5] [--repeat 3]

Writes samples of about 150 KB (the benchmark corpus's mean) one write each, the way the tar
writer does, to a file in --folder, in alternation, and prints the medians of this process's
CPU seconds (user + kernel) and wall seconds. The file is deleted after each run. On a virtual
machine the kernel's copy into the page cache is most of the cost of a buffered write.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from flowdc.shard.writers.direct import AppendFile


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(path: Path, direct: bool, samples: list[bytes], count: int) -> tuple[float, float]:
    cpu, wall = _cpu(), time.perf_counter()
    appended = AppendFile(path, direct=direct)
    for index in range(count):
        appended.write(samples[index % len(samples)])
    appended.close()
    result = _cpu() - cpu, time.perf_counter() - wall
    path.unlink()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp"))
    parser.add_argument("--gigabytes", type=float, default=1.5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    samples = [os.urandom(150_000 + 512 * i) for i in range(20)]
    count = int(args.gigabytes * 1e9 / 155_000)
    runs: dict[str, list[tuple[float, float]]] = {"buffered": [], "direct": []}
    for _ in range(args.repeat):
        for name in runs:
            path = args.folder / f"flowdc-write-path-{os.getpid()}.bin"
            runs[name].append(run(path, name == "direct", samples, count))
    print(f"{count:,} samples, {args.gigabytes} GB, into {args.folder}, medians of {args.repeat}")
    for name, samples_run in runs.items():
        cpu = statistics.median(r[0] for r in samples_run)
        wall = statistics.median(r[1] for r in samples_run)
        each = cpu / count * 1e6
        print(f"{name:<9} CPU {cpu:5.2f} s ({each:4.0f} us/sample)  wall {wall:5.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
