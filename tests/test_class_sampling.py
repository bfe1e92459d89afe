"""Per-class caps for long-tailed lists (--max_per_class, --min_per_class, --seed) and the
planning of repeated URLs: decided while planning, in bounded memory, checked against a plain
Python reference; capped rows are never requested (the real CLI against the real server)."""

from __future__ import annotations

import hashlib
import json
import random
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import flowdc
from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FlowDCError
from flowdc.core.layout import PLAN_TABLE
from flowdc.planning import class_sampling, repeated_urls, spill
from flowdc.planning.inputs import InputTable
from flowdc.planning.plan import Plan, make_plan
from flowdc.testserver import ImageServer
from tests.conftest import QUICK_RUN
from tests.test_e2e import assert_ok, check_results, download, expected_key, write_csv


def plan_of(
    tmp_path: Path, rows: list[dict[str, Any]], name: str = "out", **options: Any
) -> tuple[Plan, pa.Table]:
    source = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    output = tmp_path / name
    output.mkdir()
    config = DownloadConfig(input=str(source), output=str(output), **options)
    plan = make_plan(config, InputTable(source))
    return plan, pq.read_table(plan.table_path)


def rank(url: str, seed: int) -> int:
    """The sample's rank of a URL, computed here the plain way: SplitMix64's finalizer of the
    first 8 bytes of the URL's BLAKE2b digest XOR the seed's."""
    mask = (1 << 64) - 1
    digest = int.from_bytes(hashlib.blake2b(url.encode(), digest_size=16).digest()[:8], "little")
    z = digest ^ int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:8], "little")
    z = (z + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def expected_sampling(
    rows: list[dict[str, Any]], most: int | None, least: int | None, seed: int
) -> dict[int, str]:
    """Row index -> planned status, by brute force."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_class[row["label"]].append(index)
    status: dict[int, str] = {}
    for members in by_class.values():
        if least is not None and len(members) < least:
            status.update(dict.fromkeys(members, "class_too_small"))
            continue
        if most is not None:
            ordered = sorted(members, key=lambda i: (rank(rows[i]["url"], seed), i))
            status.update(dict.fromkeys(ordered[most:], "class_capped"))
    return status


def long_tail(count: int, distinct: int | None = None) -> list[dict[str, Any]]:
    """Class k has about count/2^(k+1) rows; URLs repeat when `distinct` is given."""
    rows = []
    for index in range(count):
        label = f"class {min((index * 2654435761 % 2**32).bit_length() ^ 31, 12)}"
        url = f"http://127.0.0.1:9/img/{index % distinct if distinct else index}.jpg"
        rows.append({"url": url, "label": label})
    return rows


@pytest.mark.parametrize(("most", "least"), [(7, None), (None, 40), (25, 3)])
def test_the_sample_is_the_seeded_lowest_ranks_of_each_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, most: int | None, least: int | None
) -> None:
    # small chunks and flushes: the carried candidates and the spill files are exercised
    monkeypatch.setattr(class_sampling, "CHUNK_RECORDS", 50)
    monkeypatch.setattr(spill, "FLUSH_RECORDS", 300)
    rows = long_tail(3000)
    plan, table = plan_of(
        tmp_path, rows, label="label", max_per_class=most, min_per_class=least, seed=11
    )
    planned = table.column("planned_status").to_pylist()
    expected = expected_sampling(rows, most, least, 11)
    assert {i: s for i, s in enumerate(planned) if s} == expected
    kept = Counter(rows[i]["label"] for i in range(len(rows)) if planned[i] is None)
    if most is not None:
        assert max(kept.values()) == most
    small = {label for label, n in Counter(r["label"] for r in rows).items() if least and n < least}
    assert small and set(plan.labels or []).isdisjoint(small) if least else True
    assert plan.class_sampling is not None
    assert plan.class_sampling["after"]["rows"] == sum(kept.values())
    assert plan.class_sampling["class_capped_rows"] == Counter(expected.values())["class_capped"]


def test_the_sample_is_the_same_for_a_seed_whatever_the_order_and_other_for_another_seed(
    tmp_path: Path,
) -> None:
    rows = long_tail(2000)
    shuffled = rows[:]
    random.Random(5).shuffle(shuffled)

    def kept(rows: list[dict[str, Any]], name: str, seed: int, shard_size: int) -> set[str]:
        _, table = plan_of(
            tmp_path, rows, name, label="label", max_per_class=20, seed=seed, shard_size=shard_size
        )
        status = table.column("planned_status").to_pylist()
        return {
            url for url, s in zip(table.column("url").to_pylist(), status, strict=True) if s is None
        }

    first = kept(rows, "a", 3, 10_000)
    assert kept(rows, "b", 3, 10_000) == first
    assert kept(shuffled, "c", 3, 77) == first  # another order, another shard size
    assert kept(rows, "d", 4, 10_000) != first


def test_repeats_name_the_first_requested_row_of_their_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repeated_urls, "BUCKET_ROWS", 64)  # pairs in many buckets
    monkeypatch.setattr(spill, "FLUSH_RECORDS", 500)
    rows = long_tail(5000, distinct=700)
    rows[3]["url"] = None  # a row without a URL repeats nothing
    rows[10]["label"] = None  # no label: never requested (imagefolder), so never a first row
    _, table = plan_of(
        tmp_path, rows, label="label", shard_size=37, output_format="imagefolder",
        max_per_class=300,
    )  # fmt: skip
    status = table.column("planned_status").to_pylist()
    first: dict[str, int] = {}
    expected: list[int | None] = []
    for index, row in enumerate(rows):
        requested = row["url"] is not None and row["label"] is not None and status[index] is None
        if not requested:
            expected.append(None)
            continue
        expected.append(first.get(row["url"]))
        first.setdefault(row["url"], index)
    assert table.column("same_url_position").to_pylist() == expected
    assert sum(e is not None for e in expected) > 500


def test_a_list_without_repeats_or_sampling_keeps_the_plan_as_it_was(tmp_path: Path) -> None:
    plan, table = plan_of(tmp_path, long_tail(500), label="label")
    assert "same_url_position" not in table.column_names
    assert "planned_status" not in table.column_names
    assert plan.repeated_url_rows == 0 and plan.class_sampling is None


def test_planning_leaves_no_spill_behind_and_clears_a_killed_plannings(tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    stale = output / f".{PLAN_TABLE}.tmp-0123456789ab"
    stale.mkdir()
    (stale / "urls-000").write_bytes(b"x" * 24)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(long_tail(300, distinct=50)), source)
    make_plan(DownloadConfig(input=str(source), output=str(output)), InputTable(source))
    assert sorted(p.name for p in output.iterdir()) == [".flowdc-plan.json", PLAN_TABLE]


def test_planning_memory_does_not_grow_with_rows(tmp_path: Path) -> None:
    """Repeats and a class sample at 100,000 and 200,000 rows: the Python heap's peak (numpy's
    arrays included) stays the same; the rows go to spill files."""
    peaks = {}
    for count in (100_000, 200_000):
        rows = long_tail(count, distinct=count // 5)
        source = tmp_path / f"{count}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), source)
        output = tmp_path / str(count)
        output.mkdir()
        config = DownloadConfig(
            input=str(source), output=str(output), label="label", max_per_class=100, min_per_class=3
        )
        del rows
        tracemalloc.start()
        try:
            plan = make_plan(config, InputTable(source))
            peaks[count] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert plan.repeated_url_rows > 0 and plan.class_sampling is not None
    assert peaks[200_000] < 1.1 * peaks[100_000] + 500_000, peaks
    assert peaks[200_000] < 16_000_000, peaks


# -- options ------------------------------------------------------------------------------------
def test_class_options_need_a_label_and_a_possible_range(tmp_path: Path) -> None:
    with pytest.raises(
        FlowDCError, match="--max_per_class and --min_per_class count rows per label"
    ):
        flowdc.download(input="x.csv", output=str(tmp_path / "o"), max_per_class=5)
    with pytest.raises(FlowDCError, match="min_per_class 6 is above max_per_class 5"):
        flowdc.download(
            input="x.csv", output=str(tmp_path / "o"), label="l", max_per_class=5, min_per_class=6
        )


def test_a_resume_with_another_sample_is_refused(server: ImageServer, tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    urls = [server.url(f"img/{i}.jpg") for i in range(6)]
    pq.write_table(pa.table({"url": urls, "label": ["a"] * 6}), source)
    output = tmp_path / "out"
    common = {"input": str(source), "output": str(output), "label": "label", **QUICK_RUN}
    flowdc.download(**common, max_per_class=3)
    with pytest.raises(FlowDCError, match="max_per_class 3 -> 4"):
        flowdc.download(**common, max_per_class=4)
    with pytest.raises(FlowDCError, match="seed 0 -> 1"):
        flowdc.download(**common, max_per_class=3, seed=1)
    flowdc.download(**common, max_per_class=3)  # the same options resume


# -- end to end ---------------------------------------------------------------------------------
@pytest.mark.parametrize("output_format", ["webdataset", "imagefolder"])
def test_capped_rows_are_never_requested(
    fresh_server: ImageServer, tmp_path: Path, output_format: str
) -> None:
    counts = {"big": 30, "mid": 10, "three": 3, "lone": 1}
    rows = []
    for label, count in counts.items():
        rows += [
            {"url": fresh_server.url(f"img/{len(rows) + i}.jpg"), "label": label}
            for i in range(count)
        ]
    random.Random(1).shuffle(rows)
    source = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out"
    done = download(
        source, output, "--label", "label", "--shard_size", "7", "--output_format", output_format,
        "--max_per_class", "5", "--min_per_class", "2", "--seed", "9",
    )  # fmt: skip
    assert_ok(done)
    by_key = check_results(output, rows, 7)
    expected = expected_sampling(rows, 5, 2, 9)
    requested = set()
    for index, row in enumerate(rows):
        result = by_key[expected_key(index, 7)]
        assert result["status"] == expected.get(index, "success"), result
        if index not in expected:
            requested.add("/" + row["url"].split("/", 3)[3])
        else:
            assert result["attempts"] == 0 and result["path"] is None
    assert set(fresh_server.hits) == requested and set(fresh_server.hits.values()) == {1}
    assert Counter(r["label"] for r in by_key.values() if r["status"] == "success") == {
        "big": 5,
        "mid": 5,
        "three": 3,
    }
    labels = json.loads((output / "labels.json").read_text())
    assert [entry["label"] for entry in labels] == ["big", "mid", "three"]  # no "lone"
    overview = json.loads((output / "overview.json").read_text())
    sampling = overview["class_sampling"]
    assert sampling["before"] == {
        "classes": 4,
        "rows": 44,
        "smallest": 1,
        "median": 6.5,
        "largest": 30,
    }
    assert sampling["after"] == {
        "classes": 3,
        "rows": 13,
        "smallest": 3,
        "median": 5.0,
        "largest": 5,
    }
    assert (sampling["class_capped_rows"], sampling["class_too_small_rows"]) == (30, 1)
    assert overview["error_breakdown"] == {"class_capped": 30, "class_too_small": 1}
    report = (output / "report.html").read_text()
    assert "Rows per class, before and after --max_per_class 5, --min_per_class 2" in report
    assert "13 of 13 requested images downloaded (100.0%)" in report
