"""A row's results record and its sample's JSON: what a shard says of each input row."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import pyarrow as pa
from yarl import URL

from flowdc.core.results import RESULT_FIELDS
from flowdc.shard.fetch.http import FetchResult

SAMPLE_FACTS = (
    "key",
    "url",
    "label",
    "class_index",
    "status",
    "sha256",
    "width",
    "height",
    "format",
    "bytes",
    "original_width",
    "original_height",
    "http_status",
    "content_type",
    "attempts",
    "elapsed_seconds",
    "final_url",
)
"""The results facts a sample's KEY.json (or its Parquet row) carries, beside the input's extra
columns."""
SAMPLE_FACT_FIELDS = [pa.field(name, dict(RESULT_FIELDS)[name]) for name in SAMPLE_FACTS]
"""The facts with their results-table types."""


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


_META_ENCODER = json.JSONEncoder(ensure_ascii=False, default=_json_default, allow_nan=False)
"""One encoder for every sample's JSON (json.dumps with options builds one per call)."""


def finite(value: Any) -> Any:
    """NaN and infinities become null: strict JSON readers (jq, JavaScript) refuse them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def _without_credentials(url: str | None) -> str | None:
    if url is None:
        return None
    parsed = URL(url)
    return str(parsed.with_user(None)) if parsed.user or parsed.password else url


def result_record(
    shard: int,
    row: dict[str, Any],
    host: str | None,
    fetched: FetchResult,
    class_index: dict[str, int] | None,
    extra_names: list[str],
) -> dict[str, Any]:
    """The row's results record as the fetch left it (the stored image's facts come later)."""
    label = row.get("label")
    url = row["url"]
    record: dict[str, Any] = {
        "key": row["key"],
        "shard": shard,
        "row": row["row"],
        "url": url,
        "label": label,
        "class_index": class_index.get(label) if class_index and label else None,
        "status": fetched.status,
        "error": fetched.error,
        "http_status": fetched.http_status,
        "attempts": fetched.attempts,
        "bytes": None,
        "sha256": None,
        "stored_sha256": None,
        "width": None,
        "height": None,
        "format": None,
        "content_type": fetched.content_type,
        "path": None,
        "elapsed_seconds": round(fetched.elapsed_seconds, 4),
        "host": host,
        "retryable": fetched.retryable,
        "final_url": _without_credentials(fetched.final_url) if fetched.final_url != url else None,
        "fetched_at": dt.datetime.now(dt.timezone.utc),
        "original_width": None,
        "original_height": None,
        "duplicate_of": None,
        "same_url_as": None,
    }
    for name in extra_names:
        record[name] = row.get(name)
    return record


def sample_meta(
    record: dict[str, Any], row: dict[str, Any], extra_names: list[str]
) -> dict[str, Any]:
    """What a sample says of itself: its results facts and the input's extra columns."""
    meta = {name: record[name] for name in SAMPLE_FACTS}
    meta.update({name: row.get(name) for name in extra_names})
    return meta


def sample_meta_json(meta: dict[str, Any]) -> bytes:
    """A sample's KEY.json."""
    return _META_ENCODER.encode(finite(meta)).encode("utf-8")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
