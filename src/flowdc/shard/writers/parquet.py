"""Parquet output: OUTPUT/{shard:05d}.images.parquet, one row per stored image, as Hugging Face
`datasets` reads it: `load_dataset("parquet", data_files="OUTPUT/*.images.parquet")` gives the
`image` column as an `Image` feature and `label` as a `ClassLabel`, with no code of ours.

Columns: `image` (struct<bytes: binary, path: string>, the Arrow type of `datasets.Image`),
`label` (the class index as int64, a `ClassLabel` named by labels.json; text when the labels are
too many to be classes; absent without --label), then the sample's facts (the WebDataset
KEY.json's: records.SAMPLE_FACTS but label and class_index, which `label` holds) and the input's
extra columns. The features are recorded as `datasets` records them: the schema's metadata key
`huggingface` holds {"info": {"features": ...}}; a column whose type has no plain `Value` (a
list, a struct) is left out of it, and `datasets` reads its feature from the Arrow type.

A shard is written as it is fetched, never held: a row group is written when it holds
ROW_GROUP_ROWS images or when the next image would take it past ROW_GROUP_BYTES of image bytes.
64 MiB keeps a row group under the 100 MB that `datasets` aims at when it writes Parquet
(reading one row reads its whole row group; the Hub's viewer expects it) and bounds what the
writer holds (one row group of image bytes per shard being written, in one reused mmap: see
_ImageBytes) and what a streaming reader holds; 500 rows keeps groups of thumbnails from
growing to a whole shard, so readers that split work by row group still can. Pages are about
1 MiB (PAGE_CHECK_ROWS), so a reader with the page index reads a row's page, not its group.
The file goes through AppendFile (O_DIRECT and a lock, as a tar) under a temporary name;
`commit` renames it. Image bytes are stored plain (no compression, no dictionary, no
statistics: they are compressed already and a min/max of images means nothing), the other
columns with zstd, as `datasets` does it (with snappy).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.core.layout import parquet_shard_path, temp_name
from flowdc.shard.writers.direct import AppendFile

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
"""The Arrow type of `datasets.Image()`: a column of another type is not read as images."""
ROW_GROUP_ROWS = 500
ROW_GROUP_BYTES = 64 << 20
PAGE_CHECK_ROWS = 8
"""pyarrow ends a page at its first check past 1 MiB and checks every this many values (its
default, 1,024, made the image column of a row group one 64 MiB page, built whole in memory)."""

_IMAGE_LEAVES = (f"{IMAGE_COLUMN}.bytes", f"{IMAGE_COLUMN}.path")


@dataclass(frozen=True)
class ImageTable:
    """The columns of a shard's Parquet file and where each value of a row comes from."""

    schema: pa.Schema
    facts: tuple[tuple[str, str], ...]
    """(column, key of the sample's facts) for every column but image and label."""
    label: str | None
    """"index" (ClassLabel: the class index), "text" (the label itself) or None (no column)."""


def image_table(
    facts: list[pa.Field], extras: list[pa.Field], labels: list[str] | None, labelled: bool
) -> ImageTable:
    """The columns for a plan: `facts` are the sample's facts, `extras` the input's extra
    columns (named as in the plan), `labels` the class names in class-index order (None when
    the labels are free text), `labelled` whether the plan has a label column."""
    fields = [pa.field(IMAGE_COLUMN, IMAGE_TYPE)]
    features: dict[str, Any] = {IMAGE_COLUMN: {"_type": "Image"}}
    label = None
    if labelled and labels is not None:
        label = "index"
        fields.append(pa.field(LABEL_COLUMN, pa.int64()))
        features[LABEL_COLUMN] = {"names": list(labels), "_type": "ClassLabel"}
    elif labelled:
        label = "text"
        fields.append(pa.field(LABEL_COLUMN, pa.string()))
    sources = []
    taken = {field.name for field in fields}
    for field in [f for f in facts if f.name not in (LABEL_COLUMN, "class_index")] + extras:
        column = field.name
        while column in taken:  # an input column named `image`
            column = f"input_{column}"
        taken.add(column)
        sources.append((column, field.name))
        fields.append(pa.field(column, field.type))
    for field in fields:
        dtype = _value_dtype(field.type)
        if field.name not in features and dtype is not None:
            features[field.name] = {"dtype": dtype, "_type": "Value"}
    metadata = {"huggingface": json.dumps({"info": {"features": features}})}
    return ImageTable(pa.schema(fields, metadata=metadata), tuple(sources), label)


