"""Splits that do not leak (flowdc split, download --split).

The assignment (metadata/splits.py) is checked with hypothesis-generated groups, identical
images, --dedupe duplicates and labels against an independent union-find written here: no group
or image spans two splits, every stored sample has exactly one split, a seed gives one result,
classes are covered or go whole to train, ratios are met for large classes. Then the command
and the API on real downloads from the test server: the split files, the leakage check in
report.html, and the layouts loaded by webdataset, Hugging Face `datasets` and mlcroissant.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowdc
from flowdc.core.errors import FlowDCError
from flowdc.core.split_ratios import parse_ratios
from flowdc.metadata.splits import NONE, SplitRows, assign, connected, leaks
from flowdc.testserver import ImageServer
from tests.conftest import run_cli

FAST: dict[str, Any] = {
    "processes": 1,
    "retry_backoff_sec": 0.01,
    "max_retry_attempts": 0,
    "timeout": 5,
    "enable_rate_limiting": False,
}

RATIOS = [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.5, 0.5), (0.7, 0.0, 0.3), (1 / 3, 1 / 3, 1 / 3)]


# -- the assignment, on generated rows ---------------------------------------------------------
@st.composite
def split_rows(draw: st.DrawFn) -> SplitRows:
    """Rows that start unlinked (each its own image, no group), then get links: rows set to the
    image of another row, put in groups (an occurrence) and in a second kind of group (an
    observer), so that links chain across rows and kinds; about one row in six a --dedupe
    duplicate of a stored row."""
    count = draw(st.integers(1, 120))
    row = st.integers(0, count - 1)
    keys = np.array(sorted(draw(st.sets(st.integers(0, 10**9), min_size=count, max_size=count))))
    classes = np.array(draw(st.lists(st.integers(0, 5), min_size=count, max_size=count)))
    sha = np.arange(count)
    for target, source in draw(st.lists(st.tuples(row, row), max_size=count // 3)):
        sha[target] = sha[source]
    links = [sha]
    for kinds in (count // 8 + 1, 3):
        group = np.full(count, NONE, dtype=np.int64)
        for member, value in draw(st.lists(st.tuples(row, st.integers(0, kinds)), max_size=count)):
            group[member] = value
        links.append(group)
    stored = np.array(draw(st.lists(st.integers(0, 5), min_size=count, max_size=count))) > 0
    stored[0] = True
    duplicate_of = np.full(count, NONE, dtype=np.int64)
    stored_keys = keys[stored]
    for copy in np.flatnonzero(~stored):
        duplicate_of[copy] = stored_keys[draw(st.integers(0, len(stored_keys) - 1))]
    return SplitRows(keys, classes, stored, links, duplicate_of)


def _expected_units(rows: SplitRows) -> list[int]:
    """Each row's unit by a plain union-find, independent of the numpy one."""
    parent = list(range(len(rows.keys)))

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def union(a: int, b: int) -> None:
        parent[find(a)] = find(b)

    row_of = {int(key): row for row, key in enumerate(rows.keys)}
    for ids in rows.links:
        first: dict[int, int] = {}
        for row, value in enumerate(ids.tolist()):
            if value != NONE:
                union(row, first.setdefault(value, row))
    for row, key in enumerate(rows.duplicate_of.tolist()):
        if key != NONE and key in row_of:
            union(row, row_of[key])
    return [find(row) for row in range(len(parent))]


def _primary(rows: SplitRows, units: list[int]) -> dict[int, int]:
    """unit -> its most common class among its stored rows (the smaller class on a tie)."""
    counts: dict[int, Counter[int]] = defaultdict(Counter)
    for row, unit in enumerate(units):
        if rows.stored[row]:
            counts[unit][int(rows.classes[row])] += 1
    return {u: min(c, key=lambda k: (-c[k], k)) for u, c in counts.items()}


