"""croissant.json: MLCommons Croissant 1.1 metadata that `mlcroissant` validates and loads.

The distribution matches the output: each tar shard (WebDataset) as a FileObject with its sha256
and a FileSet of the images inside, or a FileSet of the images in their class folders; every
results table as a FileObject and a FileSet that reads them all. The record set `samples` has
one record per downloaded image: the image from the files, joined on its key with the results
tables for its label (and, comprehensive, every per-image fact). Facts mlcroissant 1.1.1 relies
on: `@vocab` https://schema.org/, `containedIn` in a 1.1 context, references as
{"field": {"@id": ...}}, parquet as application/x-parquet (it keeps zero-padded keys).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.config.options import DownloadConfig
from flowdc.core.files import atomic_write_text
from flowdc.core.layout import CROISSANT_FILE, results_path
from flowdc.core.licenses import NO_LICENSE
from flowdc.core.status import SUCCESS
from flowdc.core.version import __version__
from flowdc.metadata.croissant_records import (
    add_split_sets,
    classes_record_set,
    distribution,
    record_sets,
)
from flowdc.metadata.tables import committed_shards, shard_tables
from flowdc.planning.plan import Plan

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
RAI_CONFORMS_TO = "http://mlcommons.org/croissant/RAI/1.0"

# The standard 1.1 context (as mlcroissant 1.1.1 writes it): a context that does not match the
# declared version validates cleanly but reads the wrong files.
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "description": {"@container": "@language"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "name": {"@container": "@language"},
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

DEFAULT_LICENSE = (
    "Not stated: each image keeps the license of its source; see each image's url in the "
    "results tables"
)
DEFAULT_CREATOR = "Not stated (set dataset_creator)"

Warn = Callable[[str], None]


def _license(value: str | None) -> str:
    if not value:
        return DEFAULT_LICENSE
    if "://" in value or " " in value.strip():
        return value
    return f"https://spdx.org/licenses/{quote(value.strip())}.html"  # an SPDX id


def _licenses(config: DownloadConfig, overview: dict[str, Any]) -> str | list[str]:
    """--dataset_license, and the licences of the stored images when the input names them."""
    summary = overview.get("licenses") or {}
    stored = [
        licence
        for licence, counts in (summary.get("counts") or {}).items()
        if counts["images"] and licence != NO_LICENSE
    ]
    if not stored:
        return _license(config.dataset_license)
    given = [_license(config.dataset_license)] if config.dataset_license else []
    return list(dict.fromkeys(given + stored))


def _iso(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).astimezone(dt.timezone.utc).isoformat()
    except ValueError:
        return None


def _responsible_ai(
    plan: Plan, config: DownloadConfig, overview: dict[str, Any], timeframe: list[str]
) -> dict[str, Any]:
    summary = overview["download_summary"]
    failures = overview.get("error_breakdown") or {}
    reasons = ", ".join(f"{status} {count}" for status, count in failures.items()) or "none"
    preprocessing = [
        "Each response body is kept only when Pillow identifies it as an image; JPEG, PNG and "
        "BMP files must be complete.",
        f"Bodies over {config.max_bytes} bytes are dropped (status too_large).",
    ]
    if plan.output_format == "imagefolder":
        preprocessing.append(
            "Formats torchvision cannot read (GIF, ICO, ...) are converted to PNG; other "
            "images are stored byte for byte."
        )
    else:
        preprocessing.append("Images are stored byte for byte as downloaded.")
    rai: dict[str, Any] = {
        "rai:dataCollection": (
            f"Downloaded by FLOW-DC {__version__} from the URLs in {Path(plan.input).name} "
            f"({plan.total_rows} rows), with up to {config.concurrent_downloads} requests in "
            f"flight, a {config.timeout} s deadline per request, {config.max_retry_attempts} "
            "retries with exponential backoff on errors worth retrying, and "
            + (
                f"at most {config.rate_limit} requests/s per host."
                if config.enable_rate_limiting
                else "no rate limit."
            )
        ),
        "rai:dataCollectionType": ["Web Scraping"],
        "rai:dataCollectionRawData": (
            f"The URL list {Path(plan.input).name}; each image's source URL is kept in the "
            "results tables and in its sample's metadata."
        ),
        "rai:dataCollectionMissingData": (
            f"{summary['failed']} of {summary['processed']} URLs gave no image ({reasons}); "
            "every failed row keeps its status, HTTP status and error in the results tables."
        ),
        "rai:dataPreprocessingProtocol": preprocessing,
    }
    if timeframe:
        rai["rai:dataCollectionTimeFrame"] = timeframe
    return rai


def _timeframe(overview: dict[str, Any], plan: Plan) -> list[str]:
    low = high = None
    for _, table in shard_tables(plan, ["fetched_at"]):
        if "fetched_at" in table.column_names and table.num_rows:
            first, last = (v.as_py() for v in pc.min_max(table.column("fetched_at")).values())
            if first is not None:
                low = first if low is None else min(low, first)
                high = last if high is None else max(high, last)
    if low is not None and high is not None:
        return [low.isoformat(), high.isoformat()]
    starts = [_iso(run.get("started_at")) for run in overview.get("runs", [])]
    starts = [start for start in starts if start]
    return [min(starts), max(starts)] if starts else []


def _stored_formats(plan: Plan) -> list[str]:
    """The file extensions of the stored images, read shard by shard."""
    found: set[str] = set()
    for _, table in shard_tables(plan, ["status", "format"]):
        stored = table.filter(pc.equal(table.column("status"), SUCCESS)).column("format")
        found.update(ext for ext in pc.unique(stored).to_pylist() if ext)
    return sorted(found)


def build_croissant(
    plan: Plan, config: DownloadConfig, overview: dict[str, Any], level: str
) -> dict[str, Any]:
    """The Croissant document for the committed part of `plan`'s output."""
    output = Path(plan.output)
    extensions = _stored_formats(plan) or ["jpg"]  # no image yet: a FileSet still needs one
    schema = _results_schema(plan)
    name = config.dataset_name or output.resolve().name
    url = config.dataset_url or output.resolve().as_uri()
    creator = config.dataset_creator or DEFAULT_CREATOR
    version = config.dataset_version or "1.0.0"
    published = dt.datetime.now(dt.timezone.utc).date().isoformat()
    description = config.dataset_description or (
        f"{overview['download_summary']['successful']} images downloaded with FLOW-DC from "
        f"the URLs in {Path(plan.input).name}"
        + (f", labelled by the column '{plan.label_column}'." if plan.label_column else ".")
    )
    doc: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": name,
        "description": description,
        "license": _licenses(config, overview),
        "url": url,
        "creator": {"@type": "sc:Person", "name": creator},
        "datePublished": published,
        "version": version,
        "citeAs": config.dataset_citation
        or f"{creator} ({published[:4]}). {name} (version {version}). {url}",
        "distribution": distribution(plan, extensions),
        "recordSet": record_sets(plan, schema, level == "comprehensive_croissant"),
    }
    if level == "comprehensive_croissant":
        doc["conformsTo"] = [CONFORMS_TO, RAI_CONFORMS_TO]
        if config.dataset_keywords:
            doc["keywords"] = [k.strip() for k in config.dataset_keywords.split(",") if k.strip()]
        timeframe = _timeframe(overview, plan)
        if timeframe:
            doc["dateCreated"] = timeframe[0]
        doc["isBasedOn"] = {
            "@type": "sc:CreativeWork",
            "name": Path(plan.input).name,
            "description": f"The URL list this dataset was downloaded from ({plan.input_format}, "
            f"{plan.total_rows} rows; fingerprint {plan.input_fingerprint}).",
        }
        settings = {
            key: value
            for key, value in overview.get("script_inputs", {}).items()
            if key not in ("input", "output") and value is not None
        }
        doc["sdPublisher"] = {"@type": "sc:Organization", "name": f"FLOW-DC {__version__}"}
        doc["rai:dataManipulationProtocol"] = "Generated by FLOW-DC with the settings " + ", ".join(
            f"{key}={value}" for key, value in sorted(settings.items())
        )
        doc.update(_responsible_ai(plan, config, overview, timeframe))
        if overview.get("class_counts") is not None:
            doc["recordSet"].append(classes_record_set(overview["class_counts"], plan))
    add_split_sets(doc, plan)
    return doc


