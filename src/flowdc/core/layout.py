"""The output's layout: the name of every file that a run or a shard writes, in one place.

An output folder holds run-level files (the plan, labels, overview, runs, report, croissant,
attribution, dedupe index, lock, and after `flowdc split` the split table, its summary and one
list per split) and per-shard files named by the shard's number in 5 digits or more: `00042.tar`
(WebDataset samples) or `00042.images.parquet` (Parquet samples), `00042.parquet` (results
table), `00042_stats.json` (the commit marker, written last) and, while an ImageFolder shard
runs, `.00042.journal`. The results tables' pattern (`NNNNN.parquet`) never matches a Parquet
sample shard, so a reader of one never reads the other. A
sample's key is its shard number followed by its row in the shard (planning/plan.py). Anything
being written has a hidden temporary name (`temp_name`) until it is renamed into place.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

PLAN_TABLE = ".flowdc-plan.parquet"
PLAN_META = ".flowdc-plan.json"
"""Written last when planning: a plan without it is unfinished."""
LABELS_FILE = "labels.json"
OVERVIEW_FILE = "overview.json"
RUNS_FILE = ".flowdc-runs.jsonl"
"""One line per run that ran shards: when, how long, interrupted or not, which engine."""
REPORT_FILE = "report.html"
CROISSANT_FILE = "croissant.json"
ATTRIBUTION_FILE = "attribution.csv"
DEDUPE_FILE = ".flowdc-dedupe.sqlite"
DEDUPE_FILES = (DEDUPE_FILE, f"{DEDUPE_FILE}-journal", f"{DEDUPE_FILE}-wal", f"{DEDUPE_FILE}-shm")
LOCK_FILE = ".flowdc-lock"
TASKVINE_DIR = ".flowdc-taskvine"
"""The TaskVine manager's folder in a local output: its logs (for vine_plot_*), the rows it sends
to workers and the files they send back until they are checked and committed."""
TEMP_MARK = ".tmp-"
SPLIT_NAMES = ("train", "validation", "test")
"""The splits `flowdc split` makes, in the order of its --ratios (Hugging Face's names)."""
SPLITS_FILE = "splits.parquet"
"""key -> split of every stored sample; `flowdc.results` joins it."""
SPLITS_SUMMARY = "splits.json"
"""Counts per split and class, the seed, the rule and the leakage check; written last."""
SPLIT_LAYOUT_MARK = ".flowdc-split-layout"
"""In an ImageFolder output's split layout (beside the output): the output it was made from."""


def split_list_name(split: str) -> str:
    """The list of one split's samples (key, file name, label), read by Croissant and WebDataset
    users. `split=train`, not `train`: Hugging Face `datasets` takes a file whose name holds
    `train` as a word for its train split, and would read the output's root wrongly."""
    return f"split={split}.parquet"


SPLIT_FILES = (SPLITS_FILE, SPLITS_SUMMARY, *(split_list_name(s) for s in SPLIT_NAMES))

RUN_FILES = frozenset(
    {
        PLAN_TABLE, PLAN_META, LABELS_FILE, OVERVIEW_FILE, RUNS_FILE, REPORT_FILE,
        CROISSANT_FILE, ATTRIBUTION_FILE, *DEDUPE_FILES, *SPLIT_FILES,
    }
)  # fmt: skip
"""Run-level files FLOW-DC writes (not the lock, which lives as long as a run)."""
FINISHED_FILES = (OVERVIEW_FILE, REPORT_FILE, CROISSANT_FILE, ATTRIBUTION_FILE)
"""Written when a run ends, from the committed shards."""

SHARD_FILE = re.compile(r"^\.?\d{5,}(\.tar|\.images\.parquet|\.parquet|_stats\.json|\.journal)$")
MARKER_FILE = re.compile(r"^\d{5,}_stats\.json$")
SAMPLE_FILE = re.compile(rf"^\.?\d{{5,}}\.[A-Za-z0-9]{{1,5}}({re.escape(TEMP_MARK)}.*)?$")
"""An ImageFolder image (KEY.ext), or its temporary name."""


def temp_name(final_name: str) -> str:
    """A hidden, unique name beside the final one; never taken for a finished file."""
    return f".{final_name}{TEMP_MARK}{uuid.uuid4().hex[:12]}"


def final_name(name: str) -> str:
    """The name a temporary file will have once renamed (a final name is returned as is)."""
    return name[1 : name.index(TEMP_MARK)] if TEMP_MARK in name else name


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def tar_name(shard: int) -> str:
    return f"{shard:05d}.tar"


def tar_path(output: str | Path, shard: int) -> Path:
    return Path(output) / tar_name(shard)


def parquet_shard_name(shard: int) -> str:
    """A Parquet output's samples: not `NNNNN.parquet`, the results table's name."""
    return f"{shard:05d}.images.parquet"


def parquet_shard_path(output: str | Path, shard: int) -> Path:
    return Path(output) / parquet_shard_name(shard)


def results_path(output: str | Path, shard: int) -> Path:
    return Path(output) / f"{shard:05d}.parquet"


def stats_path(output: str | Path, shard: int) -> Path:
    return Path(output) / f"{shard:05d}_stats.json"


def journal_path(output: str | Path, shard: int) -> Path:
    return Path(output) / f".{shard:05d}.journal"


def shard_temp_prefixes(shard: int) -> tuple[str, str]:
    """The starts of the shard's temporary files: ".00042." and ".00042_", so that shard 10000
    never matches shard 100000's files."""
    return f".{shard:05d}.", f".{shard:05d}_"


def split_layout_dir(output: str | Path) -> Path:
    """Where an ImageFolder output's split layout goes: `NAME-splits` beside the output folder
    `NAME`, never inside it, where torchvision's ImageFolder would take it for a class."""
    folder = Path(output).resolve()
    return folder.with_name(f"{folder.name}-splits")


def is_committed(output: str | Path, shard: int) -> bool:
    return stats_path(output, shard).is_file()


def made_by_flowdc(name: str) -> bool:
    """A run-level or shard file FLOW-DC writes (or its temporary name)."""
    final = final_name(name)
    return final in RUN_FILES or bool(SHARD_FILE.match(final))


def is_remote(location: str) -> bool:
    """True for a URL that fsspec opens (s3://, gs://, ...); plain paths and file:// are local."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.lower() not in ("", "file")