@settings(max_examples=300, deadline=None)
@given(rows=split_rows(), ratios=st.sampled_from(RATIOS), seed=st.integers(0, 2**32))
def test_no_group_or_image_spans_two_splits_and_each_stored_sample_has_one(
    rows: SplitRows, ratios: tuple[float, ...], seed: int
) -> None:
    made = assign(rows, ratios, seed)
    split = made.split.tolist()
    positive = {i for i, share in enumerate(ratios) if share > 0}
    for row, value in enumerate(split):
        assert (value in positive) if rows.stored[row] else value == NONE
    units = _expected_units(rows)
    splits_of_unit: dict[int, set[int]] = defaultdict(set)
    for row, unit in enumerate(units):
        if rows.stored[row]:
            splits_of_unit[unit].add(split[row])
    assert all(len(found) == 1 for found in splits_of_unit.values())
    # the direct statement: no link value (sha256, group) in two splits; duplicates count in
    # the split of the sample they copy
    split_of_key = {int(k): s for k, s in zip(rows.keys, split, strict=True)}
    effective = [
        split_of_key.get(int(rows.duplicate_of[row]), NONE) if not rows.stored[row] else s
        for row, s in enumerate(split)
    ]
    for ids in rows.links:
        seen: dict[int, set[int]] = defaultdict(set)
        for value, s in zip(ids.tolist(), effective, strict=True):
            if value != NONE and s != NONE:
                seen[value].add(s)
        assert all(len(found) == 1 for found in seen.values())
    assert leaks(rows, made.split) == [0, 0, 0]
    assert made.units == len(splits_of_unit)


@settings(max_examples=200, deadline=None)
@given(rows=split_rows(), ratios=st.sampled_from(RATIOS), seed=st.integers(0, 2**32))
def test_a_class_is_in_every_split_or_whole_in_train(
    rows: SplitRows, ratios: tuple[float, ...], seed: int
) -> None:
    made = assign(rows, ratios, seed)
    units = _expected_units(rows)
    primary = _primary(rows, units)
    unit_split = {units[row]: int(made.split[row]) for row in np.flatnonzero(rows.stored)}
    per_class: dict[int, list[int]] = defaultdict(list)
    for unit, klass in primary.items():
        per_class[klass].append(unit_split[unit])
    positive = {i for i, share in enumerate(ratios) if share > 0}
    small = set(made.whole_to_train.tolist())
    for klass, splits in per_class.items():
        if len(splits) < len(positive):
            assert set(splits) == {0} and klass in small
        else:
            assert set(splits) == positive and klass not in small


@settings(max_examples=100, deadline=None)
@given(rows=split_rows(), ratios=st.sampled_from(RATIOS), seed=st.integers(0, 2**32))
def test_the_same_seed_gives_the_same_split(
    rows: SplitRows, ratios: tuple[float, ...], seed: int
) -> None:
    first, again = assign(rows, ratios, seed), assign(rows, ratios, seed)
    assert first.split.tolist() == again.split.tolist()


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(50, 400), min_size=1, max_size=6),
    ratios=st.sampled_from(RATIOS),
    seed=st.integers(0, 2**32),
    pairs=st.integers(0, 20),
)
def test_ratios_are_met_for_large_classes(
    sizes: list[int], ratios: tuple[float, ...], seed: int, pairs: int
) -> None:
    """Classes of 50 to 400 samples, some in pairs (two photos of one occurrence): each split
    holds its share of each class to within a unit."""
    classes = np.repeat(np.arange(len(sizes)), sizes)
    count = len(classes)
    group = np.full(count, NONE, dtype=np.int64)
    group[: 2 * pairs] = np.arange(2 * pairs) // 2  # rows 0-1, 2-3, ... share an occurrence
    rows = SplitRows(
        keys=np.arange(count, dtype=np.int64) * 7,
        classes=classes,
        stored=np.ones(count, dtype=bool),
        links=[np.arange(count), group],
        duplicate_of=np.full(count, NONE, dtype=np.int64),
    )
    made = assign(rows, ratios, seed)
    for klass, size in enumerate(sizes):
        got = np.bincount(made.split[classes == klass], minlength=len(ratios))
        for index, share in enumerate(ratios):
            assert abs(got[index] - share * size) <= 2, (klass, got.tolist(), size)


@pytest.mark.parametrize(("samples", "expected"), [(2, [0, 0]), (3, [0, 1, 2])])
def test_a_small_class_goes_to_train_until_each_split_can_have_a_sample(
    samples: int, expected: list[int]
) -> None:
    """0.8/0.1/0.1 puts no sample of 3 in validation by shares alone; each split gets one."""
    rows = SplitRows(
        keys=np.arange(samples, dtype=np.int64),
        classes=np.zeros(samples, dtype=np.int64),
        stored=np.ones(samples, dtype=bool),
        links=[np.arange(samples)],
        duplicate_of=np.full(samples, NONE, dtype=np.int64),
    )
    for seed in range(5):
        made = assign(rows, RATIOS[0], seed)
        assert sorted(made.split.tolist()) == expected
        assert made.whole_to_train.tolist() == ([0] if samples < 3 else [])


