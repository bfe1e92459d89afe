"""--output_format parquet: the writer (row groups, retry copy, abort), the columns Hugging Face
`datasets` reads as Image and ClassLabel, and a real download loaded with `datasets` (offline, in
its own interpreter) and checked by `flowdc validate`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flowdc.config.loading import build_config
from flowdc.core import layout
from flowdc.core.errors import FlowDCError
from flowdc.metadata.croissant_records import PARQUET_SHARDS, RESULTS_TABLES
from flowdc.shard.records import SAMPLE_FACT_FIELDS
from flowdc.shard.writers import parquet as parquet_writer
from flowdc.shard.writers.parquet import ROW_GROUP_ROWS, ParquetShardWriter, image_table
from flowdc.testserver import ImageServer
from tests.test_e2e import (
    assert_ok,
    check_results,
    download,
    successes,
    temp_leftovers,
    write_csv,
)

LABELS = ["bird", "cat", "dog"]


def _layout(extras: list[pa.Field] | None = None) -> parquet_writer.ImageTable:
    return image_table(SAMPLE_FACT_FIELDS, extras or [], LABELS, labelled=True)


def _meta(key: str, **extra: Any) -> dict[str, Any]:
    facts = {field.name: None for field in SAMPLE_FACT_FIELDS}
    return {**facts, "key": key, "status": "success", "format": "jpg", **extra}


def _rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


# -- the columns --------------------------------------------------------------------------------
def test_the_schema_is_what_datasets_reads_as_images_and_class_labels() -> None:
    extras = [
        pa.field("image", pa.string()),  # an input column named like the images' column
        pa.field("seen", pa.timestamp("us", tz="UTC")),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("score", pa.float64()),
        pa.field("day", pa.date32()),
    ]
    table = _layout(extras)
    features = datasets.Features.from_arrow_schema(table.schema)
    assert features["image"] == datasets.Image()
    assert features["label"] == datasets.ClassLabel(names=LABELS)
    assert features["input_image"] == datasets.Value("string")
    assert features["seen"] == datasets.Value("timestamp[us, tz=UTC]")
    assert features["score"] == datasets.Value("float64")
    assert features["day"] == datasets.Value("date32")
    assert features["width"] == datasets.Value("int32")
    assert features["tags"] == datasets.List(datasets.Value("string"))
    # the metadata is datasets' own form: what it writes for these features
    recorded = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    own = json.loads(features.arrow_schema.metadata[b"huggingface"])["info"]["features"]
    assert recorded == {name: own[name] for name in recorded}
    assert set(own) - set(recorded) == {"tags"}  # no plain Value: datasets reads its Arrow type
    # label and class_index are the one label column; the other facts are there by name
    names = table.schema.names
    assert names[:2] == ["image", "label"] and "class_index" not in names
    assert {f.name for f in SAMPLE_FACT_FIELDS} - {"label", "class_index"} <= set(names)


def test_free_text_labels_are_text_and_no_label_column_means_no_label() -> None:
    free = image_table(SAMPLE_FACT_FIELDS, [], None, labelled=True)
    assert datasets.Features.from_arrow_schema(free.schema)["label"] == datasets.Value("string")
    unlabelled = image_table(SAMPLE_FACT_FIELDS, [], None, labelled=False)
    assert "label" not in unlabelled.schema.names


# -- the writer ---------------------------------------------------------------------------------
def test_row_groups_close_at_the_image_count_or_the_byte_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = ParquetShardWriter(tmp_path, 0, _layout())
    for i in range(1_100):
        writer.add(f"{i:05d}", "jpg", bytes([i % 256]) * 10, _meta(f"{i:05d}"), "cat", 1)
    writer.commit()
    shard = pq.ParquetFile(layout.parquet_shard_path(tmp_path, 0))
    assert [shard.metadata.row_group(i).num_rows for i in range(3)] == [500, 500, 100]

    monkeypatch.setattr(parquet_writer, "ROW_GROUP_BYTES", 1 << 20)
    writer = ParquetShardWriter(tmp_path, 1, _layout())
    sizes = [300_000] * 7 + [3_000_000] + [300_000] * 2  # a fourth 300 kB would pass 1 MiB
    for i, size in enumerate(sizes):
        writer.add(f"{i:05d}", "jpg", bytes([i]) * size, _meta(f"{i:05d}"), "dog", 2)
    writer.commit()
    shard = pq.ParquetFile(layout.parquet_shard_path(tmp_path, 1))
    groups = [shard.metadata.row_group(i).num_rows for i in range(shard.num_row_groups)]
    assert groups == [3, 3, 1, 1, 2]  # an image over the limit is a group of its own
    rows = _rows(layout.parquet_shard_path(tmp_path, 1))
    assert [row["image"] for row in rows] == [
        {"bytes": bytes([i]) * size, "path": f"{i:05d}.jpg"} for i, size in enumerate(sizes)
    ]
    assert {row["label"] for row in rows} == {2}
    assert not list(tmp_path.glob(".*"))  # the temporary names are gone


def test_a_row_group_goes_to_the_file_in_pages_of_about_a_mebibyte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow's default made a row group's image column one page, built whole in memory."""
    writes: list[int] = []
    write = parquet_writer._Sink.write

    def counted(self: Any, data: bytes) -> int:
        writes.append(len(data))
        return write(self, data)

    monkeypatch.setattr(parquet_writer._Sink, "write", counted)
    writer = ParquetShardWriter(tmp_path, 0, _layout())
    for i in range(100):  # 20 MB: one row group
        writer.add(f"{i:05d}", "jpg", bytes([i]) * 200_000, _meta(f"{i:05d}"), "cat", 1)
    writer.commit()
    assert pq.ParquetFile(layout.parquet_shard_path(tmp_path, 0)).num_row_groups == 1
    assert sum(writes) > 20_000_000 and max(writes) < 3 << 20


