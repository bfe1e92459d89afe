"""report.html: one self-contained page that shows at a glance whether a run went well.

Charts are inline SVG, thumbnails are JPEG data URIs, there is no script and no link out, so the
page opens anywhere, offline. Everything comes from the overview figures and from the results
tables, read one shard at a time (report_figures.py).
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections import Counter, defaultdict
from html import escape
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.config.options import DownloadConfig
from flowdc.core.files import atomic_write_text
from flowdc.core.layout import (
    OVERVIEW_FILE,
    REPORT_FILE,
    SPLITS_SUMMARY,
    parquet_shard_path,
    tar_path,
)
from flowdc.core.status import CLASS_CAPPED, CLASS_TOO_SMALL
from flowdc.metadata import svg
from flowdc.metadata.overview import build_overview
from flowdc.metadata.report_figures import gather, sample_rows
from flowdc.metadata.tables import read_stats
from flowdc.planning.plan import Plan
from flowdc.shard.writers.parquet import IMAGE_COLUMN

THUMBNAILS = 24
THUMB_SIZE = 128
SECTIONS = (
    ("summary", "Summary"),
    ("throughput", "Throughput over time"),
    ("timeline", "Successes and failures over time"),
    ("failures", "Failure reasons"),
    ("hosts", "Hosts"),
    ("classes", "Class distribution"),
    ("licenses", "Licences and attribution"),
    ("sizes", "Image sizes"),
    ("resolution", "Image resolution"),
    ("samples", "Sample images"),
    ("splits", "Training splits and leakage check"),
    ("run", "Run settings and versions"),
)
_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:980px;color:#222;padding:0 12px}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.verdict{padding:10px 14px;border-radius:6px;font-weight:600}
.good{background:#e8f5e9;color:#1b5e20} .fair{background:#fff8e1;color:#8d6e00}
.poor{background:#ffebee;color:#b71c1c}
.figures{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.figures div{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:120px}
.figures b{display:block;font-size:20px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left} td.n{text-align:right}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.grid figure{margin:0;width:128px;font-size:11px;text-align:center;overflow:hidden}
.grid img{width:128px;height:128px;object-fit:cover;border-radius:4px;background:#eee}
.empty{color:#777} svg.chart{max-width:100%;height:auto}
nav a{margin-right:10px;font-size:13px}
"""


