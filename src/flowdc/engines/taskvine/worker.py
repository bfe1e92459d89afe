"""What a TaskVine worker runs for FLOW-DC: the functions of the serverless library that
`flowdc download --engine taskvine` installs on every worker.

The library process starts once per worker and is kept warm: `warmup` imports what a shard
needs and runs one dummy shard (first-use costs such as pyarrow's parquet writer are paid once),
then freezes the imported objects out of the garbage collector. Each shard is then one
FunctionCall, run in a fork of that process (TaskVine's exec_mode "fork") in a sandbox of its
own, where the manager put the plan (`plan.json`, sent once per worker) and the shard's rows
(`rows.parquet`). The shard runs with the same `run_shard` as every engine:

- gathered mode: into a scratch folder of the sandbox; its samples (the WebDataset tar, or for
  ImageFolder a tar of its images by key), results table and stats marker are left in the
  sandbox under the names below, and TaskVine sends them back to the manager, which checks them
  against the plan before it commits them (storage/verify.py). The worker never sees the
  manager's disk.
- shared mode: into the output itself (a folder every worker mounts, or object storage), as a
  Dask worker does (`run_shard_to`).

`run_call` never raises and returns nothing: it answers in `reply.json` (the manager reads JSON;
a FunctionCall's return value would reach it pickled, and it unpickles nothing a worker sends),
and it leaves every output the manager declared, empty when the shard failed (a missing output
would end the call as "output missing" and lose the answer). A call for another FLOW-DC version
is refused with both versions named; a worker the manager distrusts (it sent back a shard that
failed the checks, or runs another version) is told so in its next call and leaves, saying why
(`flowdc worker` prints it). While the shard runs, `progress.txt` gains a line of
running totals every second; the manager watches it (TaskVine sends a watched file's new bytes
every few seconds).
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import shutil
import signal
import socket
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.config.options import DownloadConfig
from flowdc.core.layout import PLAN_META, is_remote, results_path, stats_path, tar_path
from flowdc.core.results import ShardResult
from flowdc.core.version import __version__
from flowdc.engines.base import install_event_loop_policy
from flowdc.planning.plan import Plan

PLAN_FILE = "plan.json"
ROWS_FILE = "rows.parquet"
PROGRESS_FILE = "progress.txt"
REPLY_FILE = "reply.json"
TAR_FILE = "shard.tar"
RESULTS_FILE = "shard.parquet"
STATS_FILE = "shard_stats.json"
PROGRESS_SECONDS = 1.0
NOTES_ENV = "FLOWDC_WORKER_NOTES"
"""A file `flowdc worker` prints when its vine_worker ends: why the worker left."""
FAULT_ENV = "FLOWDC_TASKVINE_TEST_FAULT"
"""TEST ONLY. Set in a worker's environment, it makes the worker misbehave so that the tests can
check the manager's defences: `flip` (a byte of an image), `drop_row` (a results row),
`extra_member` (a member no row names) change what a gathered shard sends back; `version` makes
the worker claim another FLOW-DC version. Never set it elsewhere."""
TEST_VERSION = "0.0.0-test"

_identity = ""
"""host:pid of the vine_worker this library runs under, set by warmup; it names the worker in
the stats markers of the shards it ran, and the manager distrusts by it."""


@dataclass
class SandboxPlan(Plan):
    """The plan as a worker holds it: its JSON, and the rows of the one shard it runs."""

    rows: pa.Table | None = None

    def read_shard(self, shard: int) -> pa.Table:
        assert self.rows is not None
        return self.rows


def sandbox_plan(plan_json: str, rows: pa.Table, output: str) -> SandboxPlan:
    data = json.loads(plan_json)
    data["output"] = output
    return SandboxPlan(**data, rows=rows)


def identity() -> str:
    return _identity or f"{socket.gethostname()}:{_vine_worker_pid()}"


def _vine_worker_pid() -> int:
    """The vine_worker this process descends from (the library runs under a shell it starts);
    the parent where /proc does not tell."""
    pid = os.getppid()
    for _ in range(8):
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            break
        if stat[stat.index(b"(") + 1 : stat.rindex(b")")] == b"vine_worker":
            return pid
        pid = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return os.getppid()


def warmup() -> None:
    """Run once in the library's process before any call: every call is a fork of it."""
    global _identity
    _identity = f"{socket.gethostname()}:{_vine_worker_pid()}"
    install_event_loop_policy()
    with tempfile.TemporaryDirectory(prefix="flowdc-warmup-") as folder:
        _dummy_shard(Path(folder))
    gc.collect()
    gc.freeze()  # the imports' objects are shared by every fork: collections stop walking them
    if threading.active_count() > 1:  # a fork would inherit locks of threads it has not
        names = [thread.name for thread in threading.enumerate()]
        print(f"flowdc warmup: threads left running: {names}", file=sys.stderr, flush=True)