def test_a_retry_copy_keeps_every_row_but_the_retried_keys(tmp_path: Path) -> None:
    first = ParquetShardWriter(tmp_path, 4, _layout([pa.field("photo", pa.string())]))
    for i in range(10):
        meta = _meta(f"k{i}", photo=f"p{i}", width=i)
        first.add(f"k{i}", "jpg", b"old %d" % i, meta, "cat", 1)
    first.commit()
    final = layout.parquet_shard_path(tmp_path, 4)

    second = ParquetShardWriter(tmp_path, 4, _layout([pa.field("photo", pa.string())]))
    second.copy_samples(final, skip_keys={"k3", "k7", "k99"})
    for i in (3, 7):
        second.add(f"k{i}", "png", b"new %d" % i, _meta(f"k{i}", photo="again"), None, None)
    second.commit()
    listed = _rows(final)
    assert sorted(row["key"] for row in listed) == [f"k{i}" for i in range(10)]  # each once
    rows = {row["key"]: row for row in listed}
    assert rows["k3"]["image"] == {"bytes": b"new 3", "path": "k3.png"}
    assert rows["k3"]["label"] is None and rows["k3"]["photo"] == "again"
    assert rows["k5"]["image"] == {"bytes": b"old 5", "path": "k5.jpg"}
    assert (rows["k5"]["label"], rows["k5"]["photo"], rows["k5"]["width"]) == (1, "p5", 5)


def test_abort_leaves_no_file(tmp_path: Path) -> None:
    writer = ParquetShardWriter(tmp_path, 2, _layout())
    writer.add("k0", "jpg", b"x" * 1000, _meta("k0"), "cat", 1)
    assert writer.tmp_path.exists()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_the_image_shards_are_flowdcs_and_never_read_as_results_tables(tmp_path: Path) -> None:
    name = layout.parquet_shard_name(7)
    assert layout.made_by_flowdc(name) and layout.made_by_flowdc(layout.temp_name(name))
    assert layout.temp_name(name).startswith(layout.shard_temp_prefixes(7))
    (tmp_path / name).write_bytes(b"")
    (tmp_path / layout.results_path(tmp_path, 7).name).write_bytes(b"")
    assert [p.name for p in tmp_path.glob(RESULTS_TABLES)] == ["00007.parquet"]
    assert [p.name for p in tmp_path.glob(PARQUET_SHARDS)] == [name]


