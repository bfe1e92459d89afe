"""Download options: one pydantic model shared by the CLI, config files and the engines.

Option names and JSON keys of the original FLOW-DC stay valid. Keys may be written with dashes or
underscores; an unknown key or a bad value becomes a one-line FlowDCError.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flowdc.config.listen import DEFAULT_PORT, parse_listen
from flowdc.core.errors import FlowDCError
from flowdc.core.layout import is_remote
from flowdc.core.licenses import LicenseFilter, split_filter
from flowdc.core.split_ratios import parse_ratios
from flowdc.core.version import __version__

InputFormat = Literal["parquet", "csv", "tsv", "txt", "json", "jsonl", "xml", "xlsx", "xls", "dwca"]
OutputFormat = Literal["webdataset", "imagefolder", "parquet"]
CroissantLevel = Literal["no_croissant", "basic_croissant", "comprehensive_croissant"]
Engine = Literal["local", "dask", "slurm", "taskvine"]
ResizeMode = Literal["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"]
EncodeFormat = Literal["jpg", "png", "webp"]
# Pillow refuses images over twice its MAX_IMAGE_PIXELS outright, whatever is asked here.
PILLOW_PIXEL_LIMIT = 178_956_970

PROJECT_URL = "https://github.com/flowdc/flowdc"
DEFAULT_USER_AGENT = f"FLOW-DC/{__version__} (+{PROJECT_URL}; image dataset downloader)"


UNVERIFIED_TLS_WARNING = (
    "warning: --no-verify_tls: HTTPS certificates are not checked, so any server on the path "
    "can pose as an image host"
)


def user_agent_with_contact(contact: str) -> str:
    """The default User-Agent with a contact address, so a host's admin can reach the user."""
    return f"FLOW-DC/{__version__} (+{PROJECT_URL}; image dataset downloader; contact: {contact})"


