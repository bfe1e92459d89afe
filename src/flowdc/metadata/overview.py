"""overview.json: what a run made, computed from the results tables (so any engine, any resume,
gives the same numbers). FLOW-DC's original field names are kept; more are added.

Rows that repeat an earlier row's URL were not requested (`same_url_as` in their results):
`requests_saved_by_repeated_urls` counts them. `class_sampling` is the plan's record of
--max_per_class / --min_per_class: the class distribution before and after."""

from __future__ import annotations

import json
import platform
from collections import Counter
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flowdc.config.options import DownloadConfig
from flowdc.core.files import atomic_write_text
from flowdc.core.layout import OVERVIEW_FILE, RUNS_FILE, is_remote
from flowdc.core.results import HOST_COUNTS
from flowdc.core.status import HOST_UNAVAILABLE, SUCCESS
from flowdc.core.version import __version__
from flowdc.metadata.attribution import license_summary
from flowdc.metadata.tables import read_stats, shard_tables, value_counts
from flowdc.planning.plan import Plan

MAX_LISTED_HOSTS = 1000
"""per_host lists the hosts with the most rows, the others are summed in per_host_others: a
web-scale URL list has millions of hosts, at about 440 bytes each in overview.json."""
_COLUMNS = [
    "status",
    "error",
    "http_status",
    "attempts",
    "bytes",
    "label",
    "host",
    "elapsed_seconds",
]