# -- a real download ----------------------------------------------------------------------------
HF_LOAD = """
import collections, hashlib, json, sys
import datasets
ds = datasets.load_dataset("parquet", data_files=sys.argv[1] + "/*.images.parquet",
                           split="train", cache_dir=sys.argv[2])
label = ds.features["label"]
first = ds[0]["image"]
print(json.dumps({
    "image_feature": repr(ds.features["image"]),
    "label_feature": type(label).__name__,
    "names": getattr(label, "names", None),
    "first_image": type(first).__module__ + "." + type(first).__name__,
    "first_size": list(first.size),
    "rows": [
        {"key": row["key"], "label": row["label"], "size": list(row["image"].size),
         "photo_id": row["photo_id"], "input_image": row["input_image"]}
        for row in ds
    ],
    "sha256": {row["key"]: hashlib.sha256(row["image"]["bytes"]).hexdigest()
               for row in ds.cast_column("image", datasets.Image(decode=False))},
}))
"""


def load_parquet_with_datasets(output: Path, cache: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(cache / "home"),
        "HF_DATASETS_CACHE": str(cache / "datasets"),
    }
    done = subprocess.run(
        [sys.executable, "-c", HF_LOAD, str(output), str(cache / "datasets")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


SHARD = 7


@pytest.fixture(scope="module")
def parquet_run(server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("parquet")
    rows = [
        {
            "url": server.url(f"img/{i}.jpg", host=i % 2),
            "label": LABELS[i % 3],
            "photo_id": str(900 + i),
            "image": f"input {i}",
        }
        for i in range(20)
    ]
    rows[5]["url"] = server.url("status/404/gone.jpg")
    rows[8]["label"] = ""  # no label: stored, with a null label
    rows.append({"url": server.url("img/anim.gif"), "label": "cat", "photo_id": "g", "image": ""})
    input_path = write_csv(base / "urls.csv", rows)
    output = base / "out"
    done = download(
        input_path, output, "--label", "label", "--output_format", "parquet",
        "--shard_size", str(SHARD), "--dataset_name", "parquet test",
        "--dataset_creator", "FLOW-DC tests", "--dataset_license", "CC0-1.0",
    )  # fmt: skip
    assert_ok(done)
    return {"rows": rows, "output": output, "base": base}


def test_parquet_output_loads_in_datasets_as_images_and_class_labels(
    parquet_run: dict[str, Any],
) -> None:
    rows, output = parquet_run["rows"], parquet_run["output"]
    by_key = check_results(output, rows, SHARD)
    ok = successes(by_key)
    assert len(ok) == len(rows) - 1
    assert not temp_leftovers(output)
    assert sorted(p.name for p in output.glob("*.images.parquet")) == [
        layout.parquet_shard_name(shard) for shard in range(3)
    ]
    loaded = load_parquet_with_datasets(output, parquet_run["base"] / "hf")
    assert loaded["image_feature"] == repr(datasets.Image())
    labels = json.loads((output / "labels.json").read_text(encoding="utf-8"))
    assert loaded["label_feature"] == "ClassLabel"
    assert loaded["names"] == [entry["label"] for entry in labels] == LABELS
    assert loaded["first_image"].startswith("PIL.") and loaded["first_size"][0] > 0
    keys = Counter(row["key"] for row in loaded["rows"])
    assert set(keys) == ok and set(keys.values()) == {1}
    for row in loaded["rows"]:
        result = by_key[row["key"]]
        assert row["size"] == [result["original_width"], result["original_height"]]
        wanted = LABELS.index(result["label"]) if result["label"] else None
        assert row["label"] == wanted == result["class_index"]
        assert result["path"] == f"{row['key']}.{result['format']}"
        assert loaded["sha256"][row["key"]] == result["sha256"]  # the bytes as served
    source = {str(900 + i): row for i, row in enumerate(rows)}
    for row in loaded["rows"]:
        if row["photo_id"] in source:  # the input's own `image` column is kept, renamed
            assert row["input_image"] == source[row["photo_id"]]["image"]


def test_parquet_output_passes_validate_and_validate_finds_a_changed_image(
    parquet_run: dict[str, Any], tmp_path: Path
) -> None:
    output = parquet_run["output"]
    done = subprocess.run(
        [sys.executable, "-m", "flowdc", "validate", str(output)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(parquet_run['rows']) - 1} samples" in done.stdout
    assert "croissant.json: valid for mlcroissant" in done.stdout

    broken = tmp_path / "broken"
    shutil.copytree(output, broken)
    shard = layout.parquet_shard_path(broken, 1)
    table = pq.read_table(shard)
    images = table.column("image").to_pylist()
    changed_name = images[0]["path"]
    images[0] = {**images[0], "bytes": images[0]["bytes"][:-1] + b"\x00"}
    twice = table.slice(1, 1)
    table = table.set_column(0, "image", pa.array(images, table.schema.field("image").type))
    pq.write_table(pa.concat_tables([table, twice]), shard)
    done = subprocess.run(
        [sys.executable, "-m", "flowdc", "validate", str(broken)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    name = shard.name
    assert f"{name}: {changed_name} does not match its sha256" in done.stdout
    assert f"{name}: {twice.column('image')[0]['path']} is there twice" in done.stdout
    assert f"{name}: size differs from croissant.json" in done.stdout  # a row more

    shard.unlink()
    done = subprocess.run(
        [sys.executable, "-m", "flowdc", "validate", str(broken)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert f"{name}: missing" in done.stdout and f"{name}: listed in croissant.json" in done.stdout


def test_validate_names_a_shard_datasets_would_not_read_as_images_and_labels(
    parquet_run: dict[str, Any], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(parquet_run["output"], broken)
    relabelled = layout.parquet_shard_path(broken, 0)
    table = pq.read_table(relabelled)
    features = json.loads(table.schema.metadata[b"huggingface"])
    features["info"]["features"]["label"]["names"] = ["cat", "bird", "dog"]
    metadata = {b"huggingface": json.dumps(features).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), relabelled)
    untyped = layout.parquet_shard_path(broken, 2)
    table = pq.read_table(untyped)
    pq.write_table(table.set_column(0, "image", pc.struct_field(table["image"], "bytes")), untyped)
    done = subprocess.run(
        [sys.executable, "-m", "flowdc", "validate", str(broken)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{relabelled.name}: its ClassLabel names are not the labels" in done.stdout
    assert f"{untyped.name}: no `image` column of type struct<bytes: binary" in done.stdout


def test_a_failed_write_is_aborted_cleanly(tmp_path: Path) -> None:
    """The failed write's traceback still holds the row group's arrays (views of the image
    buffer) while the shard is aborted: the abort must neither raise nor leave a file."""
    writer = ParquetShardWriter(tmp_path, 3, _layout())

    def full_disk(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    writer._writer.write_table = full_disk  # type: ignore[method-assign]
    with pytest.raises(OSError, match="No space left"):
        try:
            for i in range(ROW_GROUP_ROWS):
                writer.add(f"k{i}", "jpg", b"x" * 100, _meta(f"k{i}"), "cat", 1)
        except OSError:
            writer.abort()
            raise
    assert list(tmp_path.iterdir()) == []


def test_an_image_over_2_gib_cannot_be_asked_for() -> None:
    with pytest.raises(FlowDCError, match=r"^--output_format parquet stores each image as one"):
        build_config(
            overrides={"input": "a", "output": "b", "output_format": "parquet", "max_bytes": 2**31}
        )
    build_config(overrides={"input": "a", "output": "b", "max_bytes": 2**31})  # a tar takes it
