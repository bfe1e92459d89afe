"""`flowdc validate OUTPUT`: check a finished dataset against its own results tables.

Every committed sample must be present exactly once with the sha256 its results row records,
every results row must hold a key of its own shard, every tar must read to its end (every
Parquet shard too, a row group at a time, its `image` column typed as `datasets` reads images
and its labels those of the plan), no sample may be there that the tables do not list, and
croissant.json (when there is one) must describe the files as they are. Each problem names the
file it is about. A WebDataset or Parquet output is checked one shard at a time, in memory that
does not grow with the output; an ImageFolder output keeps the path and sha256 of every stored
image until its folders are walked.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.core.errors import FlowDCError
from flowdc.core.files import sha256_of
from flowdc.core.layout import (
    CROISSANT_FILE,
    TEMP_MARK,
    is_committed,
    parquet_shard_name,
    parquet_shard_path,
    results_path,
    shard_name,
    stats_path,
    tar_name,
    tar_path,
)
from flowdc.core.status import SUCCESS
from flowdc.metadata.croissant import check_croissant
from flowdc.planning.plan import Plan
from flowdc.shard.writers.parquet import IMAGE_COLUMN, IMAGE_TYPE, LABEL_COLUMN

MAX_SHOWN = 20


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shards: int = 0
    rows: int = 0
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self, output: Path) -> str:
        lines = [
            f"checked {output}: {self.shards} committed shard(s), {self.rows:,} results rows, "
            f"{self.samples:,} samples",
            *self.notes,
        ]
        if self.ok:
            lines.append("OK: every committed sample is present once and matches its sha256")
            return "\n".join(lines)
        lines.append(f"PROBLEMS: {len(self.problems)}")
        lines += [f"  {problem}" for problem in self.problems[:MAX_SHOWN]]
        if len(self.problems) > MAX_SHOWN:
            lines.append(f"  ... and {len(self.problems) - MAX_SHOWN} more")
        return "\n".join(lines)


def _check_keys(table: str, keys: list[str], shard: int, plan: Plan, verdict: Verdict) -> None:
    """A key is fixed by the plan: the shard's number, then the row's in as many digits as the
    plan says. So a table that holds only its own shard's keys, each once, shares no key with
    another shard, and no list of every key seen needs to be kept (it grew with the output)."""
    prefix = shard_name(shard)
    rows = plan.shard_rows(shard)
    seen: set[str] = set()
    for key in keys:
        row = key[len(prefix) :]
        if key in seen:
            verdict.problems.append(f"{table}: key {key} is there twice")
        elif not (
            key.startswith(prefix)
            and len(row) == plan.key_width
            and row.isdigit()
            and int(row) < rows
        ):
            verdict.problems.append(f"{table}: key {key} is not a key of shard {shard}")
        seen.add(key)


def _check_tar(path: Path, expected: dict[str, str], verdict: Verdict) -> None:
    """expected: member name -> sha256 of every committed sample of this shard."""
    seen: set[str] = set()
    image_names = {name.rsplit(".", 1)[0]: name for name in expected}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                key = member.name.rsplit(".", 1)[0]
                if member.name in expected:
                    if member.name in seen:
                        verdict.problems.append(f"{path.name}: {member.name} is there twice")
                        continue
                    seen.add(member.name)
                    data = tar.extractfile(member)
                    digest = hashlib.sha256(data.read() if data else b"").hexdigest()
                    if digest != expected[member.name]:
                        verdict.problems.append(
                            f"{path.name}: {member.name} does not match its sha256 in the "
                            f"results table"
                        )
                    else:
                        verdict.samples += 1
                elif key not in image_names and not member.name.endswith((".json", ".cls", ".txt")):
                    verdict.problems.append(
                        f"{path.name}: {member.name} is not a committed sample of its results table"
                    )
    except FileNotFoundError:
        verdict.problems.append(f"{path.name}: missing ({len(expected)} committed samples)")
        return
    except (OSError, tarfile.TarError, EOFError) as exc:
        verdict.problems.append(f"{path.name}: not a readable tar ({exc})")
        return
    for name in sorted(set(expected) - seen):
        verdict.problems.append(f"{path.name}: {name} is missing (a committed sample)")


def _parquet_images(path: Path, plan: Plan, verdict: Verdict) -> Iterator[tuple[str, bytes]]:
    """(image path, bytes) of every row of a Parquet shard, a batch at a time; a problem for a
    file `datasets` would not read as images and class labels."""
    with pq.ParquetFile(path) as shard:
        schema = shard.schema_arrow
        if IMAGE_COLUMN not in schema.names or schema.field(IMAGE_COLUMN).type != IMAGE_TYPE:
            verdict.problems.append(f"{path.name}: no `{IMAGE_COLUMN}` column of type {IMAGE_TYPE}")
            return
        features = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        label = features.get("info", {}).get("features", {}).get(LABEL_COLUMN, {})
        if plan.label_column and plan.labels is not None and label.get("names") != plan.labels:
            verdict.problems.append(
                f"{path.name}: its ClassLabel names are not the labels of {plan.output}'s plan"
            )
        for batch in shard.iter_batches(batch_size=64, columns=[IMAGE_COLUMN]):
            names = pc.struct_field(batch.column(0), "path").to_pylist()
            datas = pc.struct_field(batch.column(0), "bytes").to_pylist()
            for name, data in zip(names, datas, strict=True):
                yield name or "", data or b""


def _check_parquet(path: Path, expected: dict[str, str], plan: Plan, verdict: Verdict) -> None:
    """expected: image path -> sha256 of every committed sample of this shard."""
    seen: set[str] = set()
    try:
        for name, data in _parquet_images(path, plan, verdict):
            if name not in expected:
                verdict.problems.append(
                    f"{path.name}: {name} is not a committed sample of its results table"
                )
            elif name in seen:
                verdict.problems.append(f"{path.name}: {name} is there twice")
            elif hashlib.sha256(data).hexdigest() != expected[name]:
                seen.add(name)
                verdict.problems.append(
                    f"{path.name}: {name} does not match its sha256 in the results table"
                )
            else:
                seen.add(name)
                verdict.samples += 1
    except FileNotFoundError:
        verdict.problems.append(f"{path.name}: missing ({len(expected)} committed samples)")
        return
    except (OSError, ValueError) as exc:  # pyarrow's errors are both
        verdict.problems.append(f"{path.name}: not a readable Parquet file ({exc})")
        return
    for name in sorted(set(expected) - seen):
        verdict.problems.append(f"{path.name}: {name} is missing (a committed sample)")


def _check_folder_files(
    output: Path, expected: dict[str, str], plan: Plan, verdict: Verdict
) -> None:
    for relative, digest in sorted(expected.items()):
        path = output / relative
        try:
            actual = sha256_of(path)
        except FileNotFoundError:
            verdict.problems.append(f"{relative}: missing (a committed sample)")
            continue
        except OSError as exc:
            verdict.problems.append(f"{relative}: unreadable ({exc.strerror})")
            continue
        if actual != digest:
            verdict.problems.append(f"{relative}: does not match its sha256 in the results table")
        else:
            verdict.samples += 1
    for folder in sorted(set((plan.label_folders or {}).values())):
        directory = output / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            relative = f"{folder}/{path.name}"
            if relative not in expected and TEMP_MARK not in path.name:
                verdict.problems.append(f"{relative}: not a committed sample of a results table")


def _check_croissant(output: Path, verdict: Verdict, plan: Plan) -> None:
    path = output / CROISSANT_FILE
    if not path.exists():
        verdict.notes.append("no croissant.json (croissant was no_croissant)")
        return
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        verdict.problems.append(f"{CROISSANT_FILE}: not readable JSON ({exc})")
        return
    verdict.problems += check_croissant(doc)
    listed = set()
    for entry in doc.get("distribution", []):
        if entry.get("@type") != "cr:FileObject":
            continue
        name = str(entry.get("contentUrl", ""))
        listed.add(name)
        file = output / name
        if not file.is_file():
            verdict.problems.append(f"{name}: listed in {CROISSANT_FILE} but missing")
        elif f"{file.stat().st_size} B" != entry.get("contentSize"):
            verdict.problems.append(f"{name}: size differs from {CROISSANT_FILE}")
        elif sha256_of(file) != entry.get("sha256"):
            verdict.problems.append(f"{name}: sha256 differs from {CROISSANT_FILE}")
    wanted = [results_path(output, s).name for s in range(plan.shard_count)]
    if plan.output_format == "webdataset":
        wanted += [tar_name(s) for s in range(plan.shard_count)]
    elif plan.output_format == "parquet":
        wanted += [parquet_shard_name(s) for s in range(plan.shard_count)]
    for name in wanted:
        if (output / name).exists() and name not in listed:
            verdict.problems.append(
                f"{CROISSANT_FILE}: does not list {name}; run the download again to rewrite it"
            )
    try:
        import mlcroissant  # a test dependency; its check runs where it is installed
    except ImportError:
        verdict.notes.append("croissant.json: FLOW-DC's checks only (mlcroissant not installed)")
        return
    try:
        dataset = mlcroissant.Dataset(jsonld=str(path))
        warnings = dataset.metadata.ctx.issues.warnings
    except Exception as exc:  # mlcroissant raises its ValidationError and others
        first = str(exc).strip().splitlines()
        verdict.problems.append(
            f"{CROISSANT_FILE}: mlcroissant finds it invalid: {first[-1] if first else exc}"
        )
        return
    for warning in sorted(warnings):
        verdict.problems.append(f"{CROISSANT_FILE}: mlcroissant warns: {warning}")
    version = importlib_metadata.version("mlcroissant")
    verdict.notes.append(f"croissant.json: valid for mlcroissant {version}")


def validate_output(output: Path) -> Verdict:
    """Check every committed shard, its samples and the Croissant metadata of `output`."""
    plan = Plan.load(output)
    if plan is None:
        raise FlowDCError(
            f"{output} holds no FLOW-DC plan (.flowdc-plan.json); give the --output folder of "
            f"a download"
        )
    verdict = Verdict()
    folder_files: dict[str, str] = {}  # imagefolder: path -> sha256, over all shards
    for shard in range(plan.shard_count):
        if not is_committed(output, shard):
            verdict.problems.append(
                f"{stats_path(output, shard).name}: missing, shard {shard} is not finished; run "
                f"the download again"
            )
            continue
        verdict.shards += 1
        table_path = results_path(output, shard)
        try:
            names = pq.read_schema(table_path).names
            columns = ["key", "status", "path", "sha256"]
            columns += ["stored_sha256"] if "stored_sha256" in names else []
            table = pq.read_table(table_path, columns=columns)
        except (OSError, ValueError) as exc:
            verdict.problems.append(f"{table_path.name}: not a readable results table ({exc})")
            continue
        rows = table.to_pylist()
        verdict.rows += len(rows)
        if len(rows) != plan.shard_rows(shard):
            verdict.problems.append(
                f"{table_path.name}: {len(rows)} rows, the plan has {plan.shard_rows(shard)}"
            )
        _check_keys(table_path.name, [row["key"] for row in rows], shard, plan, verdict)
        expected: dict[str, str] = {}
        for row in rows:
            if row["status"] == SUCCESS:  # a resized or converted image has its own hash
                expected[row["path"]] = row.get("stored_sha256") or row["sha256"]
        if plan.output_format == "webdataset":
            _check_tar(tar_path(output, shard), expected, verdict)
        elif plan.output_format == "parquet":
            _check_parquet(parquet_shard_path(output, shard), expected, plan, verdict)
        else:
            folder_files.update(expected)
    if plan.output_format == "imagefolder":
        _check_folder_files(output, folder_files, plan, verdict)
    _check_croissant(output, verdict, plan)
    return verdict
