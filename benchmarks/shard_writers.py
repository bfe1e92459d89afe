"""CPU and memory of the shard writers alone: the WebDataset tar writer against the Parquet one.

    .venv/bin/python benchmarks/shard_writers.py [--samples 5000] [--repeat 3] [--folder /tmp]

Each run is a fresh process that writes --samples samples of about 150 KB (random bytes, the
size of the benchmark corpus's mean) with their facts, then commits the shard; runs alternate,
and the medians of CPU seconds (user + kernel, the whole process but its imports and the
samples' making) and peak RSS above that point are printed. No network, no event loop: only
what the writer thread costs per sample. pandas is kept out, as in a worker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

_RUN = """
import json, os, resource, sys
from pathlib import Path
from flowdc.engines.local import without_pandas
without_pandas()  # as in a worker: pyarrow's first array would import it (25 MB)
from flowdc.shard.records import SAMPLE_FACT_FIELDS
from flowdc.shard.writers.parquet import ParquetShardWriter, image_table
from flowdc.shard.writers.webdataset import TarShardWriter

kind, count, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
bodies = [os.urandom(150_000 + 512 * i) for i in range(20)]
metas = []
for i in range(count):
    meta = {field.name: None for field in SAMPLE_FACT_FIELDS}
    meta.update(key=f"{i:09d}", url=f"http://127.0.0.1/img/{i}.jpg", label="cat", class_index=1,
                status="success", sha256="ab" * 32, width=640, height=480, format="jpg",
                bytes=150_000, attempts=1, elapsed_seconds=0.01, http_status=200,
                content_type="image/jpeg")
    metas.append(meta)

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

start_rss, start_cpu, peak = rss(), cpu(), 0
if kind == "parquet":
    layout = image_table(SAMPLE_FACT_FIELDS, [], ["bird", "cat", "dog"], True)
    writer = ParquetShardWriter(folder, 0, layout)
else:
    writer = TarShardWriter(folder, 0)
for i in range(count):
    writer.add(f"{i:09d}", "jpg", bodies[i % 20], metas[i], "cat", 1)
    if i % 50 == 0:
        peak = max(peak, rss())
writer.commit()
peak = max(peak, rss())
size = sum(p.stat().st_size for p in folder.iterdir())
print(json.dumps({"cpu": cpu() - start_cpu, "peak_mb": (peak - start_rss) / 2**20,
                  "mb": size / 1e6}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"webdataset": [], "parquet": []}
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for _ in range(args.repeat):
        for kind in runs:
            folder = Path(tempfile.mkdtemp(prefix="flowdc-writers-", dir=args.folder))
            try:
                done = subprocess.run(
                    [sys.executable, "-c", _RUN, kind, str(args.samples), str(folder)],
                    capture_output=True, text=True, env=env, check=True, timeout=600,
                )  # fmt: skip
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            runs[kind].append(json.loads(done.stdout))
    load = os.getloadavg()[0]
    print(f"{args.samples:,} samples of ~150 KB into {args.folder}, medians of {args.repeat}, "
          f"load {load:.1f}")  # fmt: skip
    for kind, results in runs.items():
        cpu = statistics.median(r["cpu"] for r in results)
        peak = statistics.median(r["peak_mb"] for r in results)
        size = statistics.median(r["mb"] for r in results)
        print(
            f"{kind:<11} CPU {cpu:5.2f} s ({cpu / args.samples * 1e6:4.0f} us/sample)  "
            f"peak +{peak:4.0f} MiB  file {size:5.0f} MB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
