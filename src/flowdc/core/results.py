"""What a committed shard holds: its results table's columns and its stats marker.

Every layer reads these: the shard writes them, engines pass ShardResult back to the runner,
the finishing steps read the tables and markers of every shard.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from flowdc.core.layout import stats_path
from flowdc.core.version import __version__

HOST_COUNTS = (
    "requests",
    "successes",
    "throttled",
    "latency_sum",
    "unavailable",
    "marked_down",
    "held_seconds",
)
"""HostFigures that add up over passes and shards (the others are the latest or the highest)."""


RESULT_FIELDS: list[tuple[str, pa.DataType]] = [
    ("key", pa.string()),
    ("shard", pa.int32()),
    ("row", pa.int32()),
    ("url", pa.string()),
    ("label", pa.string()),
    ("class_index", pa.int32()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("http_status", pa.int16()),
    ("attempts", pa.int16()),
    ("bytes", pa.int64()),
    ("sha256", pa.string()),  # of the downloaded bytes
    ("stored_sha256", pa.string()),  # of the bytes stored, when resizing or conversion changed them
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("format", pa.string()),
    ("content_type", pa.string()),
    ("path", pa.string()),
    ("elapsed_seconds", pa.float32()),
    ("host", pa.string()),
    ("final_url", pa.string()),
    ("retryable", pa.bool_()),
    ("fetched_at", pa.timestamp("ms", tz="UTC")),  # when the row finished: the report's time axis
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("duplicate_of", pa.string()),
    ("same_url_as", pa.string()),  # the key of the row whose fetch this row's URL shared
]


@dataclass
class ShardResult:
    """The stats of one committed shard (also its marker file's content)."""

    shard: int
    rows: int
    successes: int
    failures: int
    bytes: int
    seconds: float
    status_counts: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per host: requests, successes, throttled (429/503 answers), latency_sum, mean_latency,
    the rate (requests/s, this process) and concurrency its limits had settled at."""
    started_at: str = ""
    finished_at: str = ""
    worker: str = ""
    """host:pid of the process that ran the shard (the last pass of it)."""
    flowdc_version: str = __version__
    skipped: bool = False

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("skipped")
        return json.dumps(data, indent=1)

    @classmethod
    def load(cls, output: str | Path, shard: int) -> ShardResult:
        return cls.from_json(stats_path(output, shard).read_text(encoding="utf-8"))

    @classmethod
    def from_json(cls, text: str) -> ShardResult:
        """A marker's stats, as returned for a shard that was committed already."""
        data = json.loads(text)
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        known.pop("skipped", None)
        return cls(**known, skipped=True)
