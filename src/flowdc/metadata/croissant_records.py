"""What croissant.json says of the files and the records: the distribution (tar shards, class
folders or Parquet shards, results tables, each FileObject with its size and sha256) and the
record sets (`samples`: one per stored image joined with its results row; `results`: one per
input row; `classes`; after `flowdc split`, `split_samples`). The dataset-level description
around them is croissant.py's.

In a Parquet output the images are a column of the `*.images.parquet` files: the samples' key is
their `key` column and the image the `bytes` of their `image` column (struct<bytes, path>, which
mlcroissant reads as a dict: a jsonPath transform takes the bytes).

`split_samples` is read one split at a time with mlcroissant's filter on its `split` field
(`records("split_samples", filters={"split_samples/split": "train"})`): mlcroissant filters only a
field taken from file paths, so the split comes from the name of the split's list
(`split=train.parquet`), whose rows (key, file name, label) are joined with the images on the
file name. A new `mlcroissant.Dataset` per split: a filter changes the dataset it is applied to.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from flowdc.core.files import sha256_of
from flowdc.core.layout import (
    SPLIT_NAMES,
    SPLITS_SUMMARY,
    parquet_shard_name,
    results_path,
    split_list_name,
    tar_name,
)
from flowdc.metadata.tables import committed_shards
from flowdc.planning.plan import Plan
from flowdc.shard.writers.parquet import IMAGE_COLUMN

MEDIA_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "ico": "image/vnd.microsoft.icon",
    "ppm": "image/x-portable-pixmap",
    "pgm": "image/x-portable-graymap",
}


# Results columns a comprehensive croissant exposes per image, beside key, image and label.
_IMAGE_FACTS = ("url", "sha256", "width", "height", "format", "bytes", "http_status", "fetched_at")


PARQUET_SHARDS = "*.images.parquet"
RESULTS_TABLES = "[0-9][0-9][0-9][0-9][0-9].parquet"
"""The results tables, and never a Parquet output's image shards."""

# mlcroissant applies a joined field's transform twice (in the join, then when reading the
# field), so the pattern also matches its own output, a bare key.
_KEY_REGEX = r"^(?:.*/)?([0-9]+)(?:\.[A-Za-z0-9]+)?$"


def data_type(kind: pa.DataType) -> str:
    if pa.types.is_boolean(kind):
        return "sc:Boolean"
    if pa.types.is_integer(kind):
        return "sc:Integer"
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return "sc:Float"
    if pa.types.is_timestamp(kind):
        return "sc:DateTime"
    if pa.types.is_date(kind):
        return "sc:Date"
    return "sc:Text"


def _file_object(output: Path, name: str, media_type: str, description: str) -> dict[str, Any]:
    path = output / name
    return {
        "@type": "cr:FileObject",
        "@id": name,
        "name": name,
        "description": description,
        "contentUrl": name,
        "encodingFormat": media_type,
        "contentSize": f"{path.stat().st_size} B",
        "sha256": sha256_of(path),
    }


def _field_ids(names: list[str]) -> dict[str, str]:
    """An @id part per column: mlcroissant refuses @ids with spaces, and `/` separates the
    record set from the field; distinct, and never `image` (the samples' own field)."""
    taken = {"image"}
    ids = {}
    for name in names:
        base = re.sub(r"[^\w-]", "_", name) or "column"
        ident, n = base, 1
        while ident in taken:
            n += 1
            ident = f"{base}_{n}"
        taken.add(ident)
        ids[name] = ident
    return ids


def _field(
    record_set: str,
    name: str,
    data_type: str,
    source: dict[str, Any],
    ident: str | None = None,
) -> dict[str, Any]:
    return {
        "@type": "cr:Field",
        "@id": f"{record_set}/{ident or name}",
        "name": name,
        "dataType": data_type,
        "source": source,
    }


def _column_field(name: str, kind: pa.DataType, ident: str) -> dict[str, Any]:
    source = {"fileSet": {"@id": "results-tables"}, "extract": {"column": name}}
    return _field("results", name, data_type(kind), source, ident)