def test_different_seeds_give_different_splits() -> None:
    count = 200
    rows = SplitRows(
        keys=np.arange(count, dtype=np.int64),
        classes=np.zeros(count, dtype=np.int64),
        stored=np.ones(count, dtype=bool),
        links=[np.arange(count)],
        duplicate_of=np.full(count, NONE, dtype=np.int64),
    )
    assert assign(rows, RATIOS[0], 1).split.tolist() != assign(rows, RATIOS[0], 2).split.tolist()


def test_connected_components_of_a_long_chain_settle() -> None:
    """A chain whose nodes are numbered against it (each node's smaller neighbour is far away):
    the worst case of hooking to the smaller root, still a few rounds."""
    count = 100_000
    order = np.random.default_rng(0).permutation(count)
    labels = connected(count, order[:-1], order[1:])
    assert (labels == 0).all()


# -- ratios ------------------------------------------------------------------------------------
def test_ratios_parse_two_or_three_shares_or_percentages() -> None:
    assert parse_ratios("0.8,0.1,0.1") == {"train": 0.8, "validation": 0.1, "test": 0.1}
    assert parse_ratios("0.9, 0.1") == {"train": 0.9, "test": 0.1}
    assert parse_ratios("80,10,10") == {"train": 0.8, "validation": 0.1, "test": 0.1}


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0.8,0.1", "sum to 0.9"),
        ("a,b", "not numbers"),
        ("1", "give 2 or 3"),
        ("0,0.5,0.5", "train's above 0"),
        ("0.9,-0.1,0.2", "0 or more"),
    ],
)
def test_bad_ratios_say_what_to_give(value: str, says: str) -> None:
    with pytest.raises(FlowDCError, match=says) as error:
        parse_ratios(value)
    assert "0.8,0.1,0.1" in str(error.value) and "\n" not in str(error.value)


# -- the command and the API on real downloads -------------------------------------------------
SPLIT = "0.6,0.2,0.2"
COUNTS = {"cat": (10, 3), "dog": (8, 2), "owl": (8, 1), "rare": (2, 1)}  # occurrences, photos


def _url_rows(server: ImageServer) -> list[dict[str, str]]:
    """Occurrences of one to three photos in four classes; four rows repeat an earlier URL
    under an occurrence of their own (the same image twice); two URLs fail."""
    rows, image = [], 0
    for species, (occurrences, photos) in COUNTS.items():
        for occurrence in range(occurrences):
            for _ in range(photos):
                rows.append(
                    {"url": server.url(f"img/{image}.jpg", host=image % 2), "species": species,
                     "occurrence": f"{species}-{occurrence}"}
                )  # fmt: skip
                image += 1
    for copy, row in enumerate([rows[0], rows[30], rows[46], rows[54]]):
        rows.append({**row, "occurrence": f"copy-{copy}"})
    for gone in range(2):
        rows.append(
            {"url": server.url(f"status/404/{gone}.jpg"), "species": "owl", "occurrence": "lost"}
        )
    return rows


def _write_input(server: ImageServer, path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in _url_rows(server)), "utf-8")
    return path


def _download_args(source: Path, output: Path | str, *extra: str) -> list[str]:
    return [
        "download", "--input", str(source), "--output", str(output), "--label", "species",
        "--shard_size", "8", "--processes", "1", "--retry_backoff_sec", "0.01",
        "--max_retry_attempts", "0", "--timeout", "5", "--no-enable_rate_limiting",
        "--dataset_name", "Split test", "--dataset_creator", "FLOW-DC tests",
        "--dataset_license", "CC0-1.0", *extra,
    ]  # fmt: skip


def _assert_leak_free(table: pa.Table) -> None:
    """From the results alone: every stored sample has one split, nothing else has one, and no
    occurrence or sha256 is in two splits (a duplicate counts where the sample it copies is)."""
    rows = table.to_pylist()
    split_of = {row["key"]: row["split"] for row in rows}
    for row in rows:
        assert (row["split"] in ("train", "validation", "test")) == (row["status"] == "success")
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        where = row["split"] or split_of.get(row["duplicate_of"] or "")
        if where:
            seen["occurrence", row["occurrence"]].add(where)
            seen["sha256", row["sha256"]].add(where)
    assert seen and all(len(splits) == 1 for splits in seen.values()), seen


