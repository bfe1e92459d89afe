"""Planning a big list: time and peak memory of finding repeated URLs and drawing class samples.

    .venv/bin/python benchmarks/plan_rows.py [--rows 10000000] [--repeat 3] \
        [--baseline ../other-checkout/src]

Generates a parquet list of `rows` rows (url, label) in 1,000,000-row pieces: a long tail of
about 100,000 labels (Zipf 1.3: the largest class holds a quarter of the rows, most hold one or
two). Then plans it (`make_plan`, what `flowdc download` does before the first request), each
time in a fresh process, in three ways:

- distinct: every URL once (no repeats: the plan is written once, as before);
- repeats: each URL about 5 times, spread over the list (the plan is written again with the
  repeats' columns);
- repeats + sample: the same with --max_per_class 100 --min_per_class 5.

Prints the medians of seconds and peak RSS (ru_maxrss of the planning process), the repeated
rows found and the rows the sample left out. With --baseline, another version's src folder (one
without these features) plans the same lists too, in alternation with this one, so both see
the same load; a case it cannot plan (its options do not exist) is left out.
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
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PIECE = 1_000_000

PLAN_ONCE = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from flowdc.config.options import DownloadConfig
    from flowdc.planning.inputs import InputTable
    from flowdc.planning.plan import make_plan
    source, output, options = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    output.mkdir()
    config = DownloadConfig(input=source, output=str(output), label="label", **options)
    started = time.perf_counter()
    plan = make_plan(config, InputTable(Path(source), None, wanted=("label",)))
    seconds = time.perf_counter() - started
    sampling = getattr(plan, "class_sampling", None) or {}
    left_out = sampling.get("class_capped_rows", 0) + sampling.get("class_too_small_rows", 0)
    print(json.dumps({
        "seconds": seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": plan.total_rows,
        "repeated": getattr(plan, "repeated_url_rows", 0),
        "left_out": left_out,
    }))
    """
)


def write_list(path: Path, rows: int, repeats: bool, seed: int = 0) -> None:
    """`rows` rows; with `repeats`, URLs drawn from rows/5 distinct ones."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([("url", pa.string()), ("label", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, PIECE):
            count = min(PIECE, rows - start)
            ids = (
                rng.integers(0, max(1, rows // 5), count)
                if repeats
                else np.arange(start, start + count)
            )
            classes = np.minimum(rng.zipf(1.3, count), 100_000)
            urls = pa.array(
                [f"http://images.example.org/photos/{i}/medium.jpg" for i in ids.tolist()]
            )
            labels = pa.array([f"species {c}" for c in classes.tolist()])
            writer.write_table(pa.table({"url": urls, "label": labels}))


def plan_once(
    source: Path, work: Path, options: dict[str, object], src: str | None = None
) -> dict[str, float]:
    """Plan in a fresh process (flowdc from `src` when given)."""
    output = work / "out"
    shutil.rmtree(output, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": src} if src else None
    done = subprocess.run(
        [sys.executable, "-c", PLAN_ONCE, str(source), str(output), json.dumps(options)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    shutil.rmtree(output, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", help="src folder of a version to compare with")
    parser.add_argument("--folder", help="where the lists and plans go (default: a temp folder)")
    args = parser.parse_args()
    work = Path(args.folder or tempfile.mkdtemp(prefix="flowdc-plan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        distinct, repeated = work / "distinct.parquet", work / "repeats.parquet"
        for path, repeats in ((distinct, False), (repeated, True)):
            if not path.exists():  # kept in --folder: the same lists for another version
                write_list(path, args.rows, repeats)
        cases = {
            "distinct": (distinct, {}),
            "repeats": (repeated, {}),
            "repeats + sample": (repeated, {"max_per_class": 100, "min_per_class": 5}),
        }
        versions = {"": None, " (baseline)": args.baseline} if args.baseline else {"": None}
        results: dict[str, list[dict[str, float]]] = {
            name + tag: [] for name in cases for tag in versions
        }
        for _ in range(args.repeat):
            for name, (source, options) in cases.items():
                for tag, src in versions.items():
                    try:
                        results[name + tag].append(plan_once(source, work, options, src))
                    except RuntimeError:  # a version without the options
                        continue
        print(f"{args.rows:,} rows, medians of {args.repeat} run(s)")
        print(f"{'case':<29}{'seconds':>9}{'peak MB':>9}{'repeated rows':>15}{'left out':>12}")
        for name, runs in results.items():
            if not runs:
                continue
            print(
                f"{name:<29}{statistics.median(r['seconds'] for r in runs):>9.1f}"
                f"{statistics.median(r['peak_mb'] for r in runs):>9.0f}"
                f"{int(runs[0]['repeated']):>15,}{int(runs[0]['left_out']):>12,}"
            )
    finally:
        if not args.folder:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