def _dummy_shard(folder: Path) -> None:
    """One row, an invalid URL (no network), through run_shard; and one JPEG through the
    image checks."""
    from PIL import Image

    from flowdc.shard.fetch.client import Fetcher
    from flowdc.shard.processing import Options, process_image
    from flowdc.shard.run import run_shard_async

    rows = pa.table(
        {
            "key": ["0"],
            "shard": pa.array([0], pa.int32()),
            "row": pa.array([0], pa.int32()),
            "url": ["flowdc-warmup:not-a-url"],
            "label": pa.array([None], pa.string()),
        }
    )
    plan = SandboxPlan(
        output=str(folder),
        input="warmup",
        input_format="parquet",
        input_fingerprint="",
        url_column="url",
        label_column=None,
        shard_size=1,
        output_format="webdataset",
        total_rows=1,
        shard_count=1,
        key_width=1,
        rows=rows,
    )
    config = DownloadConfig(input="warmup", output=str(folder), processes=1)

    async def main() -> None:
        fetcher = Fetcher(config, concurrency=1)
        try:
            await run_shard_async(plan, 0, config, fetcher)
        finally:
            await fetcher.close()

    asyncio.run(main())
    image = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 80, 20)).save(image, "JPEG")
    process_image(image.getvalue(), Options.from_config(config, False))


def run_call(request: dict[str, Any]) -> None:
    """The FunctionCall: run one shard as `request` says; answer in reply.json."""
    try:
        reply = _answer(request)
    except BaseException as exc:  # anything: the answer must reach the manager
        reply = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}"[:2000],
            "trace": traceback.format_exc(limit=12)[-8000:],
        }
    reply.update(version=_claimed_version(), identity=identity())
    for name in request.get("outputs", ()):
        Path(name).touch(exist_ok=True)
    Path(REPLY_FILE).write_text(json.dumps(reply), encoding="utf-8")


def _leave(why: str) -> None:
    """Make this worker go: one the manager distrusts would otherwise keep being offered shards
    (TaskVine prefers the worker that holds a shard's rows already) and refusing them. Under
    `flowdc worker`, the note makes it end the worker (a vine_worker that its own library
    signals may hang while it vacates); a bare vine_worker is sent SIGTERM."""
    notes = os.environ.get(NOTES_ENV)
    if notes:
        with open(notes, "a", encoding="utf-8") as handle:
            handle.write(why + "\n")
    else:
        os.kill(_vine_worker_pid(), signal.SIGTERM)


def _claimed_version() -> str:
    return TEST_VERSION if os.environ.get(FAULT_ENV) == "version" else __version__


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    Path(PROGRESS_FILE).touch()
    wanted = request.get("version")
    if identity() in request.get("distrusted", ()):
        _leave(
            f"the manager (FLOW-DC {wanted}) refused what this worker (FLOW-DC "
            f"{_claimed_version()}) sent back or would run; this worker leaves (see the manager's "
            f"messages)"
        )
        return {"ok": False, "refused": "distrusted", "error": "the manager distrusts this worker"}
    if wanted != _claimed_version():
        return {
            "ok": False,
            "refused": "version",
            "error": f"this worker runs FLOW-DC {_claimed_version()}, the manager {wanted}",
        }
    config = DownloadConfig(**request["config"])
    shard = int(request["shard"])
    share = (
        max(1, int(request["share"])),
        max(1, int(request.get("machines", 1))),
        str(request.get("run", "")),
    )
    plan_json = Path(PLAN_FILE).read_text(encoding="utf-8")
    rows = pq.read_table(ROWS_FILE)
    if request["mode"] == "gathered":
        from flowdc.shard.writers.webdataset import TarShardWriter

        TarShardWriter.direct = False  # this fork's tar is read back at once, to be sent
        scratch = Path("shard-output").resolve()
        scratch.mkdir()
        plan = sandbox_plan(plan_json, rows, str(scratch))
        asyncio.run(_run(plan, shard, config, share, None, None))
        _hand_back(plan, shard, scratch)
        if os.environ.get(FAULT_ENV):
            _test_fault(os.environ[FAULT_ENV], plan)
        return {"ok": True}
    target = request["target"]
    if not is_remote(target) and not (Path(target) / PLAN_META).is_file():
        return {
            "ok": False,
            "error": f"this worker does not see the output folder {target} (--shared_output): "
            f"mount it at the same path here, or leave --shared_output off",
        }
    plan = sandbox_plan(plan_json, rows, target)
    result = asyncio.run(_run(plan, shard, config, share, target, request.get("storage_options")))
    return {"ok": True, "result": json.loads(result.to_json()), "skipped": result.skipped}