@pytest.fixture(scope="module")
def webdataset_split(server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wds-split")
    source = _write_input(server, base / "urls.jsonl")
    output = base / "birds"
    done = run_cli(*_download_args(source, output, "--split", SPLIT, "--split_group", "occurrence"))
    assert done.returncode == 0, done.stderr
    assert "leakage check: OK" in done.stderr
    return output


def test_download_split_is_leak_free_stratified_and_in_the_results_view(
    webdataset_split: Path,
) -> None:
    table = flowdc.results(webdataset_split)
    _assert_leak_free(table)
    summary = json.loads((webdataset_split / "splits.json").read_text("utf-8"))
    successes = sum(status == "success" for status in table.column("status").to_pylist())
    assert summary["samples"] == successes == sum(summary["counts"].values()) == 60
    assert summary["leakage_check"]["ok"] and summary["group"] == ["occurrence"]
    assert summary["seed"] == 0 and summary["ratios"] == {
        "train": 0.6,
        "validation": 0.2,
        "test": 0.2,
    }
    # rare: two occurrences (its copy joins the first by sha256): fewer units than splits
    assert summary["whole_to_train"] == {"rare": 3}
    assert summary["classes"]["rare"] == {"train": 3, "validation": 0, "test": 0}
    for species in ("cat", "dog", "owl"):
        assert all(summary["classes"][species].values()), summary["classes"][species]
    counted = Counter(table.column("split").to_pylist())
    assert {name: counted[name] for name in summary["counts"]} == summary["counts"]
    page = (webdataset_split / "report.html").read_text("utf-8")
    assert '<section id="splits">' in page and "Leakage check passed" in page


def test_same_seed_same_split_and_another_seed_another(
    webdataset_split: Path, tmp_path: Path
) -> None:
    output = tmp_path / "birds"
    shutil.copytree(webdataset_split, output)
    before = pq.read_table(webdataset_split / "splits.parquet").to_pylist()
    done = run_cli("split", str(output), "--ratios", SPLIT, "--group", "occurrence")
    assert done.returncode == 0, done.stderr
    assert pq.read_table(output / "splits.parquet").to_pylist() == before
    done = run_cli("split", str(output), "--ratios", SPLIT, "--group", "occurrence", "--seed", "7")
    assert done.returncode == 0, done.stderr
    assert "leakage check: OK" in done.stdout and "seed 7" in done.stdout
    again = pq.read_table(output / "splits.parquet").to_pylist()
    assert again != before and sorted(r["key"] for r in again) == sorted(r["key"] for r in before)
    _assert_leak_free(flowdc.results(output))
    (output / "splits.json").rename(tmp_path / "splits.json")  # as a split killed half way
    assert "split" not in flowdc.results(output).column_names
    (tmp_path / "splits.json").rename(output / "splits.json")
    # without the group, occurrences may span splits: the group is what keeps them together
    done = run_cli("split", str(output), "--ratios", SPLIT, "--seed", "7")
    assert done.returncode == 0, done.stderr
    table = flowdc.results(output)
    spans = defaultdict(set)
    for row in table.to_pylist():
        if row["split"]:
            spans[row["occurrence"]].add(row["split"])
    assert any(len(splits) > 1 for splits in spans.values())


_WEBDATASET = """
import json, sys
import pyarrow.parquet as pq, webdataset as wds
output, shards = sys.argv[1], sys.argv[2]
counts = {}
for split in ("train", "validation", "test"):
    keys = set(pq.read_table(f"{output}/split={split}.parquet", columns=["key"])["key"].to_pylist())
    ds = wds.WebDataset(f"{output}/{shards}", shardshuffle=False)
    ds = ds.select(lambda sample: sample["__key__"] in keys)
    counts[split] = sorted(sample["__key__"] for sample in ds.decode("pil") if sample["jpg"].size)
print(json.dumps(counts))
"""


def test_webdataset_loads_each_split_with_the_documented_one_liner(webdataset_split: Path) -> None:
    shards = sorted(path.name for path in webdataset_split.glob("*.tar"))
    pattern = f"{{{shards[0][:5]}..{shards[-1][:5]}}}.tar"
    done = subprocess.run(
        [sys.executable, "-c", _WEBDATASET, str(webdataset_split), pattern],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    table = flowdc.results(webdataset_split).to_pylist()
    for split, keys in loaded.items():
        assert keys == sorted(row["key"] for row in table if row["split"] == split)


_CROISSANT = """
import json, sys
import mlcroissant as mlc
out = {}
for split in ("train", "validation", "test"):
    ds = mlc.Dataset(jsonld=sys.argv[1])  # a filter changes its dataset: one per split
    records = ds.records("split_samples", filters={"split_samples/split": split})
    out[split] = sorted(
        [r["split_samples/key"].decode(), r["split_samples/split"].decode(),
         r["split_samples/label"].decode(), list(r["split_samples/image"].size)]
        for r in records
    )
print(json.dumps(out))
"""


def _croissant_splits(output: Path, cache: Path) -> dict[str, list[list[Any]]]:
    env = {**os.environ, "CROISSANT_CACHE": str(cache)}
    check = subprocess.run(
        [str(Path(sys.executable).parent / "mlcroissant"), "validate", "--jsonld",
         str(output / "croissant.json")], capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    text = check.stdout + check.stderr
    assert check.returncode == 0 and "warning" not in text.lower(), text
    done = subprocess.run(
        [sys.executable, "-c", _CROISSANT, str(output / "croissant.json")],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_croissant_validates_and_reads_each_split(webdataset_split: Path, tmp_path: Path) -> None:
    loaded = _croissant_splits(webdataset_split, tmp_path / "cache")
    rows = flowdc.results(webdataset_split).to_pylist()
    for split, records in loaded.items():
        wanted = sorted(
            [row["key"], split, row["label"], [row["width"], row["height"]]]
            for row in rows
            if row["split"] == split
        )
        assert records == wanted and records, split
    assert run_cli("validate", str(webdataset_split)).returncode == 0


_DATASETS = """
import collections, json, sys
import datasets
loaded = datasets.load_dataset("imagefolder", data_dir=sys.argv[1], cache_dir=sys.argv[2])
out = {}
for split, ds in loaded.items():
    names = ds.features["label"].names
    out[split] = collections.Counter(names[i] for i in ds["label"])
print(json.dumps(out))
"""


def _load_imagefolder(folder: Path, cache: Path) -> dict[str, dict[str, int]]:
    env = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(cache / "home"),
    }
    done = subprocess.run(
        [sys.executable, "-c", _DATASETS, str(folder), str(cache / "datasets")],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def imagefolder_split(server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder output with --dedupe (the repeated URLs become duplicates), split with
    the API."""
    base = tmp_path_factory.mktemp("imagefolder-split")
    output = base / "birds"
    result = flowdc.download(
        input=str(_write_input(server, base / "urls.jsonl")), output=str(output),
        output_format="imagefolder", label="species", dedupe=True, shard_size=8,
        dataset_name="Split test", dataset_creator="FLOW-DC tests", dataset_license="CC0-1.0",
        **FAST,
    )  # fmt: skip
    assert result.failures == {"duplicate": 4, "failed_to_download": 2}
    summary = flowdc.split(output, SPLIT, group="occurrence", seed=3)
    assert summary["leakage_check"]["ok"] and summary["samples"] == 56
    return output


def test_imagefolder_split_layout_loads_in_datasets_with_its_counts(
    imagefolder_split: Path, tmp_path: Path
) -> None:
    summary = json.loads((imagefolder_split / "splits.json").read_text("utf-8"))
    layout = imagefolder_split.parent / "birds-splits"
    assert summary["files"]["imagefolder"] == str(layout) and summary["files"]["links"] == "hard"
    loaded = _load_imagefolder(layout, tmp_path / "layout")
    wanted = {
        split: {name: counts[split] for name, counts in summary["classes"].items() if counts[split]}
        for split in summary["counts"]
    }
    assert loaded == wanted
    rows = flowdc.results(imagefolder_split).to_pylist()
    _assert_leak_free(pa.Table.from_pylist(rows))
    for row in rows:  # each file of the layout is the output's image, linked
        if row["split"]:
            linked = layout / row["split"] / row["path"]
            assert os.path.samefile(linked, imagefolder_split / row["path"])
    # the output's root still reads as one dataset of every image (no split folder in it)
    root = _load_imagefolder(imagefolder_split, tmp_path / "root")
    assert root == {"train": dict(Counter(r["label"] for r in rows if r["status"] == "success"))}


def test_imagefolder_croissant_reads_each_split(imagefolder_split: Path, tmp_path: Path) -> None:
    loaded = _croissant_splits(imagefolder_split, tmp_path / "cache")
    summary = json.loads((imagefolder_split / "splits.json").read_text("utf-8"))
    assert {split: len(records) for split, records in loaded.items()} == summary["counts"]


def test_validate_rerun_and_overwrite_after_a_split(
    server: ImageServer, imagefolder_split: Path, tmp_path: Path
) -> None:
    output = tmp_path / "birds"
    shutil.copytree(imagefolder_split, output)
    assert run_cli("validate", str(output)).returncode == 0
    source = _write_input(server, tmp_path / "urls.jsonl")
    args = _download_args(source, output, "--output_format", "imagefolder", "--dedupe")
    # the copy was planned from another input path; same bytes, so it resumes
    done = run_cli(*args, "--split", SPLIT, "--split_group", "occurrence", "--split_seed", "3")
    assert done.returncode == 0, done.stderr
    assert "resuming: 8 of 8 shard(s) already committed" in done.stderr
    assert (output.parent / "birds-splits" / ".flowdc-split-layout").is_file()
    assert run_cli("validate", str(output)).returncode == 0
    done = run_cli(*args, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert not (output / "splits.json").exists() and not (output / "splits.parquet").exists()
    assert not list(output.glob("split=*")) and not (output.parent / "birds-splits").exists()
    assert "split" not in flowdc.results(output).column_names


def test_a_folder_in_the_layouts_place_is_never_touched(
    imagefolder_split: Path, tmp_path: Path
) -> None:
    output = tmp_path / "birds"
    shutil.copytree(imagefolder_split, output)
    mine = tmp_path / "birds-splits"
    (mine / "train").mkdir(parents=True)
    (mine / "train" / "notes.txt").write_text("mine")
    before = (output / "splits.json").read_bytes()
    done = run_cli("split", str(output), "--ratios", SPLIT)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "is not the split layout of" in done.stderr
    assert (mine / "train" / "notes.txt").read_text() == "mine"
    assert (output / "splits.json").read_bytes() == before
    # a layout flowdc made, with a file of the user's put in it: refused too
    shutil.rmtree(mine)
    shutil.copytree(imagefolder_split.parent / "birds-splits", mine)
    (mine / ".flowdc-split-layout").write_text(f"{output.resolve()}\n")
    (mine / "test" / "notes.txt").write_text("mine")
    done = run_cli("split", str(output), "--ratios", SPLIT)
    assert done.returncode == 2 and "did not make (test/notes.txt)" in done.stderr
    (mine / "test" / "notes.txt").unlink()
    killed = tmp_path / ".birds-splits.tmp-0123456789ab"  # what a killed split leaves
    shutil.copytree(mine, killed)
    done = run_cli("split", str(output), "--ratios", SPLIT, "--group", "occurrence")
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob(".birds-splits*"))  # the old layout swapped out and removed


def test_symbolic_links_where_hard_links_are_refused(
    imagefolder_split: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layout on another filesystem than the output (an output that is a mount point)."""
    output = tmp_path / "birds"
    shutil.copytree(imagefolder_split, output)

    def cross_device(source: str, target: str) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    summary = flowdc.split(output, (0.6, 0.2, 0.2), group=["occurrence"], seed=3)
    assert summary["files"]["links"] == "symbolic"
    for row in flowdc.results(output).to_pylist():
        if row["split"]:
            linked = tmp_path / "birds-splits" / row["split"] / row["path"]
            assert linked.is_symlink() and not os.path.isabs(os.readlink(linked))
            assert linked.read_bytes() == (output / row["path"]).read_bytes()


def test_bad_split_requests_are_one_line(
    server: ImageServer, webdataset_split: Path, tmp_path: Path
) -> None:
    cases = [
        (("split", str(tmp_path), "--ratios", SPLIT), "holds no FLOW-DC plan"),
        (("split", str(webdataset_split), "--ratios", "0.8,0.1"), "sum to 0.9"),
        (("split", str(webdataset_split), "--ratios", SPLIT, "--group", "site"), "--group site"),
        (("split", str(webdataset_split), "--ratios", SPLIT, "--by", "genus"), "--by genus"),
    ]
    source = _write_input(server, tmp_path / "urls.jsonl")
    fresh = tmp_path / "never"
    cases += [
        (_download_args(source, fresh, "--split_group", "occurrence"), "need --split RATIOS"),
        (_download_args(source, fresh, "--split", SPLIT, "--split_group", "site"), "'site'"),
        (_download_args(source, "s3://bucket/birds", "--split", SPLIT), "not on object storage"),
    ]
    for args, says in cases:
        done = run_cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
    assert not fresh.exists()  # refused before anything was downloaded
