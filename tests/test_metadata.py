"""Croissant, overview, report and validate on real downloads from the test server.

Five outputs are made once per module by the real CLI (webdataset and imagefolder, basic and
comprehensive Croissant; parquet, comprehensive); mlcroissant validates and loads them, `flowdc
validate` checks them whole and broken by hand, and report.html is opened in headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import flowdc
from flowdc.config.loading import build_config
from flowdc.core.errors import FlowDCError
from flowdc.metadata.croissant import check_croissant
from flowdc.metadata.overview import _finish_hosts
from flowdc.metadata.report import SECTIONS, THUMBNAILS
from flowdc.testserver import ImageServer
from tests.conftest import QUICK_RUN, run_cli

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)
COMBOS = [
    ("webdataset", "basic_croissant"),
    ("webdataset", "comprehensive_croissant"),
    ("imagefolder", "basic_croissant"),
    ("imagefolder", "comprehensive_croissant"),
    ("parquet", "comprehensive_croissant"),
]
SHARD = 9


def _rows(server: ImageServer) -> list[dict[str, str]]:
    labels = ["cat", "dog", "test tube"]  # "test tube" gets a made-safe folder name
    rows = [
        {
            "url": server.url(f"img/{i}.jpg", host=i % 2),
            "species": labels[i % 3],
            "image_license": "CC0" if i % 2 else "CC-BY-4.0",
            "photo id": str(100 + i),  # a space: not allowed in a Croissant @id
            "image": f"extra {i}",  # the name of the samples' own image field
        }
        for i in range(24)
    ]
    rows[4]["url"] = server.url("status/404/gone.jpg")
    rows[9]["url"] = server.url("html/page.jpg", host=1)
    rows[13]["url"] = "not a url"
    for name, label in (("pic.png", "cat"), ("anim.gif", "dog")):
        rows.append(
            {"url": server.url(f"img/{name}"), "species": label, "image_license": "CC0",
             "photo id": name, "image": name}
        )  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def outputs(server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One finished output per (format, croissant level), made in parallel by the CLI."""
    base = tmp_path_factory.mktemp("metadata")
    input_path = base / "urls.jsonl"
    input_path.write_text(
        "".join(json.dumps(row) + "\n" for row in _rows(server)), encoding="utf-8"
    )
    running = {}
    for output_format, level in COMBOS:
        output = base / f"{output_format}-{level}"
        args = [
            sys.executable, "-m", "flowdc", "download", "--input", str(input_path),
            "--output", str(output), "--output_format", output_format, "--label", "species",
            "--shard_size", str(SHARD), "--croissant", level, "--processes", "1",
            "--retry_backoff_sec", "0.01", "--max_retry_attempts", "1", "--timeout", "5",
            "--no-enable_rate_limiting", "--dataset_name", f"Test {output_format}",
            "--dataset_description", "Spiders, for a test", "--dataset_license", "CC-BY-4.0",
            "--dataset_creator", "FLOW-DC tests", "--dataset_keywords", "spiders, test",
            "--dataset_url", "https://example.org/flowdc-test",
        ]  # fmt: skip
        running[f"{output_format}-{level}"] = (
            subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            output,
        )
    made = {}
    for name, (process, output) in running.items():
        stdout, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, f"{name}: exit {process.returncode}\n{stdout}\n{stderr}"
        made[name] = output
    return made


