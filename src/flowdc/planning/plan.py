"""Planning: stream the input once into a plan of shards with stable keys.

The plan is one parquet file at the output's root whose row group N holds shard N, so a worker on
any machine that sees the output reads exactly its shard. A JSON file beside it records what the
plan was made from (input fingerprint, columns, labels); it is written last, so a plan without it
is incomplete and is made again. Rows the run will not request (a class's sample left them out)
or that repeat an earlier row's URL are found once every row is seen (planned_rows.py, which
spills to a temporary folder beside the plan); the plan table is then written again with two
more columns saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FlowDCError
from flowdc.core.files import atomic_write_text
from flowdc.core.labels import folder_names
from flowdc.core.layout import (
    LABELS_FILE,
    LOCK_FILE,
    PLAN_META,
    PLAN_TABLE,
    TEMP_MARK,
    shard_name,
    temp_name,
)
from flowdc.planning.inputs import InputTable
from flowdc.planning.license_columns import license_column, row_filter
from flowdc.planning.planned_rows import RowChoices, RowPlanner, sampling_summary
from flowdc.planning.stored_options import changed_options, stored_options

MAX_CATEGORICAL_LABELS = 1_000_000
SHARDS_PER_PROCESS = 2
"""A list too short for this many default-sized shards per process is cut into smaller ones."""
SIZING_ROWS = 250_000
"""At most this many rows are held while planning to size the shards of a short list."""
PLAN_VERSION = 1

# Columns FLOW-DC adds to every results row; input columns with these names get an input_ prefix.
RESERVED_COLUMNS = (
    "key",
    "shard",
    "row",
    "url",
    "label",
    "status",
    "error",
    "http_status",
    "attempts",
    "bytes",
    "sha256",
    "width",
    "height",
    "format",
    "content_type",
    "path",
    "elapsed_seconds",
    "host",
    "final_url",
    "class_index",
    "fetched_at",
    "retryable",
    "original_width",
    "original_height",
    "duplicate_of",
    "stored_sha256",
    "same_url_as",
    "planned_status",
    "same_url_position",
)


@dataclass
class Plan:
    """What the shards were cut from and how; equal plans mean a run can resume."""

    output: str
    input: str
    input_format: str
    input_fingerprint: str
    url_column: str
    label_column: str | None
    shard_size: int
    output_format: str
    total_rows: int
    shard_count: int
    key_width: int
    extra_columns: dict[str, str] = field(default_factory=dict)  # plan column -> input column
    # Distinct labels when categorical, in class-index order: numeric or text order for
    # webdataset and parquet, folder-name order for imagefolder (the order torchvision and
    # datasets use).
    labels: list[str] | None = None
    label_counts: list[int] | None = None
    label_folders: dict[str, str] | None = None
    unlabeled_rows: int = 0
    version: int = PLAN_VERSION
    settings: dict[str, Any] | None = None  # stored_options.py; None in plans made before it
    repeated_url_rows: int = 0
    """Rows whose URL an earlier requested row has (their same_url_position is set)."""
    class_sampling: dict[str, Any] | None = None
    """--max_per_class / --min_per_class: the options, the class distribution before and after,
    the rows left out; None without them."""
    kept_label_counts: list[int] | None = None
    """Rows each of `labels` will request, after the class sampling (None without it)."""

    def __post_init__(self) -> None:
        self._parquet: pq.ParquetFile | None = None

    @property
    def table_path(self) -> Path:
        return Path(self.output) / PLAN_TABLE

    def class_index(self) -> dict[str, int]:
        return {label: index for index, label in enumerate(self.labels or [])}

    def shard_rows(self, shard: int) -> int:
        """Rows in `shard`: shard_size, but for the last shard."""
        if shard < self.shard_count - 1:
            return self.shard_size
        return self.total_rows - self.shard_size * (self.shard_count - 1)

    def key_at(self, position: int) -> str:
        """The key of the row at `position` (0-based) in the list."""
        shard, row = divmod(position, self.shard_size)
        return f"{shard_name(shard)}{row:0{self.key_width}d}"

    def read_shard(self, shard: int) -> pa.Table:
        # One open file per plan: its footer lists every row group, and parsing it per shard
        # made runs with many shards quadratic.
        if self._parquet is None:
            self._parquet = pq.ParquetFile(self.table_path)
        return self._parquet.read_row_group(shard)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def load(cls, output: str | Path) -> Plan | None:
        meta = Path(output) / PLAN_META
        if not meta.exists() or not (Path(output) / PLAN_TABLE).exists():
            return None
        data = json.loads(meta.read_text(encoding="utf-8"))
        data["output"] = str(output)
        return cls(**data)


def _archive_files(folder: Path) -> Iterator[Path]:
    """The files of an archive folder, but for those of a FLOW-DC output inside it (an output
    put in the unzipped download's folder): they change with every run, so no run could resume."""
    for root, folders, files in os.walk(folder):
        if LOCK_FILE in files or PLAN_META in files:
            folders.clear()
            continue
        folders.sort()
        yield from (Path(root) / name for name in files)


def fingerprint(path: Path) -> str:
    """Size plus hashes of the first and last MiB: cheap, and changes when the list changes."""
    if path.is_dir():  # a Darwin Core Archive folder: its files' names and fingerprints
        digest = hashlib.sha256()
        for file in sorted(_archive_files(path)):
            digest.update(f"{file.relative_to(path)}:{fingerprint(file)}".encode())
        return digest.hexdigest()
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def check_plan_matches(plan: Plan, config: DownloadConfig, table: InputTable) -> None:
    """Refuse to resume an output that was planned from another input or with other settings."""
    wanted = {
        "input fingerprint": fingerprint(table.path),
        "url column": config.url,
        "label column": config.label,
        "shard_size": config.shard_size
        if "shard_size" in config.model_fields_set
        else plan.shard_size,  # sized for the list when planned: the plan's size holds
        "output_format": config.output_format,
    }
    have = {
        "input fingerprint": plan.input_fingerprint,
        "url column": plan.url_column,
        "label column": plan.label_column,
        "shard_size": plan.shard_size,
        "output_format": plan.output_format,
    }
    changed = [name for name in wanted if wanted[name] != have[name]]
    if changed or changed_options(plan.settings, config):
        detail = ", ".join(
            [
                f"{name}"
                + ("" if name == "input fingerprint" else f" {have[name]!r} -> {wanted[name]!r}")
                for name in changed
            ]
            + changed_options(plan.settings, config)
        )
        raise FlowDCError(
            f"{config.output} holds a run planned differently ({detail}); rerun with the same "
            f"input and options to resume, add --overwrite to start over, or pick a new --output"
        )


def _plan_columns(names: list[str], url: str, label: str | None) -> dict[str, str]:
    extras: dict[str, str] = {}
    for name in names:
        if name in (url, label):
            continue
        plan_name = f"input_{name}" if name in RESERVED_COLUMNS else name
        while plan_name in extras or plan_name in RESERVED_COLUMNS:
            plan_name = f"input_{plan_name}"
        extras[plan_name] = name
    return extras


def _as_string(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    if pa.types.is_dictionary(column.type):
        return column.cast(pa.string())
    try:
        return column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())


def check_columns(config: DownloadConfig, table: InputTable) -> None:
    """Fail early, before anything is written, when the named columns are not in the input."""
    names = table.column_names()
    wanted = (config.url, config.label, config.verify_hash)
    missing = [c for c in wanted if c is not None and c not in names]
    if missing:
        which = " and ".join(f"'{c}'" for c in missing)
        raise FlowDCError(
            f"column {which} not found in {table.path}; it has: {', '.join(names) or '(none)'}; "
            f"set --url / --label / --verify_hash to the right column names"
        )
    unknown = [c for c in config.split_columns() if c not in names and c not in RESERVED_COLUMNS]
    if unknown:
        raise FlowDCError(
            f"--split_by / --split_group: column '{unknown[0]}' is neither in {table.path} nor a "
            f"results column; it has: {', '.join(names) or '(none)'}"
        )
    license_column(config, names, table.path)  # --license_col / --license_filter need one
    if config.output_format == "imagefolder" and config.label is None:
        raise FlowDCError(
            "imagefolder needs a label column to name its folders; give --label COLUMN or use "
            "--output_format webdataset"
        )


def _target_shards(config: DownloadConfig) -> int:
    """Shards a short list is cut into: SHARDS_PER_PROCESS for each process, so that a process
    whose shard ends early takes another (one process runs its shards together anyway)."""
    processes = config.effective_processes()
    return 1 if processes == 1 else SHARDS_PER_PROCESS * processes


def _sizing_rows(config: DownloadConfig) -> int:
    """Rows read before the shard size is fixed: a list shorter than this is split evenly."""
    return min(config.shard_size * _target_shards(config), SIZING_ROWS)


def shard_size_for(config: DownloadConfig, rows: int) -> int:
    """Rows per shard for a list of `rows` rows (or more): `--shard_size` when given; else at most
    its default, and small enough that every process gets SHARDS_PER_PROCESS shards. A
    3,000-row list was one shard, so one process, however many cores the machine had."""
    if "shard_size" in config.model_fields_set:
        return config.shard_size
    shards = _target_shards(config)
    return min(config.shard_size, max(1, -(-min(rows, _sizing_rows(config)) // shards)))


def make_plan(config: DownloadConfig, table: InputTable, source: str | None = None) -> Plan:
    """Stream the input into the plan table, one row group per shard, and write its JSON last.

    `source` is the input as the user named it when `table` reads a local copy (object storage).
    """
    output = Path(config.output)
    check_columns(config, table)
    names = table.column_names()
    extras = _plan_columns(names, config.url, config.label)
    # fixed once _sizing_rows rows are read, or the input ends (shard_size_for)
    shard_size: int | None = None
    key_width = 0

    label_counts: dict[str, int] | None = {} if config.label else None
    tmp_path = output / temp_name(PLAN_TABLE)
    spill = output / temp_name(PLAN_TABLE)  # planned_rows.py's files, gone when planning ends
    writer: pq.ParquetWriter | None = None
    pending: list[pa.Table] = []
    pending_rows = 0
    total = 0
    shard = 0
    unlabeled = 0
    for stale in output.glob(f".{PLAN_TABLE}{TEMP_MARK}*"):  # from a run killed while planning
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    licence = row_filter(extras, config)
    licence_input = extras[licence[0]] if licence is not None else None
    sampled = config.max_per_class is not None or config.min_per_class is not None

    def decide(rows: int) -> int:
        nonlocal key_width
        size = shard_size_for(config, rows)
        key_width = len(str(size - 1))
        return size

    def flush(rows: int) -> None:
        nonlocal writer, pending, pending_rows, shard
        chunk = pa.concat_tables(pending).combine_chunks()
        head, rest = chunk.slice(0, rows), chunk.slice(rows)
        local = pa.array(range(rows), pa.int32())
        keys = pa.array([f"{shard_name(shard)}{i:0{key_width}d}" for i in range(rows)], pa.string())
        head = (
            head.add_column(0, "key", keys)
            .add_column(1, "shard", pa.repeat(pa.scalar(shard, pa.int32()), rows))
            .add_column(2, "row", local)
        )
        if writer is None:
            writer = pq.ParquetWriter(
                tmp_path, head.schema, compression="zstd", write_statistics=False
            )
        writer.write_table(head, row_group_size=rows)
        shard += 1
        pending = [rest] if rest.num_rows else []
        pending_rows = rest.num_rows

    spill.mkdir()
    try:
        planner = RowPlanner(config, extras, spill)
        for batch in table.batches():
            if batch.num_rows == 0:
                continue
            columns = {"url": _as_string(batch.column(config.url))}
            labels: list[str | None] | None = None
            if config.label:
                # 'Rosa canina ' is 'Rosa canina': spaces around a label never make a class
                label_array = pc.utf8_trim_whitespace(_as_string(batch.column(config.label)))
                columns["label"] = label_array
                labels = [normalize_label(value) for value in label_array.to_pylist()]
                for label in labels:
                    if label is None:
                        unlabeled += 1
                    elif label_counts is not None:
                        label_counts[label] = label_counts.get(label, 0) + 1
                if label_counts is not None and len(label_counts) > MAX_CATEGORICAL_LABELS:
                    label_counts = None
                if label_counts is None and sampled:
                    raise FlowDCError(
                        f"--max_per_class / --min_per_class: the label column '{config.label}' "
                        f"has more than {MAX_CATEGORICAL_LABELS:,} distinct values, too many to "
                        f"count rows per class; leave the options out"
                    )
            planner.add(
                columns["url"],
                labels,
                batch.column(licence_input).to_pylist() if licence_input is not None else None,
            )
            for plan_name, input_name in extras.items():
                columns[plan_name] = batch.column(input_name)
            pending.append(pa.table(columns))
            pending_rows += batch.num_rows
            total += batch.num_rows
            if shard_size is None and total >= _sizing_rows(config):
                shard_size = decide(total)
            while shard_size is not None and pending_rows >= shard_size:
                flush(shard_size)
        if shard_size is None:
            shard_size = decide(total)
        while pending_rows >= shard_size:
            flush(shard_size)
        if pending_rows:
            flush(pending_rows)
        if writer is None:
            raise FlowDCError(f"{table.path} has no rows; nothing to download")
        writer.close()
        choices = planner.finish(shard_size)
        if choices.changes_plan:
            _add_row_choices(tmp_path, choices, shard_size)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp_path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(spill, ignore_errors=True)

    if config.output_format == "imagefolder" and label_counts is None:
        raise FlowDCError(
            f"the label column '{config.label}' has more than {MAX_CATEGORICAL_LABELS:,} distinct "
            f"values, too many for one folder each; use --output_format webdataset"
        )
    class_sampling = None
    kept = choices.kept_rows()
    if sampled and label_counts is not None:
        too_small = choices.too_small_labels()
        class_sampling = _sampling_record(config, label_counts, kept, choices)
        label_counts = {label: n for label, n in label_counts.items() if label not in too_small}
    labels = _class_order(label_counts) if label_counts is not None else None
    folders = (
        folder_names(labels)
        if labels is not None and config.output_format == "imagefolder"
        else None
    )
    if labels is not None and folders is not None:
        labels.sort(key=lambda label: folders[label])
    plan = Plan(
        output=str(output),
        input=source or str(table.path.resolve()),
        input_format=table.format,
        input_fingerprint=fingerprint(table.path),
        url_column=config.url,
        label_column=config.label,
        shard_size=shard_size,
        output_format=config.output_format,
        total_rows=total,
        shard_count=shard,
        key_width=key_width,
        extra_columns=extras,
        labels=labels,
        label_counts=[label_counts[label] for label in labels] if labels is not None else None,
        label_folders=folders,
        unlabeled_rows=unlabeled,
        settings=stored_options(config),
        repeated_url_rows=choices.pairs.count,
        class_sampling=class_sampling,
        kept_label_counts=[kept.get(label, 0) for label in labels]
        if class_sampling is not None and labels is not None
        else None,
    )
    os.replace(tmp_path, plan.table_path)
    if labels is not None and config.output_format != "imagefolder":
        write_labels_file(plan)
    atomic_write_text(output / PLAN_META, plan.to_json())
    return plan


def _add_row_choices(path: Path, choices: RowChoices, shard_size: int) -> None:
    """Write the plan table at `path` again with its planned_status and same_url_position
    columns."""
    source = pq.ParquetFile(path)
    rewritten = path.with_name(temp_name(PLAN_TABLE))
    writer: pq.ParquetWriter | None = None
    try:
        for shard in range(source.num_row_groups):
            group = source.read_row_group(shard)
            status, owners = choices.columns(shard * shard_size, group.num_rows)
            group = group.append_column("planned_status", status).append_column(
                "same_url_position", owners
            )
            if writer is None:
                writer = pq.ParquetWriter(
                    rewritten, group.schema, compression="zstd", write_statistics=False
                )
            writer.write_table(group, row_group_size=group.num_rows)
        assert writer is not None
        writer.close()
    except BaseException:
        if writer is not None:
            writer.close()
        rewritten.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    os.replace(rewritten, path)


def _sampling_record(
    config: DownloadConfig, before: dict[str, int], kept: dict[str, int], choices: RowChoices
) -> dict[str, Any]:
    """What the plan records of --max_per_class / --min_per_class (overview.json shows it)."""
    assert choices.sampling is not None
    return {
        "max_per_class": config.max_per_class,
        "min_per_class": config.min_per_class,
        "seed": config.seed if config.max_per_class is not None else None,
        "before": sampling_summary(list(before.values())),
        "after": sampling_summary([n for n in kept.values() if n]),
        "class_capped_rows": choices.sampling.capped_rows,
        "class_too_small_rows": choices.sampling.too_small_rows,
        "classes_too_small": len(choices.too_small_labels()),
    }


def normalize_label(value: str | None) -> str | None:
    """A label, or None for a missing one (null, empty or only spaces)."""
    if value is None or not value.strip():
        return None
    return value


def _class_order(label_counts: dict[str, int]) -> list[str]:
    """Numeric labels (taxon ids) in numeric order, others in text order."""
    labels = list(label_counts)
    try:
        return sorted(labels, key=lambda label: (float(label), label))
    except ValueError:
        return sorted(labels)


def write_labels_file(plan: Plan, images_per_label: dict[str, int] | None = None) -> None:
    """labels.json: class index, label, rows and (imagefolder) folder, for people and loaders.

    For imagefolder the index is the one torchvision and datasets give: the position of the
    folder among the folders that hold images (a label whose every URL failed has no folder
    and no index), so it is written when the run ends.
    """
    entries: list[dict[str, Any]] = []
    index = 0
    for position, label in enumerate(plan.labels or []):
        entry: dict[str, Any] = {"index": position, "label": label}
        if plan.label_counts is not None:
            entry["rows"] = plan.label_counts[position]
        if plan.kept_label_counts is not None:  # after --max_per_class
            entry["requested_rows"] = plan.kept_label_counts[position]
        if plan.label_folders is not None:
            images = (images_per_label or {}).get(label, 0)
            entry["folder"] = plan.label_folders[label]
            entry["images"] = images
            entry["index"] = index if images else None
            index += 1 if images else 0
        entries.append(entry)
    atomic_write_text(
        Path(plan.output) / LABELS_FILE, json.dumps(entries, ensure_ascii=False, indent=1)
    )