def _versions() -> dict[str, str]:
    versions = {"flowdc": __version__, "python": platform.python_version()}
    for package in ("aiohttp", "pyarrow", "pillow", "pydantic", "tqdm", "uvloop", "yarl"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def read_runs(output: Path) -> list[dict[str, Any]]:
    path = output / RUNS_FILE
    if not path.exists():
        return []
    runs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
    return runs


def append_run(output: Path, run: dict[str, Any]) -> None:
    with open(output / RUNS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(run) + "\n")


def _error_kind(message: str | None) -> str:
    """Group messages that differ only in detail: 'HTTP 404 Not Found', 'timeout after 30 s'."""
    if not message:
        return "unknown"
    return message.split(":")[0][:80]


def _add_hosts(hosts: dict[str, dict[str, Any]], table: pa.Table) -> None:
    """Per-host counts from one results table (rows without a host: invalid URLs)."""
    retries = pc.max_element_wise(pc.subtract(table.column("attempts"), 1), 0)
    for row in (
        table.append_column("retries", retries)
        .group_by("host")
        .aggregate(
            [
                ("status", "count"),
                ("retries", "sum"),
                ("elapsed_seconds", "sum"),
            ]
        )
        .to_pylist()
    ):
        host = row["host"] if row["host"] is not None else "(no host)"
        entry = hosts.setdefault(
            host,
            {"rows": 0, "successes": 0, "retries": 0, "elapsed_seconds_sum": 0.0, "unavailable": 0},
        )
        entry["rows"] += row["status_count"]
        entry["retries"] += row["retries_sum"] or 0
        entry["elapsed_seconds_sum"] += row["elapsed_seconds_sum"] or 0.0
    ok = table.filter(pc.equal(table.column("status"), SUCCESS))
    for host, count in value_counts(ok.column("host")).items():
        hosts[host if host is not None else "(no host)"]["successes"] += count
    down = table.filter(pc.equal(table.column("status"), HOST_UNAVAILABLE))
    for host, count in value_counts(down.column("host")).items():
        hosts[host]["unavailable"] += count


def _finish_hosts(
    hosts: dict[str, dict[str, Any]], stats: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Rates and means per host, merged with the limiter's figures from the shard stats
    ("hosts": requests, successes, throttled, rate, latency_sum), when a version wrote them.
    `rate` is the highest rate (requests/s) one process's limiter had settled at when a shard
    ended; `mean_latency` is seconds to the response headers over all requests."""
    limiter: dict[str, dict[str, Any]] = {}
    for shard in stats:
        for host, figures in (shard.get("hosts") or {}).items():
            merged = limiter.setdefault(host, {})
            for name in HOST_COUNTS:
                if isinstance(figures.get(name), (int, float)):
                    merged[name] = merged.get(name, 0) + figures[name]
            if isinstance(figures.get("rate"), (int, float)):
                merged["rate"] = max(merged.get("rate", 0.0), figures["rate"])
    result = {}
    for host, entry in sorted(hosts.items(), key=lambda item: (-item[1]["rows"], item[0])):
        rows = entry["rows"]
        figures = {
            "rows": rows,
            "successes": entry["successes"],
            "failures": rows - entry["successes"],
            "success_rate_percent": round(100.0 * entry["successes"] / rows, 2) if rows else 0.0,
            "retries": entry["retries"],
            "unavailable": entry["unavailable"],
            "mean_seconds_per_row": round(entry["elapsed_seconds_sum"] / rows, 4) if rows else 0.0,
        }
        if host in limiter:
            figures["limiter"] = {
                name: round(value, 4) if isinstance(value, float) else value
                for name, value in limiter[host].items()
            }
            requests = limiter[host].get("requests")
            if requests and "latency_sum" in limiter[host]:
                figures["limiter"]["mean_latency"] = round(
                    limiter[host]["latency_sum"] / requests, 4
                )
        result[host] = figures
    return result


def _hosts_down(per_host: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Hosts their circuit breaker marked down (fetch/breaker.py), and the URLs that cost."""
    return {
        host: {
            "urls_unavailable": figures["unavailable"],
            "times_marked_down": (figures.get("limiter") or {}).get("marked_down", 0),
        }
        for host, figures in sorted(per_host.items(), key=lambda item: -item[1]["unavailable"])
        if figures["unavailable"] or (figures.get("limiter") or {}).get("marked_down")
    }


def _other_hosts(figures: list[dict[str, Any]]) -> dict[str, int] | None:
    """The hosts per_host leaves out, summed; None when it lists every host."""
    if not figures:
        return None
    names = ("rows", "successes", "failures", "retries", "unavailable")
    return {"hosts": len(figures), **{name: sum(f[name] for f in figures) for name in names}}


def build_overview(plan: Plan, config: DownloadConfig) -> dict[str, Any]:
    output = Path(plan.output)
    statuses: Counter[str] = Counter()
    http_statuses: Counter[str] = Counter()
    error_messages: Counter[str] = Counter()
    per_class: Counter[str] = Counter()
    hosts: dict[str, dict[str, Any]] = {}
    total_bytes = 0
    retries = 0
    committed = 0
    saved = 0
    # counted by Arrow, one shard at a time
    for _, table in shard_tables(plan, [*_COLUMNS, "same_url_as"]):
        committed += 1
        if "same_url_as" in table.column_names:  # outputs of earlier versions lack it
            saved += len(table) - table.column("same_url_as").null_count
        statuses.update(value_counts(table.column("status")))
        for code, count in value_counts(table.column("http_status")).items():
            if code is not None:
                http_statuses[str(code)] += count
        ok = pc.equal(table.column("status"), SUCCESS)
        total_bytes += pc.sum(pc.if_else(ok, table.column("bytes"), 0)).as_py() or 0
        retries += (
            pc.sum(pc.max_element_wise(pc.subtract(table.column("attempts"), 1), 0)).as_py() or 0
        )
        failed = table.filter(pc.invert(ok))
        for message, count in value_counts(failed.column("error")).items():
            error_messages[_error_kind(message)] += count
        if plan.label_column:
            labels = value_counts(table.filter(ok).column("label"))
            per_class.update({label: n for label, n in labels.items() if label is not None})
        _add_hosts(hosts, table)
    per_host = _finish_hosts(hosts, read_stats(plan))
    processed = sum(statuses.values())
    successful = statuses.get(SUCCESS, 0)
    runs = read_runs(output)
    seconds = sum(run.get("seconds", 0.0) for run in runs)
    data_mb = total_bytes / 1e6
    return {
        "script_inputs": config.model_dump(mode="json"),
        "download_summary": {
            "total": plan.total_rows,
            "processed": processed,
            "successful": successful,
            "failed": processed - successful,
            "not_yet_processed": plan.total_rows - processed,
            "success_rate_percent": round(100.0 * successful / processed, 2) if processed else 0.0,
            "total_data_mb": round(data_mb, 3),
            "total_time_seconds": round(seconds, 3),
            "average_speed_mb_per_s": round(data_mb / seconds, 3) if seconds else 0.0,
            "images_per_second": round(successful / seconds, 2) if seconds else 0.0,
            "retries": retries,
            "requests_saved_by_repeated_urls": saved,
        },
        "error_breakdown": {k: v for k, v in statuses.most_common() if k != SUCCESS},
        "error_messages": dict(error_messages.most_common(50)),
        "http_status_counts": dict(sorted(http_statuses.items())),
        "class_counts": dict(sorted(per_class.items())) if plan.label_column else None,
        "class_sampling": plan.class_sampling,
        "per_host": dict(list(per_host.items())[:MAX_LISTED_HOSTS]),
        "per_host_others": _other_hosts(list(per_host.values())[MAX_LISTED_HOSTS:]),
        "hosts_down": _hosts_down(per_host),
        "licenses": license_summary(plan, config),
        "shards": {
            "total": plan.shard_count,
            "committed": committed,
            "shard_size": plan.shard_size,
            # sent back by a TaskVine worker and refused by the manager's checks (then rerun)
            "rejected": sum(run.get("shards_rejected", 0) for run in runs),
        },
        "input": {
            "path": plan.input,
            "format": plan.input_format,
            "rows": plan.total_rows,
            "url_column": plan.url_column,
            "label_column": plan.label_column,
            "extra_columns": list(plan.extra_columns.values()),
            "unlabeled_rows": plan.unlabeled_rows,
            "repeated_url_rows": plan.repeated_url_rows,
        },
        # an output on object storage is built in a local staging folder: name the real one
        "output": {
            "path": config.output if is_remote(config.output) else str(output),
            "format": plan.output_format,
        },
        "runs": runs,
        "versions": _versions(),
    }


def write_overview(plan: Plan, config: DownloadConfig) -> dict[str, Any]:
    overview = build_overview(plan, config)
    atomic_write_text(
        Path(plan.output) / OVERVIEW_FILE, json.dumps(overview, indent=2, ensure_ascii=False)
    )
    return overview