class DownloadConfig(BaseModel):
    """Everything a download run needs. Field descriptions double as `--help` text."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # input and output
    input: str = Field(
        description="URL table to read (parquet, csv, tsv, txt, json, jsonl, xml, "
        "xlsx, xls; .gz for text formats), or a Darwin Core Archive (a GBIF download .zip or its "
        "folder); a path or a URL such as s3://bucket/list.parquet."
    )
    input_format: InputFormat | None = Field(
        None, description="Format of the input; default: taken from the file extension."
    )
    output: str = Field(
        description="Folder the dataset is written to, or object storage such as "
        "s3://bucket/prefix (webdataset or parquet)."
    )
    output_format: OutputFormat = Field(
        "webdataset",
        description="webdataset (tar shards), imagefolder (one folder per label) or parquet "
        "(Parquet shards that Hugging Face datasets loads as images and class labels).",
    )
    url: str = Field("url", description="Name of the input column holding image URLs.")
    label: str | None = Field(
        None, description="Name of the input column holding labels (required for imagefolder)."
    )
    shard_size: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Input rows per shard; unless given, a list too short for two shards per "
        "process is cut smaller, so that every process has work.",
    )
    overwrite: bool = Field(
        False,
        description="Delete an existing FLOW-DC output in the output folder and start over (only "
        "the files FLOW-DC made: yours are kept).",
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
    verify_tls: bool = Field(
        True,
        description="Check HTTPS certificates; --no-verify_tls accepts any certificate "
        "(self-signed, expired, another host's), with a warning, and is recorded in "
        "overview.json.",
    )
    allow_private_redirects: bool = Field(
        False,
        description="Follow redirects from a public address to a private one (loopback, "
        "10/8, 172.16/12, 192.168/16, link-local such as 169.254.169.254, fc00::/7); refused by "
        "default with status private_redirect. A URL of the list that points at a private "
        "address may redirect within private space either way.",
    )
    user_agent: str = Field(
        DEFAULT_USER_AGENT,
        min_length=1,
        description="User-Agent header sent with every request; default names FLOW-DC and its "
        "version (see --contact).",
    )
    contact: str | None = Field(
        None,
        description="Contact address (e-mail or URL) added to the default User-Agent, so a "
        "host's admin can reach you instead of blocking you.",
    )
    ignore_opt_out: bool = Field(
        False,
        description="Download images whose X-Robots-Tag says noai, noimageai, noindex or "
        "noimageindex (default: skip them with status opted_out).",
    )
    retry_failed: bool = Field(
        False,
        description="On an existing output: download again only the rows whose final status was "
        "a failure worth retrying (timeouts, resets, 429, 5xx), and merge them in.",
    )
    host_failure_threshold: int = Field(
        5,
        ge=0,
        le=10_000,
        description="Connection failures or timeouts in a row that mark a host down: its "
        "remaining URLs fail at once as host_unavailable (retryable) instead of each waiting out "
        "timeouts; a name that does not resolve marks it down at once. 0 turns this off.",
    )
    host_cooldown: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="Seconds a host marked down waits before one request probes it again; it is "
        "reopened if it answers, else waits twice as long (up to 8 times).",
    )
    enable_rate_limiting: bool = Field(
        True,
        description="Limit each host's request rate with a token bucket (Retry-After is obeyed "
        "either way).",
    )
    adaptive_rate_limit: bool = Field(
        True,
        description="Adapt each host's rate by AIMD: grow while it answers well, cut on 429, 503 "
        "and timeouts (off: a fixed rate_limit).",
    )
    rate_limit: float = Field(
        2.0,
        gt=0,
        le=1_000_000,
        description="Starting requests per second per host, over all processes; it doubles each "
        "second while the host answers well (the fixed rate when adaptive_rate_limit is off).",
    )
    min_rate_limit: float = Field(
        0.5, gt=0, le=1_000_000, description="Floor of the adaptive per-host rate (requests/s)."
    )
    max_rate_limit: float = Field(
        500.0,
        gt=0,
        le=1_000_000,
        description="Ceiling of the adaptive per-host rate (requests/s); raise it for a big "
        "host such as an object store.",
    )
    rate_capacity: int = Field(
        20,
        ge=1,
        le=1_000_000,
        description="Burst size of a fixed per-host rate (at most one second's worth); an "
        "adaptive rate is paced evenly, with no burst.",
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
    license_col: str | None = Field(
        None,
        description="Input column holding each image's licence, for attribution.csv, the "
        "licence summary and --license_filter; default: the column license when the input "
        "has one (a Darwin Core Archive does).",
    )
    license_filter: str | None = Field(
        None,
        description="Download only rows whose licence is in this list, such as CC0,CC-BY "
        "(names like CC-BY-NC-4.0 or licence URLs, any case; no version means any version; "
        "CC-BY does not match CC-BY-NC). Other rows and rows with no licence get status "
        "license_filtered.",
    )
    dedupe: bool = Field(
        False,
        description="Store each distinct image (same sha256) once per output; later copies get "
        "status duplicate and duplicate_of naming the stored key.",
    )

    # rows per class
    max_per_class: int | None = Field(
        None,
        ge=1,
        description="Request at most this many rows of each label (a seeded sample, the same "
        "for the same list and --seed); the others get status class_capped.",
    )
    min_per_class: int | None = Field(
        None,
        ge=1,
        description="Leave out labels with fewer rows than this (status class_too_small); they "
        "get no class index and no folder.",
    )
    seed: int = Field(
        0, ge=0, description="Seed of the --max_per_class sample: another seed, other rows."
    )

    # machine use
    processes: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=1024,
        description="Worker processes on the local engine; default: the number of cores.",
    )
    max_memory: int | None = Field(
        None,
        ge=1,
        description="Bytes of response bodies each worker process holds at once, from the "
        "first byte read until the sample is written; more waits (a body over it is fetched "
        "alone). Default: a quarter of the RAM shared among the cores, 256 MiB to 1 GiB a "
        "process.",
    )
    progress: bool | None = Field(
        None,
        description="Show a progress bar; default: when stderr is a terminal, and in Jupyter "
        "(otherwise a line every 30 s).",
    )
    min_success_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Lowest share of the requested rows (0 to 1) that must give an image: a "
        "finished run below it makes `flowdc download` exit with status 4, for a pipeline to "
        "stop on. The Python API's result has the numbers.",
    )

    # distributed runs (docs/distributed.md)
    engine: Engine = Field(
        "local",
        description="local: worker processes on this machine; dask: a Dask cluster (--listen, "
        "--scheduler, or a local one on 127.0.0.1); slurm: Dask workers as SLURM jobs; taskvine: "
        "a TaskVine manager (--port) whose workers may share no storage with it.",
    )
    listen: str | None = Field(
        None,
        description="Host the Dask scheduler in this process on HOST:PORT (workers connect with "
        "`flowdc worker tcp://HOST:PORT`); use 0.0.0.0 only on a trusted network or with TLS.",
    )
    scheduler: str | None = Field(
        None, description="Address of a Dask scheduler that already runs (tcp:// or tls://)."
    )
    workers: int | None = Field(
        None, ge=1, le=10_000, description="SLURM jobs to start (--engine slurm), one worker each."
    )
    slurm_options: dict[str, Any] | None = Field(
        None,
        description="JSON object of dask-jobqueue SLURMCluster options (queue, account, walltime, "
        "cores, memory, job_extra_directives, ...).",
    )
    port: int | None = Field(
        None,
        ge=0,
        le=65_535,
        description="Port the TaskVine manager listens on, on every interface (--engine taskvine; "
        "default 9123; 0: any free port); workers join with `flowdc worker --engine taskvine "
        "HOST:PORT`.",
    )
    manager_name: str | None = Field(
        None,
        min_length=1,
        description="Name the TaskVine manager advertises to the catalog server (--catalog), so "
        "that workers and vine_factory find it by name instead of HOST:PORT.",
    )
    catalog: str | None = Field(
        None,
        min_length=1,
        description="Catalog server(s) for --manager_name, HOST:PORT[,HOST:PORT]; default: "
        "TaskVine's public catalog.cse.nd.edu:9097.",
    )
    password: str | None = Field(
        None,
        min_length=1,
        description="File holding a secret that TaskVine workers must present to join (make one "
        "with `openssl rand -hex 32`; give workers the same file with --password).",
    )
    ssl_key: str | None = Field(
        None, min_length=1, description="PEM key of the TaskVine manager's TLS (with --ssl_cert)."
    )
    ssl_cert: str | None = Field(
        None,
        min_length=1,
        description="PEM certificate of the TaskVine manager's TLS (with --ssl_key); workers "
        "join with --ssl.",
    )
    shared_output: bool = Field(
        False,
        description="(--engine taskvine) The output folder is on storage every worker mounts at "
        "the same path: workers commit shards there themselves instead of sending them back to "
        "the manager. An s3:// output is always shared.",
    )
    storage_options: dict[str, Any] | None = Field(
        None,
        exclude=True,  # may hold credentials: never written to overview.json
        description="JSON object of fsspec options for s3:// and other URLs (endpoint_url, key, "
        "secret, ...); default: the usual AWS_* environment variables.",
    )

    # description of the result
    create_overview: bool = Field(True, description="Write overview.json when the run ends.")
    croissant: CroissantLevel | None = Field(
        None,
        description="croissant.json (MLCommons Croissant 1.1) at the output's root: "
        "no_croissant, basic_croissant or comprehensive_croissant; default: basic_croissant "
        "when a dataset_* option is given, else no_croissant.",
    )
    dataset_name: str | None = Field(None, description="Dataset name for metadata.")
    dataset_description: str | None = Field(None, description="Dataset description for metadata.")
    dataset_license: str | None = Field(
        None, description="Dataset license for metadata: an SPDX id (CC-BY-4.0) or a URL."
    )
    dataset_creator: str | None = Field(None, description="Dataset creator for metadata.")
    dataset_url: str | None = Field(
        None, description="Web page of the dataset for metadata; default: the output folder."
    )
    dataset_version: str | None = Field(
        None, description="Dataset version for metadata, as MAJOR.MINOR.PATCH (default: 1.0.0)."
    )
    dataset_citation: str | None = Field(None, description="How to cite the dataset.")
    dataset_keywords: str | None = Field(None, description="Comma-separated keywords.")

    # training splits (`flowdc split`, run when the download ends)
    split: str | None = Field(
        None,
        description="When the run ends, split the stored samples into train, validation and "
        "test with these shares, such as 0.8,0.1,0.1 (two values: train,test), as "
        "`flowdc split --ratios` does.",
    )
    split_by: str | None = Field(
        None, description="Column to stratify the split by; default: the --label column."
    )
    split_group: str | None = Field(
        None,
        description="Column(s), comma-separated, whose equal values must share a split (an "
        "occurrence, an observer, a site); identical images always do.",
    )
    split_seed: int = Field(0, description="Seed of the split: the same seed, the same split.")

    @field_validator("input", "output", "url")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("input", "output", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        """A pathlib.Path as its text, and ~ as a shell would expand it: a config file or a
        Python call does not go through one, and a folder named '~' invites an `rm -rf ~`."""
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str) and value.startswith("~"):
            value = os.path.expanduser(value)
        return value

    @field_validator("label", "verify_hash", "license_col")
    @classmethod
    def _label_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (omit it for no label)")
        return value

    @field_validator("license_filter")
    @classmethod
    def _known_licenses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                LicenseFilter(split_filter(value))
            except FlowDCError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("slurm_options", "storage_options", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        """The command line gives these as JSON text."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg})") from None
        if value is not None and not isinstance(value, dict):
            raise ValueError("must be a JSON object of option: value pairs")
        return value

    @model_validator(mode="after")
    def _consistent_limits(self) -> DownloadConfig:
        if self.min_rate_limit > self.max_rate_limit:
            raise ValueError(
                f"min_rate_limit {self.min_rate_limit:g} is above max_rate_limit "
                f"{self.max_rate_limit:g}; lower the floor or raise the ceiling"
            )
        if self.contact is not None and self.user_agent == DEFAULT_USER_AGENT:
            object.__setattr__(self, "user_agent", user_agent_with_contact(self.contact))
        return self

    @field_validator("dataset_version")
    @classmethod
    def _semantic_version(cls, value: str | None) -> str | None:
        """Croissant asks for MAJOR.MINOR.PATCH; 1 and 1.2 (older configs) are padded."""
        if value is None:
            return None
        if not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*)){0,2}", value.strip()):
            raise ValueError("must be MAJOR.MINOR.PATCH, such as 1.0.0 (Croissant asks for it)")
        parts = value.strip().split(".")
        return ".".join(parts + ["0"] * (3 - len(parts)))

    def croissant_level(self) -> str:
        """The Croissant level asked for, or the default: basic when any dataset_* is set."""
        if self.croissant is not None:
            return self.croissant
        described = any(
            getattr(self, name) is not None
            for name in type(self).model_fields
            if name.startswith("dataset_")
        )
        return "basic_croissant" if described else "no_croissant"

    @model_validator(mode="after")
    def _png_level(self) -> DownloadConfig:
        if self.encode_format == "png" and self.encode_quality is not None:
            if self.encode_quality > 9:
                raise ValueError(
                    f"encode_quality for png is a compression level 0-9, got {self.encode_quality}"
                )
        return self

    @model_validator(mode="after")
    def _parquet_image_size(self) -> DownloadConfig:
        """A Parquet image is one value of a binary column (datasets' Image): under 2 GiB."""
        if self.output_format == "parquet" and self.max_bytes >= 2**31:
            raise ValueError(
                f"--output_format parquet stores each image as one binary value, under 2 GiB: "
                f"set --max_bytes below {2**31}, or use --output_format webdataset"
            )
        return self

    @model_validator(mode="after")
    def _engine_options(self) -> DownloadConfig:
        """Options that only one engine reads are refused elsewhere, not silently ignored."""
        given = [
            f"--{name}"
            for name in ("listen", "scheduler", "workers", "slurm_options")
            if getattr(self, name) is not None
        ]
        if self.engine == "local" and given:
            raise ValueError(
                f"{' and '.join(given)} need --engine dask (or slurm); the local engine runs on "
                f"this machine only"
            )
        if self.listen and self.scheduler:
            raise ValueError(
                "give --listen (host a scheduler here) or --scheduler (use one that runs), not both"
            )
        if self.engine == "dask" and (self.workers or self.slurm_options):
            raise ValueError(
                "--workers and --slurm_options are for --engine slurm; with --engine dask, start "
                "workers with `flowdc worker ADDRESS`"
            )
        if self.engine == "slurm" and self.scheduler:
            raise ValueError(
                "--engine slurm starts its own scheduler: use --listen, not --scheduler"
            )
        if self.engine == "slurm" and self.listen is None:
            raise ValueError(
                "--engine slurm needs --listen HOST:PORT on an address the compute nodes reach, "
                f"e.g. --listen 0.0.0.0:{DEFAULT_PORT} (see docs/distributed.md for TLS)"
            )
        if self.listen is not None:
            try:
                parse_listen(self.listen)
            except FlowDCError as exc:
                raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _class_options(self) -> DownloadConfig:
        if (self.max_per_class or self.min_per_class) and self.label is None:
            raise ValueError(
                "--max_per_class and --min_per_class count rows per label; give --label COLUMN"
            )
        if self.max_per_class and self.min_per_class and self.min_per_class > self.max_per_class:
            raise ValueError(
                f"min_per_class {self.min_per_class} is above max_per_class "
                f"{self.max_per_class}: no class could be kept; lower the one or raise the other"
            )
        return self

    @model_validator(mode="after")
    def _taskvine_options(self) -> DownloadConfig:
        """TaskVine's options need its engine; its gathered mode (workers send shards back) has
        no shared dedupe index nor the committed shards a retry pass rebuilds from."""
        given = [
            f"--{name}"
            for name in ("port", "manager_name", "catalog", "password", "ssl_key", "ssl_cert")
            if getattr(self, name) is not None
        ] + (["--shared_output"] if self.shared_output else [])
        if self.engine != "taskvine":
            if given:
                raise ValueError(f"{' and '.join(given)} need --engine taskvine")
            return self
        dask_only = [
            f"--{name}"
            for name in ("listen", "scheduler", "workers", "slurm_options")
            if getattr(self, name) is not None
        ]
        if dask_only:
            raise ValueError(
                f"{' and '.join(dask_only)} are Dask's; --engine taskvine listens on --port and "
                f"its workers join with `flowdc worker --engine taskvine HOST:PORT`"
            )
        if (self.ssl_key is None) != (self.ssl_cert is None):
            raise ValueError("--ssl_key and --ssl_cert go together: give both, or neither")
        if self.catalog is not None and self.manager_name is None:
            raise ValueError("--catalog is where --manager_name is advertised: give --manager_name")
        gathered = not self.shared_output and not is_remote(self.output)
        for name, what in (("dedupe", "index"), ("retry_failed", "retry pass")):
            if gathered and getattr(self, name):
                raise ValueError(
                    f"--{name} with --engine taskvine needs an output every worker sees "
                    f"(--shared_output, or s3://): workers that send shards back share no {what}; "
                    f"on the manager's machine, --engine local does it"
                )
        return self

    @model_validator(mode="after")
    def _retry_options(self) -> DownloadConfig:
        if self.retry_failed and self.overwrite:
            raise ValueError(
                "--retry_failed and --overwrite contradict each other: retrying keeps the "
                "dataset, overwriting deletes it; give one of them"
            )
        if self.retry_failed and is_remote(self.output):
            raise ValueError(
                "--retry_failed works on a local or shared-folder output only, not on object "
                "storage yet; copy the output to a folder to retry its failures"
            )
        return self

    @model_validator(mode="after")
    def _split_options(self) -> DownloadConfig:
        if self.split is None:
            given = [f"--{n}" for n in ("split_by", "split_group") if getattr(self, n) is not None]
            if given or self.split_seed:
                raise ValueError(
                    f"{' and '.join(given or ['--split_seed'])} need --split RATIOS, such as "
                    f"--split 0.8,0.1,0.1"
                )
            return self
        try:
            parse_ratios(self.split)
        except FlowDCError as exc:
            raise ValueError(str(exc)) from None
        if is_remote(self.output):
            raise ValueError(
                "--split works on a local or shared-folder output only, not on object storage "
                "yet; copy the output to a folder and run flowdc split there"
            )
        return self

    def split_columns(self) -> list[str]:
        """The input columns --split_by and --split_group name."""
        groups = [name.strip() for name in (self.split_group or "").split(",") if name.strip()]
        return ([self.split_by] if self.split_by else []) + groups

    def effective_processes(self) -> int:
        return max(1, min(self.processes, self.concurrent_downloads))


OPTION_NAMES: tuple[str, ...] = tuple(DownloadConfig.model_fields)