def distribution(plan: Plan, extensions: list[str]) -> list[dict[str, Any]]:
    output = Path(plan.output)
    shards = committed_shards(plan)
    files: list[dict[str, Any]] = []
    images: dict[str, Any] = {
        "@type": "cr:FileSet",
        "@id": "images",
        "name": "images",
        "encodingFormat": [MEDIA_TYPES.get(ext, f"image/{ext}") for ext in extensions],
    }
    if plan.output_format == "webdataset":
        for shard in shards:
            files.append(
                _file_object(
                    output,
                    tar_name(shard),
                    "application/x-tar",
                    f"WebDataset shard {shard}: per sample KEY.<image>, KEY.json, KEY.cls, KEY.txt",
                )
            )
        images["description"] = "The downloaded images inside the tar shards."
        images["containedIn"] = [{"@id": tar_name(shard)} for shard in shards]
        images["includes"] = [f"*.{ext}" for ext in extensions]
    elif plan.output_format == "parquet":
        for shard in shards:
            files.append(
                _file_object(
                    output,
                    parquet_shard_name(shard),
                    "application/x-parquet",
                    f"Parquet shard {shard}: one row per image (image bytes, label, facts)",
                )
            )
        images["description"] = "The Parquet shards: one row per downloaded image."
        images["encodingFormat"] = "application/x-parquet"
        images["includes"] = PARQUET_SHARDS
    else:
        images["description"] = "The downloaded images, one folder per label."
        images["includes"] = [f"*/*.{ext}" for ext in extensions]
    for shard in shards:
        files.append(
            _file_object(
                output,
                results_path(output, shard).name,
                "application/x-parquet",
                f"Results table of shard {shard}: one row per input row, failures included.",
            )
        )
    files.append(images)
    files.append(
        {
            "@type": "cr:FileSet",
            "@id": "results-tables",
            "name": "results-tables",
            "description": "Every results table (NNNNN.parquet) read as one table.",
            "encodingFormat": "application/x-parquet",
            "includes": RESULTS_TABLES,
        }
    )
    return files


def record_sets(plan: Plan, schema: pa.Schema, comprehensive: bool) -> list[dict[str, Any]]:
    result_columns = ["key", "label", "status"] if plan.label_column else ["key", "status"]
    if comprehensive:
        result_columns += ["error", *_IMAGE_FACTS, *plan.extra_columns]
    result_columns = [name for name in dict.fromkeys(result_columns) if name in schema.names]
    ids = _field_ids(result_columns)
    results = {
        "@type": "cr:RecordSet",
        "@id": "results",
        "name": "results",
        "description": "One record per input row, failures included (status, error).",
        "key": {"@id": "results/key"},
        "field": [
            _column_field(name, schema.field(name).type, ids[name]) for name in result_columns
        ],
    }
    images = {"fileSet": {"@id": "images"}}
    if plan.output_format == "parquet":
        key_source = {**images, "extract": {"column": "key"}}
        image_source = {
            **images,
            "extract": {"column": IMAGE_COLUMN},
            "transform": {"jsonPath": "bytes"},
        }
    else:
        key_source = {
            **images,
            "extract": {"fileProperty": "fullpath"},
            "transform": {"regex": _KEY_REGEX},
        }
        image_source = {**images, "extract": {"fileProperty": "content"}}
    sample_fields = [
        {
            **_field("samples", "key", "sc:Text", key_source),
            "references": {"field": {"@id": "results/key"}},
        },
        _field("samples", "image", "sc:ImageObject", image_source),
    ]
    joined = [name for name in result_columns if name not in ("key", "status", "error")]
    for name in joined:
        sample_fields.append(
            _field(
                "samples",
                name,
                data_type(schema.field(name).type),
                {"field": {"@id": f"results/{ids[name]}"}},
                ids[name],
            )
        )
    samples = {
        "@type": "cr:RecordSet",
        "@id": "samples",
        "name": "samples",
        "description": "One record per downloaded image: the image, its key and its label.",
        "key": {"@id": "samples/key"},
        "field": sample_fields,
    }
    return [samples, results]