async def _run(
    plan: SandboxPlan,
    shard: int,
    config: DownloadConfig,
    share: tuple[int, int, str],
    target: str | None,
    storage_options: dict[str, Any] | None,
) -> ShardResult:
    """The shard, with its running totals appended to PROGRESS_FILE every second; `target`
    None: into plan.output, else run_shard_to (object storage staged and uploaded)."""
    from flowdc.shard.committed import NoOtherShards
    from flowdc.shard.fetch.client import Fetcher
    from flowdc.shard.run import run_shard_async
    from flowdc.storage.remote import run_shard_to

    totals = [0, 0, 0]  # successes, failures, bytes

    def on_progress(success: bool, size: int) -> None:
        totals[0 if success else 1] += 1
        totals[2] += size

    async def report() -> None:
        written = None
        with open(PROGRESS_FILE, "a", encoding="utf-8") as progress:
            while True:
                await asyncio.sleep(PROGRESS_SECONDS)
                if totals != written:
                    written = list(totals)
                    progress.write(" ".join(map(str, written)) + "\n")
                    progress.flush()

    processes, machines, run_key = share  # the run's processes and machines, its plan's id
    fetcher = Fetcher(
        config,
        concurrency=max(1, config.concurrent_downloads // processes),
        processes=processes,
        run_key=run_key or None,
        machines=machines,
    )
    reporting = asyncio.create_task(report())
    try:
        if target is None:
            # the sandbox holds this shard only: repeats of other shards' URLs fetch at once
            return await run_shard_async(
                plan, shard, config, fetcher, on_progress, committed=NoOtherShards()
            )
        return await run_shard_to(
            target, storage_options, plan, shard, config, fetcher, on_progress
        )
    finally:
        reporting.cancel()
        await fetcher.close()


def _hand_back(plan: Plan, shard: int, scratch: Path) -> None:
    """The committed shard's files under the names the manager declared as outputs."""
    if plan.output_format == "imagefolder":
        paths = pq.read_table(results_path(scratch, shard), columns=["path"]).column("path")
        with tarfile.open(TAR_FILE, "w", format=tarfile.USTAR_FORMAT) as bundle:
            for relative in paths.to_pylist():
                if relative is not None:  # label folder / KEY.ext: sent as KEY.ext
                    bundle.add(scratch / relative, arcname=Path(relative).name, recursive=False)
    else:
        os.replace(tar_path(scratch, shard), TAR_FILE)
    os.replace(results_path(scratch, shard), RESULTS_FILE)
    os.replace(stats_path(scratch, shard), STATS_FILE)
    shutil.rmtree(scratch)


def _test_fault(kind: str, plan: Plan) -> None:
    """TEST ONLY (see FAULT_ENV): spoil what this worker sends back."""
    if kind == "flip":
        with open(TAR_FILE, "r+b") as handle:
            handle.seek(tarfile.BLOCKSIZE + 10)  # inside the first member's bytes
            byte = handle.read(1)
            handle.seek(tarfile.BLOCKSIZE + 10)
            handle.write(bytes([byte[0] ^ 0xFF]) if byte else b"")
    elif kind == "drop_row":
        table = pq.read_table(RESULTS_FILE)
        pq.write_table(table.slice(0, table.num_rows - 1), RESULTS_FILE)
    elif kind == "extra_member":
        with tarfile.open(TAR_FILE) as source:
            members = [(info, source.extractfile(info).read()) for info in source]  # type: ignore[union-attr]
        with tarfile.open(TAR_FILE, "w", format=tarfile.USTAR_FORMAT) as spoiled:
            for info, data in members:
                spoiled.addfile(info, io.BytesIO(data))
            extra = tarfile.TarInfo(f"{'9' * 9}.jpg")
            extra.size, extra.mtime = 4, int(time.time())
            spoiled.addfile(extra, io.BytesIO(b"\xff\xd8\xff\xd9"))
