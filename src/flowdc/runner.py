"""One download run: check the output, plan (or reuse the plan), run pending shards, finish."""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.config.options import UNVERIFIED_TLS_WARNING, DownloadConfig
from flowdc.core.errors import FlowDCError, Interrupted
from flowdc.core.layout import (
    ATTRIBUTION_FILE,
    OVERVIEW_FILE,
    RUNS_FILE,
    is_committed,
    is_remote,
    results_path,
)
from flowdc.core.results import ShardResult
from flowdc.engines import engine_for
from flowdc.engines.base import Engine, EngineOutcome, Progress
from flowdc.interactive import in_notebook, tqdm_class
from flowdc.metadata.finish import finish_metadata
from flowdc.metadata.overview import append_run, build_overview, write_overview
from flowdc.planning.inputs import InputTable
from flowdc.planning.plan import (
    Plan,
    check_columns,
    check_plan_matches,
    make_plan,
    shard_size_for,
    write_labels_file,
)
from flowdc.shard.retry import retry_rows
from flowdc.storage import remote
from flowdc.storage.output import OutputLock, check_output, clear_output, remove_if_unused
from flowdc.storage.remote import stage_input

Echo = Callable[[str], None]


@dataclass
class RunSummary:
    output: str
    total_rows: int
    shards_total: int
    shards_run: int
    shards_skipped: int
    seconds: float
    overview: dict[str, Any] = field(default_factory=dict)
    shard_errors: dict[int, str] = field(default_factory=dict)


def _try_append_run(output: Path, run: dict[str, Any]) -> None:
    """Record the run; a full disk must not hide the shard errors that matter more."""
    try:
        append_run(output, run)
    except OSError as exc:
        _stderr(f"warning: could not record the run in {output}: {exc.strerror}")


def _remove_empty_label_folders(plan: Plan) -> None:
    """A killed shard's rerun may leave a label folder with no image (its URLs failed this
    time); torchvision would count it as a class, or refuse the dataset. Only FLOW-DC's own
    label folders are looked at, and only an empty one is removed."""
    for folder in set((plan.label_folders or {}).values()):
        try:
            (Path(plan.output) / folder).rmdir()
        except OSError:
            continue  # absent, or holds images


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _retryable_rows(plan: Plan) -> dict[int, int]:
    """Committed shards with rows worth retrying, and how many."""
    output = Path(plan.output)
    found = {}
    for shard in range(plan.shard_count):
        if is_committed(output, shard):
            rows = retry_rows(results_path(output, shard))
            if rows:
                found[shard] = len(rows)
    return found


class _Sink:
    """The engine's progress to the bar; committed shards' results kept for the run's record."""

    def __init__(self, bar: _ProgressBar) -> None:
        self.bar = bar
        self.results: list[ShardResult] = []

    def progress(self, totals: Progress) -> None:
        self.bar.update(totals)

    def shard_done(self, result: ShardResult) -> None:
        self.results.append(result)


