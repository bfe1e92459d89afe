"""What `flowdc split` costs at scale: time and peak memory of the split of an output.

    .venv/bin/python benchmarks/splits.py [--rows 1000000] [--format webdataset] [--repeat 3]

Writes a synthetic output in a temporary folder: the plan and the committed results tables of
--rows rows in shards of 10,000 (97% stored, 1% --dedupe duplicates of an earlier image, 2%
failed; 1,000 classes of Zipf-like sizes; occurrences of 1 to 4 photos; 2% of the stored images
repeat an earlier image's sha256). A webdataset output needs no tars to be split; an imagefolder
output gets one small file per stored image, which the split layout hard-links. Each repeat runs
`flowdc split --ratios 0.8,0.1,0.1 --group occurrence` in a fresh process and reports its wall
time and peak RSS (and the RSS of the same process before splitting, its imports).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.core.layout import PLAN_META, PLAN_TABLE, results_path, stats_path
from flowdc.core.results import ShardResult
from flowdc.planning.plan import Plan

SHARD = 10_000
CLASSES = 1_000

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report its parent's
_CHILD = """
import json, sys, time
from flowdc.metadata.split_output import SplitRequest, write_splits
from flowdc.planning.plan import Plan
def memory(field):
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field))
    return int(line.split()[1]) / 1024
plan = Plan.load(sys.argv[1])
before = memory("VmRSS:")
started = time.perf_counter()
summary = write_splits(plan, SplitRequest.parse("0.8,0.1,0.1", group="occurrence"))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "before_mb": before, "peak_mb": memory("VmHWM:"),
                  "ok": summary["leakage_check"]["ok"], "units": summary["units"],
                  "largest_unit": summary["largest_unit"],
                  "counts": summary["counts"]}))
"""


def make_output(folder: Path, rows: int, output_format: str) -> None:
    rng = np.random.default_rng(0)
    shards = -(-rows // SHARD)
    labels = [f"species {i}" for i in range(CLASSES)]
    weights = 1 / np.arange(1, CLASSES + 1)
    weights /= weights.sum()
    occurrence, photos_left, seen = 0, 0, []
    for shard in range(shards):
        count = min(SHARD, rows - shard * SHARD)
        keys = [f"{shard:05d}{row:04d}" for row in range(count)]
        draw = rng.random(count)
        status = np.where(draw < 0.97, "success", np.where(draw < 0.98, "duplicate", "failed"))
        klass = rng.choice(CLASSES, size=count, p=weights)
        sha, duplicate_of, groups = [], [], []
        for index in range(count):
            if photos_left == 0:
                occurrence, photos_left = occurrence + 1, int(rng.integers(1, 5))
            photos_left -= 1
            groups.append(f"occ-{occurrence}")
            if status[index] == "duplicate" and not seen:
                status[index] = "success"
            if status[index] == "failed":
                sha.append(None)
                duplicate_of.append(None)
            elif status[index] == "duplicate":
                digest, owner = seen[int(rng.integers(len(seen)))]
                sha.append(digest)
                duplicate_of.append(owner)
            elif seen and rng.random() < 0.02:  # the same image stored twice (no --dedupe)
                sha.append(seen[int(rng.integers(len(seen)))][0])
                duplicate_of.append(None)
            else:
                sha.append(os.urandom(32).hex())
                duplicate_of.append(None)
                seen.append((sha[-1], keys[index]))
        stored = status == "success"
        label = [labels[k] for k in klass]
        if output_format == "imagefolder":
            paths = [f"{label[i]}/{keys[i]}.jpg" if stored[i] else None for i in range(count)]
            for path in paths:
                if path:
                    (folder / path).parent.mkdir(exist_ok=True)
                    (folder / path).write_bytes(b"jpeg")
        else:
            paths = [f"{keys[i]}.jpg" if stored[i] else None for i in range(count)]
        table = pa.table(
            {
                "key": keys,
                "status": status.tolist(),
                "label": label,
                "sha256": sha,
                "duplicate_of": duplicate_of,
                "occurrence": groups,
                "path": paths,
            }
        )
        pq.write_table(table, results_path(folder, shard))
        marker = ShardResult(shard, count, int(stored.sum()), 0, 0, 0.0)
        stats_path(folder, shard).write_text(marker.to_json())
    plan = Plan(
        output=str(folder), input="synthetic.parquet", input_format="parquet",
        input_fingerprint="synthetic", url_column="url", label_column="species",
        shard_size=SHARD, output_format=output_format, total_rows=rows, shard_count=shards,
        key_width=4, extra_columns={"occurrence": "occurrence"}, labels=labels,
        label_folders={label: label for label in labels},
    )  # fmt: skip
    (folder / PLAN_TABLE).write_bytes(b"")
    (folder / PLAN_META).write_text(plan.to_json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", choices=["webdataset", "imagefolder"], default="webdataset")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowdc-split-bench-") as scratch:
        folder = Path(scratch) / "output"
        folder.mkdir()
        started = time.perf_counter()
        make_output(folder, args.rows, args.format)
        print(f"made {args.rows:,} rows ({args.format}) in {time.perf_counter() - started:.1f} s")
        runs = []
        for _ in range(args.repeat):
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, str(folder)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]))
        print(
            f"median of {len(runs)}: {statistics.median(r['seconds'] for r in runs):.2f} s, "
            f"peak RSS {statistics.median(r['peak_mb'] for r in runs):.0f} MB "
            f"({statistics.median(r['before_mb'] for r in runs):.0f} MB before splitting)"
        )


if __name__ == "__main__":
    main()
