"""The Python API, re-exported from the package root: download, fetch, fetch_many, results,
split.

`download` is the CLI's `flowdc download` as a function; `fetch` and `fetch_many` get a few URLs
with the same politeness, retries and image checks, writing nothing; `results` reads a dataset's
results tables back (with each sample's split, once `split` made one). Bad input raises
FlowDCError with a one-line message.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowdc.config.groups import OPTION_GROUPS
from flowdc.config.loading import build_config, read_config_file
from flowdc.config.options import UNVERIFIED_TLS_WARNING, DownloadConfig
from flowdc.core.errors import FlowDCError, ImageRejected
from flowdc.core.images import inspect_image
from flowdc.core.status import SUCCESS

if TYPE_CHECKING:
    import pandas
    import pyarrow as pa
    from PIL import Image

ConfigSource = DownloadConfig | str | os.PathLike[str] | Mapping[str, Any]

# fetch writes no dataset: these placeholders fill the two required options it never uses
_INPUT_OUTPUT = {"input": "<fetch>", "output": "<fetch>"}
_OUTPUT_ONLY = {"retry_failed"}


@dataclass(frozen=True)
class DownloadResult:
    """What a `download` call made. `ok` is False when rows are left to a rerun."""

    output: Path
    total: int
    successful: int
    failed: int
    not_processed: int
    failures: dict[str, int]
    seconds: float
    overview: dict[str, Any] = field(repr=False)
    results_files: list[Path] = field(repr=False)
    shard_errors: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.shard_errors and self.not_processed == 0

    def results(self) -> pa.Table:
        """The results tables of this output as one pyarrow Table (one row per input row)."""
        return results(self.output)


@dataclass(frozen=True)
class Fetched:
    """One URL's body and facts. `status` is `success` or the failure's class, as in the results
    table; `data` is kept for a body that is not an image, so it can be looked at."""

    url: str
    status: str
    error: str | None
    http_status: int | None
    content_type: str | None
    data: bytes | None = field(repr=False)
    size: int | None
    sha256: str | None
    width: int | None
    height: int | None
    format: str | None
    attempts: int
    final_url: str | None
    elapsed_seconds: float

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS

    def image(self) -> Image.Image:
        """The image, opened with Pillow; FlowDCError when the fetch did not give one."""
        if not self.ok or self.data is None:
            raise FlowDCError(f"no image from {self.url}: {self.status} ({self.error})")
        from PIL import Image

        return Image.open(io.BytesIO(self.data))


def _config_values(config: ConfigSource | None) -> tuple[dict[str, Any] | None, str]:
    if config is None:
        return None, "keyword arguments"
    if isinstance(config, DownloadConfig):
        return config.model_dump(), "the DownloadConfig and keyword arguments"
    if isinstance(config, (str, os.PathLike)):
        return read_config_file(config), f"{os.fspath(config)} and keyword arguments"
    if isinstance(config, Mapping):
        return dict(config), "the config mapping and keyword arguments"
    raise FlowDCError(
        f"config must be a DownloadConfig, a dict or a config file path, not "
        f"{type(config).__name__}"
    )


def download(config: ConfigSource | None = None, /, **options: Any) -> DownloadResult:
    """Run or resume a download, with the options of `flowdc download` as keyword arguments.

    `config` may be a DownloadConfig, a dict or a JSON config file; keyword arguments override it.
    Raises FlowDCError for bad input, KeyboardInterrupt (after committed shards are kept) when
    interrupted; a rerun with the same options resumes.
    """
    from flowdc.core.errors import Interrupted
    from flowdc.core.layout import is_committed, results_path
    from flowdc.runner import run_download

    values, source = _config_values(config)
    resolved = build_config(values, options, source=source)
    try:
        summary = run_download(resolved)
    except Interrupted as stopped:
        raise KeyboardInterrupt(str(stopped)) from None
    numbers = summary.overview["download_summary"]
    output = Path(summary.output)
    return DownloadResult(
        output=output,
        total=numbers["total"],
        successful=numbers["successful"],
        failed=numbers["failed"],
        not_processed=numbers["not_yet_processed"],
        failures=dict(summary.overview.get("error_breakdown") or {}),
        seconds=round(summary.seconds, 3),
        overview=summary.overview,
        results_files=[
            results_path(output, shard)
            for shard in range(summary.shards_total)
            if is_committed(output, shard)
        ],
        shard_errors=dict(summary.shard_errors),
    )


def _fetch_options() -> list[str]:
    """The CLI's downloading and politeness options, less those that act on an output."""
    groups = [
        g for t, g in OPTION_GROUPS.items() if t == "downloading" or t.startswith("politeness")
    ]
    return [name for group in groups for name in group if name not in _OUTPUT_ONLY]


