"""Download options: one pydantic model shared by the CLI, config files and the engines.

Option names and JSON keys of the original FLOW-DC stay valid. Keys may be written with dashes or
underscores; an unknown key or a bad value becomes a one-line FlowDCError.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from flowdc import __version__
from flowdc.errors import FlowDCError

InputFormat = Literal["parquet", "csv", "tsv", "txt", "json", "jsonl", "xml", "xlsx", "xls"]
OutputFormat = Literal["webdataset", "imagefolder"]
CroissantLevel = Literal["no_croissant", "basic_croissant", "comprehensive_croissant"]
ResizeMode = Literal["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"]
EncodeFormat = Literal["jpg", "png", "webp"]
# Pillow refuses images over twice its MAX_IMAGE_PIXELS outright, whatever is asked here.
PILLOW_PIXEL_LIMIT = 178_956_970

DEFAULT_USER_AGENT = f"FLOW-DC/{__version__} (image dataset downloader; python-aiohttp)"


class DownloadConfig(BaseModel):
    """Everything a download run needs. Field descriptions double as `--help` text."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # input and output
    input: str = Field(
        description="URL table to read (parquet, csv, tsv, txt, json, jsonl, xml, "
        "xlsx, xls; .gz for text formats)."
    )
    input_format: InputFormat | None = Field(
        None, description="Format of the input; default: taken from the file extension."
    )
    output: str = Field(description="Folder the dataset is written to.")
    output_format: OutputFormat = Field(
        "webdataset", description="webdataset (tar shards) or imagefolder (one folder per label)."
    )
    url: str = Field("url", description="Name of the input column holding image URLs.")
    label: str | None = Field(
        None, description="Name of the input column holding labels (required for imagefolder)."
    )
    shard_size: int = Field(10_000, ge=1, le=1_000_000, description="Input rows per shard.")
    overwrite: bool = Field(
        False, description="Delete an existing FLOW-DC output in the output folder and start over."
    )

    # downloading
    concurrent_downloads: int = Field(
        256, ge=1, le=100_000, description="Upper bound on requests in flight, over all processes."
    )
    timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Deadline in seconds for one request, redirects and body included.",
    )
    max_retry_attempts: int = Field(
        3, ge=0, le=20, description="Retries after the first attempt, for errors worth retrying."
    )
    retry_backoff_sec: float = Field(
        1.0,
        ge=0,
        le=600,
        description="Base of the exponential backoff between retries (seconds; full jitter).",
    )
    max_bytes: int = Field(
        50_000_000, ge=1, description="Largest response body accepted, in bytes."
    )
    user_agent: str = Field(
        DEFAULT_USER_AGENT, min_length=1, description="User-Agent header sent with every request."
    )
    enable_rate_limiting: bool = Field(
        True, description="Limit request rate per host with a token bucket."
    )
    rate_limit: float = Field(
        20.0,
        gt=0,
        le=1_000_000,
        description="Requests per second per host, over all processes (polite; raise it, or turn "
        "rate limiting off, for a big host such as an object store).",
    )
    rate_capacity: int = Field(
        20, ge=1, le=1_000_000, description="Burst size of the per-host token bucket."
    )

    # image processing (img2dataset's names)
    resize_mode: ResizeMode = Field(
        "no",
        description="no: keep the downloaded bytes; keep_ratio: smaller side = image_size; "
        "keep_ratio_largest: larger side = image_size; center_crop: image_size square from the "
        "middle; border: larger side = image_size, padded to a white square.",
    )
    image_size: int = Field(256, ge=1, le=65_535, description="Target size in pixels of resizing.")
    resize_only_if_bigger: bool = Field(
        False,
        description="Resize only images bigger than image_size; smaller ones stay as they are.",
    )
    encode_format: EncodeFormat | None = Field(
        None,
        description="Format of images whose pixels change (resized, rotated by EXIF) or that are "
        "in another format; default: the original's if jpg, png or webp, else png.",
    )
    encode_quality: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Quality of re-encoded jpg and webp (default 95), or png compression "
        "level 0-9 (default 6).",
    )
    min_image_size: int = Field(
        0, ge=0, description="Refuse images whose smaller side is under this many pixels."
    )
    max_aspect_ratio: float = Field(
        float("inf"),
        ge=1,
        description="Refuse images whose larger side / smaller side is over this.",
    )
    max_image_area: int = Field(
        89_478_485,
        ge=1,
        le=PILLOW_PIXEL_LIMIT,
        description="Refuse images of more pixels (width x height, from the header: a "
        "decompression bomb is never decoded).",
    )
    verify_hash: str | None = Field(
        None,
        description="Input column holding each image's expected sha256 (hex); a row whose "
        "download differs gets status hash_mismatch. Rows with no value are not checked.",
    )
    dedupe: bool = Field(
        False,
        description="Store each distinct image (same sha256) once per output; later copies get "
        "status duplicate and duplicate_of naming the stored key.",
    )

    # machine use
    processes: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=1024,
        description="Worker processes on the local engine; default: the number of cores.",
    )
    progress: bool | None = Field(
        None, description="Show a progress bar; default: only when stderr is a terminal."
    )

    # description of the result
    create_overview: bool = Field(True, description="Write overview.json when the run ends.")
    croissant: CroissantLevel = Field(
        "no_croissant", description="Croissant metadata level (not written yet by this version)."
    )
    dataset_name: str | None = Field(None, description="Dataset name for metadata.")
    dataset_description: str | None = Field(None, description="Dataset description for metadata.")
    dataset_license: str | None = Field(None, description="Dataset license for metadata.")
    dataset_creator: str | None = Field(None, description="Dataset creator for metadata.")
    dataset_version: str | None = Field(None, description="Dataset version for metadata.")
    dataset_citation: str | None = Field(None, description="How to cite the dataset.")
    dataset_keywords: str | None = Field(None, description="Comma-separated keywords.")

    @field_validator("input", "output", "url")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("label", "verify_hash")
    @classmethod
    def _label_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (omit it for no label)")
        return value

    @model_validator(mode="after")
    def _png_level(self) -> DownloadConfig:
        if self.encode_format == "png" and self.encode_quality is not None:
            if self.encode_quality > 9:
                raise ValueError(
                    f"encode_quality for png is a compression level 0-9, got {self.encode_quality}"
                )
        return self

    def effective_processes(self) -> int:
        return max(1, min(self.processes, self.concurrent_downloads))