class _ProgressBar:
    """images/s (tqdm's rate), MB/s, successes and failures, on stderr. Without a bar (stderr is
    not a terminal: a batch job, nohup, a pipe) and unless told --no-progress, a line every
    LOG_EVERY seconds instead, so a log shows a working run from a stalled one."""

    LOG_EVERY = 30.0

    def __init__(self, total: int, enabled: bool, log: Echo | None = None) -> None:
        import shutil

        from tqdm import tqdm

        bar_class = tqdm_class()  # the notebook bar in Jupyter
        columns = shutil.get_terminal_size((100, 24)).columns
        width = {"ncols": columns if columns > 0 else 100} if bar_class is tqdm else {}
        self.bar = bar_class(
            total=total, unit="img", disable=not enabled, smoothing=0.1, desc="download", **width
        )
        self.started = self.logged = time.monotonic()
        self.total = total
        self.log = None if enabled else log

    def update(self, progress: Progress) -> None:
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-6)
        if self.log is not None and now - self.logged >= self.LOG_EVERY:
            self.logged = now
            done = progress.successes + progress.failures
            self.log(
                f"{done:,} of {self.total:,} rows ({100 * done / max(self.total, 1):.1f}%), "
                f"ok {progress.successes:,}, failed {progress.failures:,}, "
                f"{progress.successes / elapsed:.0f} img/s, "
                f"{progress.bytes / 1e6 / elapsed:.1f} MB/s"
            )
        self.bar.set_postfix_str(
            f"{progress.bytes / 1e6 / elapsed:.1f} MB/s, ok {progress.successes:,}, "
            f"failed {progress.failures:,}",
            refresh=False,
        )
        self.bar.update(progress.successes + progress.failures - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def run_download(config: DownloadConfig, echo: Echo = _stderr) -> RunSummary:
    """Run or resume the download that `config` describes."""
    if not config.verify_tls:
        echo(UNVERIFIED_TLS_WARNING)
    with tempfile.TemporaryDirectory(prefix="flowdc-") as staging:
        local_input = stage_input(config.input, config.storage_options, Path(staging))
        table = InputTable(
            local_input,
            config.input_format,
            wanted=(config.label, config.verify_hash, *config.split_columns()),
        )
        check_columns(config, table)
        if is_remote(config.output):
            return _run_remote(config, table, Path(staging), echo)
        output = Path(config.output)
        made_here = not output.exists()
        check_output(output)
        try:
            with OutputLock(output):
                if config.overwrite:
                    kept = clear_output(output, table.path)
                    if kept:
                        echo(
                            f"--overwrite kept {len(kept)} file(s) FLOW-DC did not make: "
                            + ", ".join(kept[:5])
                            + (", ..." if len(kept) > 5 else "")
                        )
                plan = Plan.load(output)
                if plan is None and config.retry_failed:
                    raise FlowDCError(
                        f"--retry_failed: {output} holds no earlier FLOW-DC run to retry; run the "
                        f"download without --retry_failed first"
                    )
                if plan is not None:
                    check_plan_matches(plan, config, table)
                    return _run_plan(plan, config, echo)
                engine = engine_for(config, echo)
                try:
                    engine.prepare(_shards_before_planning(config, table))
                    echo(f"planning {config.input} ...")
                    plan = make_plan(config, table, source=_source(config))
                    echo(f"planned {plan.total_rows:,} rows in {plan.shard_count} shard(s)")
                    for note in table.notes:
                        echo(note)
                    return _run_plan(plan, config, echo, engine=engine)
                finally:
                    engine.close()  # at once, when planning failed; else it is done already
        except FlowDCError:
            remove_if_unused(output, made_here)  # a bad input leaves nothing behind
            raise


def _shards_before_planning(config: DownloadConfig, table: InputTable) -> int:
    """How many shards the plan will have, when the input says so before it is read (a Parquet
    footer does), else 0: an engine may start its workers while the planning runs."""
    if table.format != "parquet":
        return 0
    try:
        rows = pq.ParquetFile(table.path).metadata.num_rows
    except (OSError, pa.ArrowException):
        return 0  # the planning reports what is wrong with the input
    return -(-rows // shard_size_for(config, rows))


def _source(config: DownloadConfig) -> str | None:
    """What the plan records as its input: a remote input's URL, not the local copy's path."""
    return config.input if is_remote(config.input) else None


def _run_remote(config: DownloadConfig, table: InputTable, staging: Path, echo: Echo) -> RunSummary:
    """An output on object storage: the plan and the finished files are kept in `staging`
    while the run lasts and uploaded; shards are uploaded by the workers (remote.py)."""
    store = remote.RemoteStore(config.output, config.storage_options)
    names = remote.check_remote_output(store, config.overwrite, config.output_format)
    local = staging / "output"
    local.mkdir()
    plan = remote.load_remote_plan(store, local) if names else None
    if plan is not None:
        check_plan_matches(plan, config, table)
    else:
        echo(f"planning {config.input} ...")
        plan = make_plan(config.model_copy(update={"output": str(local)}), table, _source(config))
        remote.push_plan(store, local)
        echo(f"planned {plan.total_rows:,} rows in {plan.shard_count} shard(s)")
        for note in table.notes:
            echo(note)
    if RUNS_FILE in names:
        store.download(RUNS_FILE, local / RUNS_FILE)
    remote.pull_committed(store, local, with_results=False)
    return _run_plan(plan, config, echo, store)


def _run_plan(
    plan: Plan,
    config: DownloadConfig,
    echo: Echo,
    store: remote.RemoteStore | None = None,
    engine: Engine | None = None,
) -> RunSummary:
    output = Path(plan.output)
    rows_to_run = {
        s: plan.shard_rows(s) for s in range(plan.shard_count) if not is_committed(output, s)
    }
    skipped = plan.shard_count - len(rows_to_run)
    if skipped:
        echo(f"resuming: {skipped} of {plan.shard_count} shard(s) already committed")
    if config.retry_failed:
        retrying = _retryable_rows(plan)
        echo(
            f"retrying {sum(retrying.values()):,} failed row(s) worth another try in "
            f"{len(retrying)} committed shard(s)"
        )
        rows_to_run.update(retrying)
        skipped -= len(retrying)
    show_progress = (
        config.progress if config.progress is not None else sys.stderr.isatty() or in_notebook()
    )
    bar = _ProgressBar(
        sum(rows_to_run.values()), show_progress, echo if config.progress is None else None
    )
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    sink = _Sink(bar)
    interrupted = False
    outcome = EngineOutcome()
    try:
        outcome = (engine or engine_for(config, echo)).run(plan, rows_to_run, sink)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        seconds = time.monotonic() - started
        if rows_to_run:
            _try_append_run(
                output,
                {
                    "started_at": started_at,
                    "seconds": round(seconds, 3),
                    "shards_run": len(sink.results),
                    "interrupted": interrupted,
                    "engine": config.engine,
                    **outcome.counters,
                },
            )
            if store is not None:
                remote.push_files(store, output, (RUNS_FILE,))
    if interrupted:
        done = sum(1 for s in range(plan.shard_count) if is_committed(output, s))
        raise Interrupted(
            f"interrupted: {done} of {plan.shard_count} shard(s) are committed in {output}; run "
            f"the same command again to resume"
        )
    if store is not None:
        remote.pull_committed(store, output, with_results=True)
    overview = (
        write_overview(plan, config) if config.create_overview else build_overview(plan, config)
    )
    if plan.output_format == "imagefolder" and plan.labels is not None:
        _remove_empty_label_folders(plan)
        write_labels_file(plan, overview["class_counts"])
    finish_metadata(plan, config, overview, echo)
    if store is not None:
        remote.push_files(
            store, output, (OVERVIEW_FILE, "report.html", "croissant.json", ATTRIBUTION_FILE)
        )
    return RunSummary(
        output=str(output),
        total_rows=plan.total_rows,
        shards_total=plan.shard_count,
        shards_run=len(outcome.results),
        shards_skipped=skipped,
        seconds=seconds,
        overview=overview,
        shard_errors=outcome.errors,
    )
