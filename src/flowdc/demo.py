"""`flowdc demo`: a whole run on a machine with no network, start to finish.

Generates images, serves them from a local server on 127.0.0.1 and 127.0.0.2 with a few URLs that
fail (404, an HTML page, a server error, an invalid URL) and one that needs a retry, downloads
them into a dataset and shows what was made.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.config.loading import build_config
from flowdc.core.errors import FlowDCError
from flowdc.runner import run_download
from flowdc.storage.output import clear_output, is_flowdc_output
from flowdc.testserver import ImageServer, make_image

CLASSES = [
    "Araneus diadematus",
    "Argiope bruennichi",
    "Pisaura mirabilis",
    "Salticus scenicus",
    "Tegenaria domestica",
]
DEMO_MARK = ".flowdc-demo"


def _rows(server: ImageServer, count: int) -> list[dict[str, str]]:
    rows = []
    for index in range(count):
        rows.append(
            {
                "photo_url": server.url(f"img/{index}.jpg", host=index % 2),
                "taxon_name": CLASSES[index % len(CLASSES)],
                "photo_id": str(100000 + index),
            }
        )
    broken = [
        ("status/404/missing.jpg", "a missing image (404)"),
        ("html/page.jpg", "an HTML page served as 200"),
        ("status/500/error.jpg", "a server error that persists"),
        ("flaky/1/0.jpg", "a server error that a retry fixes"),
        ("empty/nothing.jpg", "an empty body"),
    ]
    for path, _ in broken:
        rows.append({"photo_url": server.url(path), "taxon_name": CLASSES[0], "photo_id": path})
    rows.append(
        {
            "photo_url": "ftp://example.invalid/not-http.jpg",
            "taxon_name": CLASSES[1],
            "photo_id": "invalid",
        }
    )
    return rows


def run_demo(output: str, output_format: str, count: int) -> int:
    target = Path(output)
    if target.exists() and any(target.iterdir()):
        if not (target / DEMO_MARK).exists() or not is_flowdc_output(target):
            raise FlowDCError(f"{target} exists and is not an earlier demo; pick --output")
    print(f"generating {count} images ...")
    images = {
        f"{i}.jpg": make_image(i, 160 + (i % 5) * 40, 120 + (i % 3) * 30) for i in range(count)
    }
    with (
        ImageServer(images, hosts=("127.0.0.1", "127.0.0.2")) as server,
        tempfile.TemporaryDirectory() as scratch,
    ):
        table_path = Path(scratch) / "demo_urls.parquet"
        pq.write_table(pa.Table.from_pylist(_rows(server, count)), table_path)
        print(f"serving them from {server.url('', 0)} and {server.url('', 1)}")
        if target.exists():
            clear_output(target, table_path)
        config = build_config(
            overrides={
                "input": str(table_path),
                "output": str(target),
                "output_format": output_format,
                "url": "photo_url",
                "label": "taxon_name",
                "shard_size": 100,
                "concurrent_downloads": 64,
                "retry_backoff_sec": 0.1,
                "timeout": 10,
                "enable_rate_limiting": False,
                "dataset_name": "FLOW-DC demo",
                "dataset_license": "CC0-1.0",  # the images are generated
                "dataset_creator": "FLOW-DC demo",
            },
            source="demo",
        )
        summary = run_download(config)
    (target / DEMO_MARK).write_text("made by flowdc demo\n", encoding="utf-8")
    _show(target, summary.overview, output_format)
    return 0


def _show(target: Path, overview: dict, output_format: str) -> None:
    numbers = overview["download_summary"]
    print()
    print(f"dataset: {target.resolve()}  ({output_format})")
    print(
        f"  {numbers['successful']} of {numbers['total']} images "
        f"({numbers['success_rate_percent']}%), {numbers['total_data_mb']} MB, "
        f"{numbers['retries']} retries"
    )
    print(f"  failures: {json.dumps(overview['error_breakdown'])}")
    print(f"  classes: {json.dumps(overview['class_counts'], ensure_ascii=False)}")
    files = sorted(p.name for p in target.iterdir() if not p.name.startswith("."))
    print(f"  files: {', '.join(files[:12])}{' ...' if len(files) > 12 else ''}")
    print(f"  overview: {target / 'overview.json'}")
    print(f"  report:   {target / 'report.html'} (open it in a browser)")
    if (target / "croissant.json").exists():
        print(f"  croissant: {target / 'croissant.json'}   check it all: flowdc validate {target}")
    if output_format == "webdataset":
        print(
            "load it:  import webdataset as wds; "
            f"wds.WebDataset('{target}/{{00000..{overview['shards']['total'] - 1:05d}}}.tar')"
            ".decode('pil')"
        )
    elif output_format == "parquet":
        print(
            "load it:  datasets.load_dataset('parquet', "
            f"data_files='{target}/*.images.parquet', split='train')"
        )
    else:
        print(f"load it:  datasets.load_dataset('imagefolder', data_dir='{target}')")