OPTION_NAMES: tuple[str, ...] = tuple(DownloadConfig.model_fields)


def normalize_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def _unknown_key_error(key: str, source: str) -> FlowDCError:
    close = difflib.get_close_matches(normalize_key(key), OPTION_NAMES, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return FlowDCError(
        f"unknown option '{key}' in {source}: {hint}(`flowdc download --help` lists every option)"
    )


def _format_validation_error(err: ValidationError, source: str) -> FlowDCError:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "config"
    if first["type"] == "missing":
        return FlowDCError(
            f"missing required option '{where}' ({source}): give --{where} or set it in the "
            f"config file"
        )
    if first["type"] == "extra_forbidden":
        return _unknown_key_error(where, source)
    got = first.get("input")
    return FlowDCError(f"bad value for '{where}' ({source}): {first['msg']} (got {got!r})")


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON config file into normalized keys, with one-line errors for every failure."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FlowDCError(f"config file not found: {file}; check the --config path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowDCError(f"cannot read config file {file}: {exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FlowDCError(
            f"config file {file} is not valid JSON: {exc.msg} at line {exc.lineno} column "
            f"{exc.colno}; fix the file"
        ) from None
    if not isinstance(raw, dict):
        raise FlowDCError(f"config file {file} must hold a JSON object of option: value pairs")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = normalize_key(key)
        if name not in OPTION_NAMES:
            raise _unknown_key_error(key, str(file))
        values[name] = value
    return values


def build_config(
    file_values: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    source: str = "options",
) -> DownloadConfig:
    """Merge config-file values with overrides (command line or keyword arguments win)."""
    merged: dict[str, Any] = {}
    for values in (file_values or {}, overrides or {}):
        for key, value in values.items():
            name = normalize_key(key)
            if name not in OPTION_NAMES:
                raise _unknown_key_error(key, source)
            merged[name] = value
    try:
        return DownloadConfig(**merged)
    except ValidationError as err:
        raise _format_validation_error(err, source) from None