_VALUE_DTYPES = {
    pa.bool_(): "bool", pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32",
    pa.int64(): "int64", pa.uint8(): "uint8", pa.uint16(): "uint16", pa.uint32(): "uint32",
    pa.uint64(): "uint64", pa.float16(): "float16", pa.float32(): "float32",
    pa.float64(): "float64", pa.string(): "string", pa.large_string(): "large_string",
    pa.binary(): "binary", pa.large_binary(): "large_binary", pa.date32(): "date32",
    pa.date64(): "date64",
}  # fmt: skip
"""The `datasets.Value` dtype of the plain Arrow types (datasets' _arrow_to_datasets_dtype)."""


def _value_dtype(kind: pa.DataType) -> str | None:
    """The `datasets.Value` dtype of an Arrow type; None for a type that has none."""
    if isinstance(kind, pa.TimestampType):
        return f"timestamp[{kind.unit}, tz={kind.tz}]" if kind.tz else f"timestamp[{kind.unit}]"
    return _VALUE_DTYPES.get(kind)


class _Sink:
    """An AppendFile as the file object pyarrow writes to (it never closes it)."""

    closed = False

    def __init__(self, file: AppendFile) -> None:
        self._file = file

    def write(self, data: bytes) -> int:
        self._file.write(data)
        return len(data)

    def tell(self) -> int:
        return self._file.size

    def flush(self) -> None:
        """Nothing: AppendFile writes what it holds when it closes."""


class _ImageBytes:
    """A row group's image bytes, copied one after another into one anonymous mmap that every
    row group of the shard reuses: the Arrow binary column is a view of it, not a copy, and its
    pages are faulted in once per shard, not once per row group (a fresh 64 MiB is 16,000 page
    faults, about 1.3 us each on this project's virtual machines)."""

    def __init__(self) -> None:
        self._memory: mmap.mmap | None = None
        self.offsets = [0]

    def fits(self, length: int) -> bool:
        return self.offsets[-1] + length <= ROW_GROUP_BYTES

    def append(self, data: bytes) -> None:
        start = self.offsets[-1]
        end = start + len(data)
        if self._memory is None or end > len(self._memory):  # the first image, or a huge one
            memory = mmap.mmap(-1, max(end, ROW_GROUP_BYTES))
            if self._memory is not None:
                memory[:start] = self._memory[:start]
                self._memory.close()
            self._memory = memory
        self._memory[start:end] = data
        self.offsets.append(end)

    def array(self) -> pa.Array:
        """The bytes as an Arrow binary array: a view, to be dropped before `clear`."""
        assert self._memory is not None, "no image was appended"
        offsets = pa.array(self.offsets, pa.int32()).buffers()[1]
        data = pa.py_buffer(self._memory)
        return pa.Array.from_buffers(pa.binary(), len(self.offsets) - 1, [None, offsets, data])

    def clear(self) -> None:
        self.offsets = [0]

    def close(self) -> None:
        """Free the memory now or, while an array of a failed write still views it (its
        traceback holds it), when that array goes."""
        if self._memory is not None:
            with contextlib.suppress(BufferError):
                self._memory.close()
            self._memory = None