def _results(output: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(output.glob("[0-9][0-9][0-9][0-9][0-9].parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def _mlcroissant_cli() -> str:
    return str(Path(sys.executable).parent / "mlcroissant")


# -- Croissant ---------------------------------------------------------------------------------
@pytest.mark.parametrize("combo", [f"{f}-{level}" for f, level in COMBOS])
def test_mlcroissant_validates_without_errors_or_warnings(
    outputs: dict[str, Path], combo: str, tmp_path: Path
) -> None:
    path = outputs[combo] / "croissant.json"
    done = subprocess.run(
        [_mlcroissant_cli(), "validate", "--jsonld", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CROISSANT_CACHE": str(tmp_path / "cache")},
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert not re.search(r"^[WE]\d{4} ", text, re.MULTILINE), text  # absl warnings, errors
    assert "warning" not in text.lower(), text
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["@context"]["@vocab"] == "https://schema.org/"
    assert doc["@context"]["containedIn"] == "cr:containedIn"
    assert check_croissant(doc) == []


_LOAD = """
import json, sys
import mlcroissant as mlc
ds = mlc.Dataset(jsonld=sys.argv[1])
out = {}
for record_set in sys.argv[2:]:
    out[record_set] = []
    for record in ds.records(record_set=record_set):
        item = {}
        for name, value in record.items():
            name = name.split("/")[-1]
            if hasattr(value, "size") and hasattr(value, "mode"):
                value = list(value.size)
            elif isinstance(value, bytes):
                value = value.decode()
            elif hasattr(value, "isoformat"):
                value = value.isoformat()
            item[name] = value
        out[record_set].append(item)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def loaded(
    outputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """What `mlcroissant` loads from each output's croissant.json, per record set (one
    process per output, all at once; each with its own cache, which mlcroissant keys by URL)."""
    cache = tmp_path_factory.mktemp("croissant-cache")
    running = {}
    for combo, output in outputs.items():
        record_sets = ["samples", "results"] + (["classes"] if "comprehensive" in combo else [])
        running[combo] = subprocess.Popen(
            [sys.executable, "-c", _LOAD, str(output / "croissant.json"), *record_sets],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CROISSANT_CACHE": str(cache / combo)},
        )
    result = {}
    for combo, process in running.items():
        stdout, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr[-3000:]
        result[combo] = json.loads(stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("combo", [f"{f}-{level}" for f, level in COMBOS])
def test_mlcroissant_load_yields_exactly_the_successful_samples(
    outputs: dict[str, Path], loaded: dict[str, Any], combo: str
) -> None:
    output = outputs[combo]
    results = {row["key"]: row for row in _results(output)}
    wanted = {key: row for key, row in results.items() if row["status"] == "success"}
    assert 0 < len(wanted) < len(results)  # failures exist and are left out
    records = loaded[combo]["samples"]
    keys = Counter(record["key"] for record in records)
    assert set(keys) == set(wanted), (sorted(keys), sorted(wanted))
    assert max(keys.values()) == 1
    for record in records:
        row = wanted[record["key"]]
        assert record["label"] == row["label"]
        assert record["image"] == [row["width"], row["height"]]
        if "comprehensive" in combo:
            assert record["url"] == row["url"]
            assert record["sha256"] == row["sha256"]
            assert record["image_license"] == row["image_license"]
            assert record["photo_id"] == row["photo id"]
            assert record["image_2"] == row["image"]
        else:
            assert "url" not in record
    everything = loaded[combo]["results"]
    assert sorted(r["key"] for r in everything) == sorted(results)  # zero-padded keys kept


def test_comprehensive_croissant_has_classes_provenance_and_rai(
    outputs: dict[str, Path], loaded: dict[str, Any]
) -> None:
    output = outputs["webdataset-comprehensive_croissant"]
    doc = json.loads((output / "croissant.json").read_text(encoding="utf-8"))
    overview = json.loads((output / "overview.json").read_text(encoding="utf-8"))
    assert doc["keywords"] == ["spiders", "test"]
    assert doc["rai:dataCollectionType"] == ["Web Scraping"]
    failed = overview["download_summary"]["failed"]
    assert doc["rai:dataCollectionMissingData"].startswith(f"{failed} of 26 URLs gave no image")
    assert len(doc["rai:dataCollectionTimeFrame"]) == 2
    assert doc["isBasedOn"]["name"] == "urls.jsonl"
    assert doc["license"] == "https://spdx.org/licenses/CC-BY-4.0.html"
    classes = loaded["webdataset-comprehensive_croissant"]["classes"]
    assert {c["label"]: c["images"] for c in classes} == overview["class_counts"]
    labels = json.loads((output / "labels.json").read_text(encoding="utf-8"))
    assert {c["label"]: c["index"] for c in classes} == {e["label"]: e["index"] for e in labels}


def test_basic_croissant_lists_every_shard_with_its_sha256(outputs: dict[str, Path]) -> None:
    output = outputs["webdataset-basic_croissant"]
    doc = json.loads((output / "croissant.json").read_text(encoding="utf-8"))
    objects = {d["contentUrl"]: d for d in doc["distribution"] if d["@type"] == "cr:FileObject"}
    tars = sorted(p.name for p in output.glob("*.tar"))
    tables = sorted(p.name for p in output.glob("[0-9]*.parquet"))
    assert sorted(objects) == sorted(tars + tables) and len(tars) == 3
    import hashlib

    for name, entry in objects.items():
        data = (output / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["contentSize"] == f"{len(data)} B"
    assert "rai:dataCollection" not in doc and "keywords" not in doc


def test_parquet_croissant_lists_every_image_shard_and_no_tar(outputs: dict[str, Path]) -> None:
    output = outputs["parquet-comprehensive_croissant"]
    doc = json.loads((output / "croissant.json").read_text(encoding="utf-8"))
    objects = {d["contentUrl"]: d for d in doc["distribution"] if d["@type"] == "cr:FileObject"}
    shards = sorted(p.name for p in output.glob("*.images.parquet"))
    tables = sorted(p.name for p in output.glob("[0-9][0-9][0-9][0-9][0-9].parquet"))
    assert sorted(objects) == sorted(shards + tables) and len(shards) == 3
    images = next(d for d in doc["distribution"] if d["@id"] == "images")
    assert images["includes"] == "*.images.parquet"
    classes = next(r for r in doc["recordSet"] if r["@id"] == "classes")
    labels = json.loads((output / "labels.json").read_text(encoding="utf-8"))
    assert [row["classes/index"] for row in classes["data"]] == [e["index"] for e in labels]


def test_own_checks_name_what_mlcroissant_does_not_check() -> None:
    doc = {"name": "x", "description": "y", "url": "https://e.org", "creator": {"name": "z"}}
    assert check_croissant(doc) == []
    assert check_croissant({"name": " ", "creator": [{"@type": "sc:Person"}]}) == [
        "croissant.json has no name",
        "croissant.json has no description",
        "croissant.json has no url",
        "croissant.json has no creator with a name",
    ]


def test_croissant_defaults_warn_about_license_and_creator(
    server: ImageServer, tmp_path: Path
) -> None:
    rows = [{"url": server.url(f"img/{i}.jpg"), "species": "cat"} for i in range(3)]
    input_path = tmp_path / "in.jsonl"
    input_path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    done = run_cli(
        "download", "--input", str(input_path), "--output", str(tmp_path / "out"),
        "--label", "species", "--dataset_name", "cats", "--processes", "1",
        "--no-enable_rate_limiting",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "no --dataset_license" in done.stderr and "no --dataset_creator" in done.stderr
    doc = json.loads((tmp_path / "out" / "croissant.json").read_text(encoding="utf-8"))
    assert doc["name"] == "cats" and doc["url"].startswith("file://")
    assert check_croissant(doc) == []  # defaults fill every required property


def test_no_dataset_option_means_no_croissant(server: ImageServer, tmp_path: Path) -> None:
    input_path = tmp_path / "in.txt"
    input_path.write_text(server.url("img/1.jpg") + "\n", encoding="utf-8")
    done = run_cli(
        "download", "--input", str(input_path), "--output", str(tmp_path / "out"),
        "--processes", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "out" / "croissant.json").exists()
    assert (tmp_path / "out" / "report.html").exists()


def test_dataset_version_must_be_semantic() -> None:
    with pytest.raises(FlowDCError, match=r"MAJOR\.MINOR\.PATCH"):
        build_config(overrides={"input": "a", "output": "b", "dataset_version": "v1.0-beta"})
    padded = build_config(overrides={"input": "a", "output": "b", "dataset_version": "2.1"})
    assert padded.dataset_version == "2.1.0"


# -- overview ----------------------------------------------------------------------------------
def test_overview_per_host_figures_come_from_the_results(outputs: dict[str, Path]) -> None:
    output = outputs["webdataset-basic_croissant"]
    overview = json.loads((output / "overview.json").read_text(encoding="utf-8"))
    rows = _results(output)
    for host, figures in overview["per_host"].items():
        mine = [r for r in rows if (r["host"] or "(no host)") == host]
        assert figures["rows"] == len(mine)
        assert figures["successes"] == sum(r["status"] == "success" for r in mine)
    assert set(overview["per_host"]) == {"127.0.0.1", "127.0.0.2", "(no host)"}
    assert overview["versions"]["flowdc"]
    assert sum(overview["http_status_counts"].values()) == sum(
        r["http_status"] is not None for r in rows
    )


def test_overview_merges_the_limiters_host_stats_when_present() -> None:
    hosts = {
        "a.org": {
            "rows": 4,
            "successes": 3,
            "retries": 1,
            "elapsed_seconds_sum": 2.0,
            "unavailable": 1,
        }
    }
    stats = [
        {"hosts": {"a.org": {"requests": 5, "successes": 3, "throttled": 1, "rate": 4.0}}},
        {"hosts": {"a.org": {"requests": 2, "throttled": 0, "rate": 6.0, "latency_sum": 1.5}}},
        {},  # a shard written before the key existed
    ]
    merged = _finish_hosts(hosts, stats)["a.org"]
    assert merged["failures"] == 1 and merged["success_rate_percent"] == 75.0
    assert merged["unavailable"] == 1
    assert merged["limiter"] == {
        "requests": 7,
        "successes": 3,
        "throttled": 1,
        "rate": 6.0,
        "latency_sum": 1.5,
        "mean_latency": round(1.5 / 7, 4),
    }
    assert "limiter" not in _finish_hosts(hosts, [])["a.org"]


# -- validate ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "combo",
    [
        "webdataset-basic_croissant",
        "imagefolder-basic_croissant",
        "parquet-comprehensive_croissant",
    ],
)
def test_validate_accepts_a_good_dataset(outputs: dict[str, Path], combo: str) -> None:
    done = run_cli("validate", str(outputs[combo]))
    assert done.returncode == 0, done.stdout + done.stderr
    successes = sum(r["status"] == "success" for r in _results(outputs[combo]))
    assert f"{successes} samples" in done.stdout and "OK" in done.stdout


def _copy(outputs: dict[str, Path], combo: str, tmp_path: Path) -> Path:
    target = tmp_path / combo
    shutil.copytree(outputs[combo], target)
    return target


def test_validate_names_a_changed_byte_in_a_tar(outputs: dict[str, Path], tmp_path: Path) -> None:
    output = _copy(outputs, "webdataset-basic_croissant", tmp_path)
    tar_path = output / "00001.tar"
    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar if m.name.endswith(".jpg"))
    data = bytearray(tar_path.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0x55
    tar_path.write_bytes(bytes(data))
    done = run_cli("validate", str(output))
    assert done.returncode == 1, done.stdout
    assert f"00001.tar: {member.name} does not match its sha256" in done.stdout
    assert "00001.tar: sha256 differs from croissant.json" in done.stdout


def test_validate_names_a_deleted_image(outputs: dict[str, Path], tmp_path: Path) -> None:
    output = _copy(outputs, "imagefolder-basic_croissant", tmp_path)
    victim = next(r["path"] for r in _results(output) if r["status"] == "success")
    (output / victim).unlink()
    done = run_cli("validate", str(output))
    assert done.returncode == 1, done.stdout
    assert f"{victim}: missing (a committed sample)" in done.stdout


def test_validate_names_a_deleted_tar_and_a_stray_file(
    outputs: dict[str, Path], tmp_path: Path
) -> None:
    output = _copy(outputs, "webdataset-basic_croissant", tmp_path)
    (output / "00002.tar").unlink()
    done = run_cli("validate", str(output))
    assert done.returncode == 1
    assert "00002.tar: missing" in done.stdout
    assert "00002.tar: listed in croissant.json but missing" in done.stdout
    folder = _copy(outputs, "imagefolder-basic_croissant", tmp_path)
    stray = next(p for p in folder.iterdir() if p.is_dir()) / "9999999.jpg"
    stray.write_bytes(b"not ours")
    done = run_cli("validate", str(folder))
    assert done.returncode == 1
    assert f"{stray.parent.name}/9999999.jpg: not a committed sample" in done.stdout


def test_validate_names_a_key_of_another_shard_and_a_repeated_key(
    outputs: dict[str, Path], tmp_path: Path
) -> None:
    """Keys are checked against the plan one shard at a time (no table of every key seen)."""
    output = _copy(outputs, "webdataset-basic_croissant", tmp_path)
    table = pq.read_table(output / "00001.parquet")
    keys = table.column("key").to_pylist()
    foreign, repeated = f"00000{keys[0][5:]}", keys[1]
    keys[0], keys[2] = foreign, repeated
    table = table.set_column(table.schema.get_field_index("key"), "key", pa.array(keys))
    pq.write_table(table, output / "00001.parquet")
    done = run_cli("validate", str(output))
    assert done.returncode == 1, done.stdout
    assert f"00001.parquet: key {foreign} is not a key of shard 1" in done.stdout
    assert f"00001.parquet: key {repeated} is there twice" in done.stdout


def test_validate_rejects_a_folder_that_is_no_output(tmp_path: Path) -> None:
    done = run_cli("validate", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "holds no FLOW-DC plan" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# -- report ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "combo",
    [
        "webdataset-basic_croissant",
        "imagefolder-basic_croissant",
        "parquet-comprehensive_croissant",
    ],
)
def test_report_has_every_section_and_needs_no_network(
    outputs: dict[str, Path], combo: str
) -> None:
    page = (outputs[combo] / "report.html").read_text(encoding="utf-8")
    for section_id, title in SECTIONS:
        assert f'<section id="{section_id}"><h2>{title}</h2>' in page
    thumbnails = page.count('src="data:image/jpeg;base64,')
    successes = sum(r["status"] == "success" for r in _results(outputs[combo]))
    assert thumbnails == min(THUMBNAILS, successes)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched
    assert "<script" not in page
    assert "127.0.0.2" in page and "not_an_image" in page  # hosts table, failure reasons
    assert page.count("<svg") >= 6


def test_flowdc_report_rewrites_the_page(outputs: dict[str, Path], tmp_path: Path) -> None:
    output = _copy(outputs, "webdataset-basic_croissant", tmp_path)
    (output / "report.html").unlink()
    done = run_cli("report", str(output))
    assert done.returncode == 0, done.stderr
    assert (output / "report.html").read_text(encoding="utf-8").count("<section") == len(SECTIONS)


def _time_bins_of(rows: list[dict[str, Any]]) -> tuple[list[int], list[int], list[float]]:
    """The report's time bins computed from all rows at once, as report.py did before it read
    one shard at a time."""
    times = [row["fetched_at"].timestamp() for row in rows]
    start, span = min(times), max(max(times) - min(times), 1e-3)
    bins = min(40, max(1, len(times) // 4))
    good, bad, megabytes = [0] * bins, [0] * bins, [0.0] * bins
    for when, row in zip(times, rows, strict=True):
        index = min(int((when - start) / span * bins), bins - 1)
        if row["status"] == "success":
            good[index] += 1
            megabytes[index] += (row["bytes"] or 0) / 1e6
        else:
            bad[index] += 1
    return good, bad, megabytes


@pytest.mark.parametrize("combo", ["webdataset-basic_croissant", "imagefolder-basic_croissant"])
def test_report_figures_read_shard_by_shard_equal_those_of_the_whole_table(
    outputs: dict[str, Path], combo: str
) -> None:
    from flowdc.metadata.report_figures import gather
    from flowdc.metadata.tables import read_stats
    from flowdc.planning.plan import Plan

    plan = Plan.load(outputs[combo])
    assert plan is not None and plan.shard_count >= 3
    figures = gather(plan, read_stats(plan))
    rows = _results(outputs[combo])
    good, bad, megabytes = _time_bins_of(rows)
    assert (figures.time.good, figures.time.bad) == (good, bad)
    assert figures.time.mb_per_s == pytest.approx([mb / figures.time.width for mb in megabytes])
    stored = [row for row in rows if row["status"] == "success"]
    assert figures.stored == Counter(row["shard"] for row in stored)
    for (counts, edges), name in ((figures.widths, "width"), (figures.heights, "height")):
        values = sorted(row[name] for row in stored if row[name])
        low, high = values[0], values[min(len(values) - 1, int(len(values) * 0.99))]
        assert sum(counts) == len(values) and edges[0] == low
        assert edges[-1] == pytest.approx(high if high > low else low + 1)
    sizes = sorted(row["bytes"] / 1024 for row in stored)
    assert sum(figures.sizes[0]) == len(sizes) and figures.sizes[1][0] == sizes[0]


def _chromium(page: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip


@pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="Debian's chromium is not installed (make test installs it where apt-get can)",
)
def test_report_opens_in_headless_chromium_without_console_errors(
    outputs: dict[str, Path], tmp_path: Path
) -> None:
    # First prove that a console error would be seen at all.
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>console.error('seen-it')</script></body></html>")
    control = _chromium(broken, tmp_path / "control")
    assert "seen-it" in control.stderr and ":CONSOLE" in control.stderr
    done = _chromium(outputs["webdataset-comprehensive_croissant"] / "report.html", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ":CONSOLE" not in done.stderr, done.stderr
    for section_id, _ in SECTIONS:
        assert f'id="{section_id}"' in done.stdout


# -- web-scale lists ---------------------------------------------------------------------------
def test_overview_lists_the_biggest_hosts_and_sums_the_others(
    fresh_server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LAION-style list has millions of hosts: overview.json listed every one (about 440
    bytes each: 8.8 MB for 20,000 hosts, gigabytes at web scale). Nothing listens on port 9 of
    these loopback addresses, so each of those rows fails at once."""
    import flowdc.metadata.overview as overview_module

    monkeypatch.setattr(overview_module, "MAX_LISTED_HOSTS", 5)
    urls = [fresh_server.url(f"img/{i}.jpg") for i in range(3)]
    urls += [f"http://127.9.0.{i}:9/x.jpg" for i in range(1, 9)]
    source = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": urls}), source)

    result = flowdc.download(
        input=str(source), output=str(tmp_path / "ds"), **{**QUICK_RUN, "max_retry_attempts": 0}
    )

    overview = json.loads((tmp_path / "ds" / "overview.json").read_text())
    listed = overview["per_host"]
    assert len(listed) == 5
    assert listed["127.0.0.1"]["rows"] == 3  # the biggest host first
    others = overview["per_host_others"]
    assert others["hosts"] == 4 and others["rows"] == 4 and others["failures"] == 4
    assert sum(f["rows"] for f in listed.values()) + others["rows"] == result.total == 11
    report = (tmp_path / "ds" / "report.html").read_text()
    assert "and 4 more hosts" in report