def classes_record_set(class_counts: dict[str, int], plan: Plan) -> dict[str, Any]:
    index = plan.class_index() if plan.output_format != "imagefolder" else {}
    where = "the .cls member" if plan.output_format == "webdataset" else "the label column"
    rows = []
    for label in plan.labels or sorted(class_counts):
        row: dict[str, Any] = {"classes/label": label, "classes/images": class_counts.get(label, 0)}
        if index:
            row["classes/index"] = index[label]
        rows.append(row)
    fields = [
        {"@type": "cr:Field", "@id": "classes/label", "name": "label", "dataType": "sc:Text"},
        {"@type": "cr:Field", "@id": "classes/images", "name": "images", "dataType": "sc:Integer"},
    ]
    if index:
        fields.append(
            {"@type": "cr:Field", "@id": "classes/index", "name": "index", "dataType": "sc:Integer"}
        )
    return {
        "@type": "cr:RecordSet",
        "@id": "classes",
        "name": "classes",
        "description": "The class list with the number of downloaded images of each class"
        + (f" and its class index ({where})." if index else "."),
        "key": {"@id": "classes/label"},
        "field": fields,
        "data": rows,
    }


SPLIT_SET = "split_samples"
SPLIT_LISTS = "split-lists"
_FILE_FIELD = "samples/file"


def _split_lists(output: Path) -> list[str]:
    """The splits of a finished split (splits.json is written last)."""
    if not (output / SPLITS_SUMMARY).is_file():
        return []
    return [split for split in SPLIT_NAMES if (output / split_list_name(split)).is_file()]


def add_split_sets(doc: dict[str, Any], plan: Plan) -> None:
    """Put the split lists and the `split_samples` record set in `doc` (a croissant.json), in
    place of those of an earlier split; leave them out when the output has no split."""
    output = Path(plan.output)
    ours = {SPLIT_LISTS, *(f"split-{split}" for split in SPLIT_NAMES)}
    doc["distribution"] = [e for e in doc["distribution"] if e.get("@id") not in ours]
    doc["recordSet"] = [r for r in doc["recordSet"] if r.get("@id") != SPLIT_SET]
    for record_set in doc["recordSet"]:
        if record_set.get("@id") == "samples":
            record_set["field"] = [f for f in record_set["field"] if f.get("@id") != _FILE_FIELD]
    splits = _split_lists(output)
    if not splits:
        return
    for split in splits:
        doc["distribution"].append(
            {
                **_file_object(
                    output,
                    split_list_name(split),
                    "application/x-parquet",
                    f"The samples of the {split} split: key, file name and label.",
                ),
                "@id": f"split-{split}",
            }
        )
    doc["distribution"].append(
        {
            "@type": "cr:FileSet",
            "@id": SPLIT_LISTS,
            "name": SPLIT_LISTS,
            "description": "The list of each split's samples (split=NAME.parquet).",
            "encodingFormat": "application/x-parquet",
            "includes": "split=*.parquet",
        }
    )
    for record_set in doc["recordSet"]:
        if record_set.get("@id") == "samples":  # the file name the split lists join on
            record_set["field"].append(
                _field(
                    "samples",
                    "file",
                    "sc:Text",
                    {"fileSet": {"@id": "images"}, "extract": {"fileProperty": "filename"}},
                )
            )
    lists = {"fileSet": {"@id": SPLIT_LISTS}}
    fields = [
        _field(
            SPLIT_SET,
            "split",
            "sc:Text",
            {
                **lists,
                "extract": {"fileProperty": "fullpath"},
                "transform": {"regex": rf"^(?:.*/)?split=({'|'.join(splits)})\.parquet$"},
            },
        ),
        _field(SPLIT_SET, "key", "sc:Text", {**lists, "extract": {"column": "key"}}),
        {
            **_field(SPLIT_SET, "file", "sc:Text", {**lists, "extract": {"column": "file"}}),
            "references": {"field": {"@id": _FILE_FIELD}},
        },
        _field(SPLIT_SET, "image", "sc:ImageObject", {"field": {"@id": "samples/image"}}),
    ]
    if plan.label_column is not None:
        fields.append(
            _field(SPLIT_SET, "label", "sc:Text", {**lists, "extract": {"column": "label"}})
        )
    doc["recordSet"].append(
        {
            "@type": "cr:RecordSet",
            "@id": SPLIT_SET,
            "name": SPLIT_SET,
            "description": "One record per stored image with its split ("
            + ", ".join(splits)
            + "); read one split with the filter {'split_samples/split': NAME}.",
            "key": {"@id": f"{SPLIT_SET}/key"},
            "field": fields,
        }
    )