class ParquetShardWriter:
    """Writes a shard's Parquet file under a temporary name; `commit` renames it into place."""

    def __init__(self, output: Path, shard: int, table: ImageTable) -> None:
        self.final_path = parquet_shard_path(output, shard)
        self.tmp_path = output / temp_name(self.final_path.name)
        self.table = table
        self._file = AppendFile(self.tmp_path)  # locked: a live attempt's file (Dask)
        leaves = _leaves(table)
        facts = [name for name in leaves if name not in _IMAGE_LEAVES]
        try:
            self._writer = pq.ParquetWriter(
                _Sink(self._file),
                table.schema,
                compression={name: "zstd" if name in facts else "none" for name in leaves},
                use_dictionary=facts,
                write_statistics=facts,
                write_page_index=True,  # a reader finds a row's pages (the Hub's viewer does)
                write_batch_size=PAGE_CHECK_ROWS,
            )
        except BaseException:
            self._file.discard()
            self.tmp_path.unlink(missing_ok=True)
            raise
        self._images = _ImageBytes()
        self._rows: list[tuple[str, Any, dict[str, Any]]] = []  # image path, label, facts

    def add(
        self,
        key: str,
        extension: str,
        data: bytes,
        meta: dict[str, Any],
        label: str | None,
        class_index: int | None,
    ) -> str:
        if self._rows and not self._images.fits(len(data)):
            self._write_group()
        path = f"{key}.{extension}"
        self._images.append(data)
        self._rows.append((path, class_index if self.table.label == "index" else label, meta))
        if len(self._rows) >= ROW_GROUP_ROWS:
            self._write_group()
        return path

    def _write_group(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        schema = self.table.schema
        columns: list[pa.Array] = [
            pa.StructArray.from_arrays(
                [self._images.array(), pa.array([row[0] for row in rows], pa.string())],
                fields=list(IMAGE_TYPE),
            )
        ]
        if self.table.label is not None:
            columns.append(pa.array([row[1] for row in rows], schema.field(LABEL_COLUMN).type))
        for column, fact in self.table.facts:
            columns.append(pa.array([row[2].get(fact) for row in rows], schema.field(column).type))
        self._writer.write_table(pa.Table.from_arrays(columns, schema=schema), len(rows))
        del columns  # the parquet writer copied the bytes: nothing views them any more
        self._images.clear()

    def copy_samples(self, source: Path, skip_keys: set[str]) -> None:
        """Copy every row of the Parquet shard `source` but those whose key is in `skip_keys`,
        a row group at a time, into this shard: how a retry pass keeps what was there."""
        self._write_group()
        skip = pa.array(sorted(skip_keys), pa.string())
        with pq.ParquetFile(source) as old:
            for index in range(old.num_row_groups):
                group = old.read_row_group(index)
                dropped = pc.is_in(group.column("key"), skip)
                if pc.any(dropped).as_py():
                    group = group.filter(pc.invert(dropped))
                if group.num_rows:
                    group = group.cast(self.table.schema)
                    self._writer.write_table(group, row_group_size=group.num_rows)

    def commit(self) -> None:
        self._write_group()
        self._writer.close()
        self._images.close()
        self._file.close()
        os.replace(self.tmp_path, self.final_path)

    def abort(self) -> None:
        self._rows = []
        try:
            with contextlib.suppress(Exception):  # its footer, to a file about to go
                self._writer.close()
            self._file.discard()
        finally:
            self._images.close()
            self.tmp_path.unlink(missing_ok=True)


def _leaves(table: ImageTable) -> list[str]:
    """Every Parquet leaf column, named as writer options name them (`image.bytes`)."""
    return [leaf for field in table.schema for leaf in _leaf_paths(field.name, field.type)]


def _leaf_paths(path: str, kind: pa.DataType) -> list[str]:
    if pa.types.is_dictionary(kind):
        return _leaf_paths(path, kind.value_type)
    if pa.types.is_struct(kind):
        return [leaf for child in kind for leaf in _leaf_paths(f"{path}.{child.name}", child.type)]
    if pa.types.is_map(kind):
        return _leaf_paths(f"{path}.key_value.key", kind.key_type) + _leaf_paths(
            f"{path}.key_value.value", kind.item_type
        )
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _leaf_paths(f"{path}.list.element", kind.value_type)
    return [path]