def _fetch_config(options: dict[str, Any]) -> DownloadConfig:
    allowed = _fetch_options()
    for key in options:
        name = key.replace("-", "_")
        if name not in allowed:
            raise FlowDCError(
                f"fetch does not take '{key}': it writes no dataset; its options are "
                f"{', '.join(allowed)}"
            )
    return build_config(_INPUT_OUTPUT, options, source="fetch options")


def _facts(url: str, fetched: Any) -> Fetched:
    data = fetched.data
    status, error = fetched.status, fetched.error
    width = height = image_format = None
    if fetched.ok and data is not None:
        try:
            info = inspect_image(data)
            width, height, image_format = info.width, info.height, info.extension
        except ImageRejected as rejected:
            status, error = rejected.status, rejected.message
    return Fetched(
        url=url,
        status=status,
        error=error,
        http_status=fetched.http_status,
        content_type=fetched.content_type,
        data=data,
        size=len(data) if data is not None else None,
        sha256=hashlib.sha256(data).hexdigest() if data is not None else None,
        width=width,
        height=height,
        format=image_format,
        attempts=fetched.attempts,
        final_url=fetched.final_url,
        elapsed_seconds=round(fetched.elapsed_seconds, 4),
    )


async def _fetch_all(urls: list[str], config: DownloadConfig) -> list[Fetched]:
    from flowdc.shard.fetch.client import Fetcher

    fetcher = Fetcher(config)
    try:
        answers = await asyncio.gather(*(fetcher.fetch(url) for url in urls))
    finally:
        await fetcher.close()
    return [_facts(url, answer) for url, answer in zip(urls, answers, strict=True)]


def fetch_many(urls: Iterable[str], **options: Any) -> list[Fetched]:
    """Fetch `urls` (answers in their order) with the CLI's downloading and politeness options
    (timeout, max_retry_attempts, rate_limit, ...); nothing is written. Works in a running
    event loop."""
    if isinstance(urls, (str, bytes)):
        raise FlowDCError("fetch_many takes a list of URLs; for one URL use flowdc.fetch(url)")
    from flowdc.interactive import run_sync

    url_list = list(urls)
    config = _fetch_config(options)
    if not url_list:
        return []
    if not config.verify_tls:
        print(UNVERIFIED_TLS_WARNING, file=sys.stderr)
    return run_sync(_fetch_all(url_list, config))


def fetch(url: str, **options: Any) -> Fetched:
    """Fetch one URL: see fetch_many."""
    return fetch_many([url], **options)[0]


def results(output: str | os.PathLike[str]) -> pa.Table:
    """The results tables of a dataset's committed shards, as one pyarrow Table; once the output
    is split, with a `split` column (train, validation, test; empty for a row with no stored
    sample, and for a sample stored after the split was made)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from flowdc.core.layout import SPLITS_FILE, SPLITS_SUMMARY, is_committed, results_path
    from flowdc.planning.plan import Plan

    folder = Path(output)
    if not folder.is_dir():
        raise FlowDCError(f"no dataset folder {folder}; give the output of a FLOW-DC download")
    plan = Plan.load(folder)
    if plan is None:
        raise FlowDCError(f"{folder} is not a FLOW-DC output (no plan); give a download's output")
    files = [
        results_path(folder, shard)
        for shard in range(plan.shard_count)
        if is_committed(folder, shard)
    ]
    if not files:
        raise FlowDCError(f"no shard of {folder} is committed yet; run the download (again)")
    table = pa.concat_tables(pq.read_table(file) for file in files)
    if not (folder / SPLITS_SUMMARY).is_file():  # no split, or one that did not finish
        return table
    splits = pq.read_table(folder / SPLITS_FILE)  # joined by position: the rows keep their order
    where = pc.index_in(table.column("key"), value_set=splits.column("key"))
    return table.append_column("split", pc.take(splits.column("split"), where))


def split(
    output: str | os.PathLike[str],
    ratios: str | Iterable[float] = "0.8,0.1,0.1",
    *,
    by: str | None = None,
    group: str | Iterable[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """`flowdc split`: split the stored samples of a download's output into train, validation
    and test (two ratios: train and test), stratified by `by` (default: the label column),
    keeping equal `group` values and identical images in one split. Returns the summary
    written to splits.json (counts per split and class, the leakage check)."""
    from flowdc.metadata.commands import split_output
    from flowdc.metadata.split_output import SplitRequest

    ratio_values = ratios if isinstance(ratios, str) else list(ratios)
    groups = group if group is None or isinstance(group, str) else list(group)
    return split_output(os.fspath(output), SplitRequest.parse(ratio_values, by, groups, seed))


def results_dataframe(output: str | os.PathLike[str]) -> pandas.DataFrame:
    """`results(output)` as a pandas DataFrame (needs pandas)."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        raise FlowDCError(
            "pandas is not installed: pip install pandas, or use flowdc.results(output)"
        ) from None
    return results(output).to_pandas()