def _results_schema(plan: Plan) -> pa.Schema:
    shards = committed_shards(plan)
    if not shards:
        return pa.schema([("key", pa.string()), ("label", pa.string()), ("status", pa.string())])
    return pq.read_schema(results_path(plan.output, shards[0]))


def check_croissant(doc: dict[str, Any]) -> list[str]:
    """What mlcroissant does not check: a dataset needs a name, description, url and creator."""
    problems = []
    for key in ("name", "description", "url"):
        value = doc.get(key)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"croissant.json has no {key}")
    creators = doc.get("creator")
    creators = creators if isinstance(creators, list) else [creators]
    if not any(isinstance(c, dict) and str(c.get("name") or "").strip() for c in creators):
        problems.append("croissant.json has no creator with a name")
    return problems


def croissant_warnings(config: DownloadConfig, image_licenses: bool = False) -> list[str]:
    """What the user should add; no licence warning when the images' licences are stated."""
    warnings = []
    if not config.dataset_license and not image_licenses:
        warnings.append(
            "warning: no --dataset_license; croissant.json says the license is not stated"
        )
    if not config.dataset_creator:
        warnings.append(
            "warning: no --dataset_creator; croissant.json says the creator is not stated"
        )
    return warnings


def write_croissant(
    plan: Plan, config: DownloadConfig, overview: dict[str, Any], warn: Warn
) -> Path | None:
    """Write croissant.json at the output's root at the configured level, or nothing."""
    level = config.croissant_level()
    if level == "no_croissant":
        return None
    doc = build_croissant(plan, config, overview, level)
    for message in croissant_warnings(config, isinstance(doc["license"], list)):
        warn(message)
    for problem in check_croissant(doc):
        warn(f"warning: {problem}")
    path = Path(plan.output) / CROISSANT_FILE
    atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False))
    return path


def write_split_sets(plan: Plan) -> Path | None:
    """Bring croissant.json, when the output has one, up to date with the split files (after
    `flowdc split`, which has no run's options to write the whole document again)."""
    path = Path(plan.output) / CROISSANT_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    add_split_sets(doc, plan)
    atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False))
    return path