def current_overview(plan: Plan) -> dict[str, Any]:
    """The overview of the output as it is now, with the settings of its last run."""
    config = None
    try:
        inputs = json.loads((Path(plan.output) / OVERVIEW_FILE).read_text(encoding="utf-8"))
        config = DownloadConfig(**inputs["script_inputs"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if config is None:
        config = DownloadConfig(input=plan.input, output=plan.output, label=plan.label_column)
    return build_overview(plan, config)


def _thumbnail(data: bytes) -> str | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((THUMB_SIZE, THUMB_SIZE))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=70)
    except Exception:  # a file Pillow cannot decode is shown as missing
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _samples(plan: Plan, stored: dict[int, int]) -> list[tuple[str, str, str | None]]:
    """(key, label, data URI) for up to THUMBNAILS stored images, spread over the shards.

    Each chosen shard gives its first stored images, so a tar is read only up to them: walking
    a tar's headers to its end costs seconds for a shard of 10,000 samples.
    """
    picked = sample_rows(plan, stored, THUMBNAILS)
    output = Path(plan.output)
    images: dict[str, bytes] = {}
    by_shard: dict[int, set[str]] = defaultdict(set)
    for row in picked:
        by_shard[row["shard"]].add(row["path"])
    if plan.output_format == "parquet":
        for shard, names in by_shard.items():
            images.update(_parquet_images(parquet_shard_path(output, shard), names))
    elif plan.output_format == "webdataset":
        for shard, names in by_shard.items():
            try:
                with tarfile.open(tar_path(output, shard)) as tar:
                    for member in tar:
                        if member.name in names:
                            extracted = tar.extractfile(member)
                            if extracted is not None:
                                images[member.name] = extracted.read()
                            names.discard(member.name)
                            if not names:
                                break
            except (OSError, tarfile.TarError):
                continue
    else:
        for row in picked:
            try:
                images[row["path"]] = (output / row["path"]).read_bytes()
            except OSError:
                continue
    return [
        (
            row["key"],
            row["label"] or "",
            _thumbnail(images[row["path"]]) if row["path"] in images else None,
        )
        for row in picked
    ]


def _parquet_images(path: Path, names: set[str]) -> dict[str, bytes]:
    """The images named in a Parquet shard, read a batch of rows at a time up to the last."""
    found: dict[str, bytes] = {}
    try:
        with pq.ParquetFile(path) as shard:
            for batch in shard.iter_batches(batch_size=64, columns=[IMAGE_COLUMN]):
                paths = pc.struct_field(batch.column(0), "path").to_pylist()
                for position, name in enumerate(paths):
                    if name in names and name not in found:
                        data = pc.struct_field(batch.column(0), "bytes")[position].as_py()
                        found[name] = data or b""
                if len(found) == len(names):
                    break
    except (OSError, ValueError):  # pyarrow's errors: the thumbnails are shown as missing
        pass
    return found


def _figure(label: str, value: str) -> str:
    return f"<div>{escape(label)}<b>{escape(value)}</b></div>"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{value:,}</td>'
            if isinstance(value, int)
            else f"<td>{escape(str(value))}</td>"
            for value in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _hosts_down(down: dict[str, dict[str, int]]) -> str:
    if not down:
        return "<p>No host was marked down.</p>"
    return (
        "<h3>Hosts marked down</h3><p>After a run of connection failures or timeouts their "
        "remaining URLs failed at once as <code>host_unavailable</code>; "
        "<code>flowdc download ... --retry_failed</code> takes them again.</p>"
        + _table(
            ["host", "URLs unavailable", "times marked down"],
            [
                [h, f["urls_unavailable"], f["times_marked_down"]]
                for h, f in list(down.items())[:50]
            ],
        )
    )


def _licenses(summary: dict[str, Any] | None) -> str:
    if not summary:
        return '<p class="empty">the input has no licence column (see --license_col)</p>'
    counts = summary["counts"].items()
    rows = [[c["name"], licence, c["rows"], c["images"]] for licence, c in counts]
    chosen = summary.get("filter")
    return (
        f"<p>Licences of the column '{escape(summary['column'])}'"
        + (f"; --license_filter kept {escape(', '.join(chosen))}" if chosen else "")
        + ". attribution.csv credits each stored image: licence, rights holder, creator and "
        "source record.</p>" + _table(["licence", "canonical form", "rows", "images"], rows)
    )


def _splits(output: Path, stored: int) -> str:
    """splits.json as a table, with its leakage check; a split older than the stored samples
    (a run added some since) says so."""
    try:
        split = json.loads((output / SPLITS_SUMMARY).read_text(encoding="utf-8"))
        counts, check = split["counts"], split["leakage_check"]
    except (OSError, ValueError, KeyError, TypeError):
        return (
            '<p class="empty">not split: <code>flowdc split OUTPUT --ratios 0.8,0.1,0.1</code> '
            "makes train, validation and test splits that keep groups and identical images "
            "together</p>"
        )
    linked = ", ".join(check.get("checked", []))
    if check.get("ok"):
        verdict = (
            f'<p class="verdict good">Leakage check passed: no {escape(linked)} value is in '
            "two splits.</p>"
        )
    else:
        found = ", ".join(f"{k} {v}" for k, v in check.get("values_in_two_splits", {}).items())
        verdict = '<p class="verdict poor">Leakage check FAILED: values in two splits: '
        verdict += f"{escape(found)}. Please report this.</p>"
    stale = ""
    if split.get("samples") != stored:
        stale = (
            f'<p class="verdict fair">{stored:,} samples are stored, {split.get("samples", 0):,}'
            " were split: run <code>flowdc split</code> again.</p>"
        )
    small = split.get("whole_to_train") or {}
    ratios = ", ".join(f"{name} {share:g}" for name, share in split.get("ratios", {}).items())
    return (
        verdict
        + stale
        + f"<p>Ratios {escape(ratios)}, seed {escape(str(split.get('seed')))}, stratified by "
        + f"{escape(str(split.get('by') or 'nothing'))}; {split.get('units', 0):,} units "
        + f"(the largest holds {split.get('largest_unit', 0):,} samples).</p>"
        + _table(["split", "samples"], [[name, count] for name, count in counts.items()])
        + (
            f"<p>{len(small):,} class(es) had too few units to split and went whole to train: "
            + escape(", ".join(f"{name} ({n})" for name, n in list(small.items())[:20]))
            + (", ..." if len(small) > 20 else "")
            + "</p>"
            if small
            else ""
        )
    )


def _class_sampling(sampling: dict[str, Any] | None) -> str:
    """The class distribution before and after --max_per_class / --min_per_class."""
    if not sampling:
        return ""
    before, after = sampling["before"], sampling["after"]
    options = ", ".join(
        f"--{name} {sampling[name]}"
        for name in ("max_per_class", "min_per_class", "seed")
        if sampling.get(name) is not None
    )
    return (
        f"<h3>Rows per class, before and after {escape(options)}</h3><p>"
        f"{sampling['class_capped_rows']:,} rows left out of their class's sample "
        f"(<code>class_capped</code>), {sampling['class_too_small_rows']:,} rows of "
        f"{sampling['classes_too_small']:,} classes too small (<code>class_too_small</code>); "
        "never requested.</p>"
        + _table(
            ["", "classes", "rows", "smallest class", "median class", "largest class"],
            [
                [when, s["classes"], s["rows"], s["smallest"], f"{s['median']:g}", s["largest"]]
                for when, s in (("in the list", before), ("requested", after))
            ],
        )
    )


def _verdict(summary: dict[str, Any], overview: dict[str, Any]) -> tuple[str, str]:
    """Success over the rows the run requested: rows the class sampling left out are no
    failure of the run."""
    shards = overview["shards"]
    unfinished = shards["total"] - shards["committed"]
    breakdown = overview.get("error_breakdown") or {}
    left_out = breakdown.get(CLASS_CAPPED, 0) + breakdown.get(CLASS_TOO_SMALL, 0)
    rate = summary["success_rate_percent"]
    text = f"{summary['successful']:,} of {summary['total']:,} images downloaded ({rate}%)"
    if left_out:
        tried = summary["processed"] - left_out
        rate = round(100.0 * summary["successful"] / tried, 2) if tried else 0.0
        text = (
            f"{summary['successful']:,} of {tried:,} requested images downloaded ({rate}%); "
            f"{left_out:,} rows left out by the class sampling"
        )
    if unfinished:
        return "poor", f"{text}; {unfinished} shard(s) not finished: run the same command again"
    if rate >= 90:
        return "good", f"The run went well: {text}"
    if rate >= 50:
        return "fair", f"The run finished with many failures: {text}"
    return "poor", f"Most downloads failed: {text}"


def build_report(plan: Plan, overview: dict[str, Any]) -> str:
    """The HTML page for the output of `plan`."""
    stats = read_stats(plan)
    figures = gather(plan, stats)
    summary = overview["download_summary"]
    kind, verdict = _verdict(summary, overview)
    name = (overview.get("script_inputs") or {}).get("dataset_name") or Path(plan.output).name
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<link rel='icon' href='data:,'>",
        f"<title>FLOW-DC report: {escape(name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(name)}</h1><p>{escape(plan.output)} ({escape(plan.output_format)}), "
        f"from {escape(Path(plan.input).name)}</p>",
        "<nav>" + "".join(f'<a href="#{sid}">{escape(t)}</a>' for sid, t in SECTIONS) + "</nav>",
    ]

    def section(section_id: str, *content: str) -> None:
        title = dict(SECTIONS)[section_id]
        parts.append(f'<section id="{section_id}"><h2>{escape(title)}</h2>{"".join(content)}')
        parts.append("</section>")

    section(
        "summary",
        f'<p class="verdict {kind}">{escape(verdict)}</p><div class="figures">',
        _figure("images", f"{summary['successful']:,}"),
        _figure("failed", f"{summary['failed']:,}"),
        _figure("success rate", f"{summary['success_rate_percent']}%"),
        _figure("data", f"{summary['total_data_mb']:,} MB"),
        _figure("wall time", f"{summary['total_time_seconds']:,} s"),
        _figure("average MB/s", f"{summary['average_speed_mb_per_s']}"),
        _figure("images/s", f"{summary['images_per_second']}"),
        _figure("retries", f"{summary['retries']:,}"),
        _figure(
            "requests saved (repeated URLs)",
            f"{summary.get('requests_saved_by_repeated_urls', 0):,}",
        ),
        "</div>",
    )
    time = figures.time
    labels, good, bad, mb_per_s = time.labels, time.good, time.bad, time.mb_per_s
    per_second = [g / time.width for g in good]
    section(
        "throughput",
        "<p>Images per second (line) and MB per second over the run, from each row's "
        "finish time.</p>",
        svg.line_chart(per_second, labels, "images/s"),
        svg.line_chart(mb_per_s, labels, "MB/s"),
    )
    section(
        "timeline",
        "<p>Rows finished per time step: successes green, failures red.</p>",
        svg.stacked_bars(good, bad, labels, "rows"),
    )
    breakdown = list((overview.get("error_breakdown") or {}).items())
    messages = list((overview.get("error_messages") or {}).items())[:15]
    codes = list((overview.get("http_status_counts") or {}).items())
    section(
        "failures",
        "<h3>By status</h3>",
        svg.bar_list(breakdown, "bad"),
        "<h3>Most common errors</h3>",
        _table(["error", "rows"], [[m, c] for m, c in messages]) if messages else "<p>none</p>",
        "<h3>HTTP status codes</h3>",
        _table(["status", "responses"], [[k, v] for k, v in codes]) if codes else "<p>none</p>",
    )
    hosts = overview.get("per_host") or {}
    more = max(len(hosts) - 50, 0) + (overview.get("per_host_others") or {}).get("hosts", 0)
    host_rows = [
        [
            host,
            f["rows"],
            f["successes"],
            f["failures"],
            f"{f['success_rate_percent']}%",
            f["retries"],
            f"{f['mean_seconds_per_row']:.3f}",
            (f.get("limiter") or {}).get("throttled", ""),
            round((f.get("limiter") or {}).get("held_seconds", 0)),
            (f.get("limiter") or {}).get("rate", ""),
        ]
        for host, f in list(hosts.items())[:50]
    ]
    section(
        "hosts",
        _table(
            [
                "host",
                "rows",
                "ok",
                "failed",
                "success",
                "retries",
                "mean s/row",
                "throttled",
                "held s (Retry-After)",
                "rate req/s",
            ],
            host_rows,
        )
        + (f"<p>and {more:,} more hosts</p>" if more > 0 else "")
        + _hosts_down(overview.get("hosts_down") or {}),
    )
    classes = Counter(overview.get("class_counts") or {})
    top = classes.most_common(40)
    section(
        "classes",
        f"<p>{len(classes):,} classes with images"
        + (", the 40 largest shown" if len(classes) > 40 else "")
        + ".</p>",
        svg.bar_list(top, "ok") if top else '<p class="empty">no labels</p>',
        _class_sampling(overview.get("class_sampling")),
    )
    section("licenses", _licenses(overview.get("licenses")))
    section("sizes", svg.histogram(*figures.sizes, "file size (KiB)"))
    section(
        "resolution",
        svg.histogram(*figures.widths, "width (pixels)"),
        svg.histogram(*figures.heights, "height (pixels)"),
    )
    samples = _samples(plan, figures.stored)
    tiles = "".join(
        f'<figure><img alt="{escape(key)}" src="{uri}"><figcaption>{escape(label)}'
        "</figcaption></figure>"
        if uri
        else f"<figure>(unreadable {escape(key)})</figure>"
        for key, label, uri in samples
    )
    section("samples", f'<div class="grid">{tiles}</div>' if tiles else "<p>no images</p>")
    section("splits", _splits(Path(plan.output), summary["successful"]))
    inputs = overview.get("script_inputs") or {}
    versions = overview.get("versions") or {}
    section(
        "run",
        _table(["setting", "value"], [[k, json.dumps(v)] for k, v in sorted(inputs.items())]),
        _table(["package", "version"], [[k, v] for k, v in versions.items()]),
        _table(
            ["run started", "seconds", "shards run", "interrupted"],
            [
                [
                    r.get("started_at", ""),
                    r.get("seconds", ""),
                    r.get("shards_run", 0),
                    r.get("interrupted", ""),
                ]
                for r in overview.get("runs", [])
            ],
        ),
    )
    parts.append("</body></html>")
    return "".join(parts)


def write_report(plan: Plan, overview: dict[str, Any]) -> Path:
    path = Path(plan.output) / REPORT_FILE
    atomic_write_text(path, build_report(plan, overview))
    return path
