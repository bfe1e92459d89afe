"""The Dask engine: a manager submits run_shard per shard to a Dask cluster of any size.

Manager: plans (runner.py), then keeps a bounded number of shard tasks in flight, each with a
stable key (`flowdc-<plan id>-<shard>`) and retries; Dask reruns the task of a worker that
died. Results stream back as tasks finish; workers send progress as Dask events every 0.25 s.
Worker: each worker process runs one asyncio event loop in a thread with one HTTP session,
shared by the process's task threads (two by default, as in the local engine).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import logging
import os
import re
import sys
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flowdc.config.listen import parse_listen
from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FlowDCError
from flowdc.core.layout import is_remote
from flowdc.core.results import ShardResult
from flowdc.engines.base import (
    PROGRESS_INTERVAL,
    SHARDS_PER_WORKER,
    Echo,
    Engine,
    EngineOutcome,
    Progress,
    ProgressSink,
    install_event_loop_policy,
    plan_id,
)
from flowdc.planning.plan import Plan
from flowdc.storage.remote import run_shard_to, worker_plan

# A task whose own code fails (not a lost worker: Dask reruns those by itself, up to
# distributed.scheduler.allowed-failures times) is tried this many more times.
TASK_RETRIES = 2
_WORKER_ADDRESS = re.compile(r"((tcp|tls)://)?(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+):[0-9]{1,5}")
# A scheduler's HTTP server (health, metrics; bound to the scheduler's host) tries port 8787
# first and warns before it takes a free one; on a shared machine that is no news.
warnings.filterwarnings("ignore", message="Port 8787 is already in use", category=UserWarning)


def _dashboard(host: str) -> str | None:
    """A dashboard on a free port of the scheduler's host, when bokeh is installed."""
    return f"{host}:0" if importlib.util.find_spec("bokeh") is not None else None


def slurm_cluster(config: DownloadConfig) -> Any:
    """A dask-jobqueue SLURMCluster: one worker process with two task threads per job."""
    assert config.listen is not None
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise FlowDCError("--engine slurm needs dask-jobqueue: pip install dask-jobqueue") from None
    address = parse_listen(config.listen)
    options: dict[str, Any] = {
        "cores": SHARDS_PER_WORKER,
        "processes": 1,
        "memory": "4GB",
        "walltime": "04:00:00",
        "job_name": "flowdc-worker",
    }
    options.update(config.slurm_options or {})
    security = _security() if address.protocol == "tls" else None
    dashboard = _dashboard(address.host)
    scheduler: dict[str, Any] = {"host": address.host, "port": address.port}
    scheduler.update({"dashboard_address": dashboard} if dashboard else {"dashboard": False})
    try:
        return SLURMCluster(
            scheduler_options=scheduler,
            protocol=f"{address.protocol}://",
            security=security,
            **options,
        )
    except TypeError as exc:
        raise FlowDCError(f"bad --slurm_options: {exc}") from None


def _security() -> Any:
    """TLS settings from Dask's configuration (distributed.comm.tls.*, see the docs)."""
    from distributed.security import Security

    security = Security()
    if not security.tls_ca_file:
        raise FlowDCError(
            "a tls:// address needs Dask's TLS settings: set DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
            "..._SCHEDULER__CERT and ..._SCHEDULER__KEY (see docs/distributed.md)"
        )
    return security


@contextlib.contextmanager
def open_client(config: DownloadConfig, echo: Echo) -> Iterator[Any]:
    """A client for the cluster the options name; the cluster ends with the run if we made it."""
    try:
        import dask.config
        from distributed import Client, LocalCluster
    except ImportError:
        raise FlowDCError(
            f"--engine {config.engine} needs Dask: pip install 'flowdc[distributed]'"
        ) from None

    cluster: Any = None
    try:
        if config.engine == "slurm":
            cluster = slurm_cluster(config)
            cluster.scale(jobs=config.workers or 1)
            echo(f"asked SLURM for {config.workers or 1} worker job(s)")
        elif config.listen:
            address = parse_listen(config.listen)
            cluster = LocalCluster(
                n_workers=0,
                host=address.host,
                scheduler_port=address.port,
                protocol=f"{address.protocol}://",
                security=_security() if address.protocol == "tls" else None,
                dashboard_address=_dashboard(address.host),
                silence_logs=logging.ERROR,
            )
            echo(
                f"Dask scheduler listening on {cluster.scheduler_address}; on each worker machine "
                f"run: flowdc worker {cluster.scheduler_address}"
            )
        elif not config.scheduler:
            cluster = LocalCluster(
                n_workers=max(1, config.effective_processes()),
                threads_per_worker=SHARDS_PER_WORKER,
                host="127.0.0.1",
                dashboard_address=_dashboard("127.0.0.1"),
                silence_logs=logging.ERROR,
            )
        client = Client(
            cluster if cluster is not None else config.scheduler,
            timeout=dask.config.get("distributed.comm.timeouts.connect"),
        )
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        where = config.scheduler or config.listen or "127.0.0.1"
        raise FlowDCError(
            f"cannot reach or start the Dask scheduler at {where}: {exc}; check the address "
            f"(and that the port is free)"
        ) from None
    try:
        if client.dashboard_link and importlib.util.find_spec("bokeh") is not None:
            echo(f"Dask dashboard: {client.dashboard_link}")
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class _ProgressTracker:
    """Totals from finished shards plus the events of shards still running."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = Progress()
        self.partial: dict[int, list[int]] = {}
        self.finished: set[int] = set()

    def on_event(self, event: tuple[float, Any]) -> None:
        shard, successes, failures, size = event[1]
        with self.lock:
            if shard in self.finished:
                return
            counts = self.partial.setdefault(shard, [0, 0, 0])
            counts[0] += successes
            counts[1] += failures
            counts[2] += size

    def finish(self, result: ShardResult) -> None:
        with self.lock:
            self.finished.add(result.shard)
            self.partial.pop(result.shard, None)
            self.done.successes += result.successes
            self.done.failures += result.failures
            self.done.bytes += result.bytes

    def snapshot(self) -> Progress:
        with self.lock:
            running = [sum(c[i] for c in self.partial.values()) for i in range(3)]
            return Progress(
                self.done.successes + running[0],
                self.done.failures + running[1],
                self.done.bytes + running[2],
            )


def _worker_processes(client: Any) -> tuple[int, int, int]:
    """(worker processes, task threads, machines) the scheduler knows now; a machine is a host
    part of the workers' addresses."""
    threads = client.nthreads()
    machines = {
        match.group(3) if (match := _WORKER_ADDRESS.fullmatch(address)) else address
        for address in threads
    }
    return len(threads), sum(threads.values()), len(machines)


class DaskEngine(Engine):
    """A Dask cluster: one of its own on this machine, one it hosts (--listen) for workers
    elsewhere, one that runs (--scheduler), or SLURM jobs (--engine slurm)."""

    def run(self, plan: Plan, shards: dict[int, int], sink: ProgressSink) -> EngineOutcome:
        return _run_on_cluster(plan, self.config, sorted(shards), sink, self.echo)


def _run_on_cluster(
    plan: Plan,
    config: DownloadConfig,
    shards: list[int],
    sink: ProgressSink,
    echo: Echo,
) -> EngineOutcome:
    """Run `shards` on a Dask cluster; return their results and any shard errors."""
    from distributed import wait

    outcome = EngineOutcome()
    if not shards:
        return outcome
    pid = plan_id(plan)
    # workers resolve a relative path from their own folder, on their own machine
    target = config.output if is_remote(config.output) else str(Path(config.output).resolve())
    topic = f"flowdc-progress-{pid}-{uuid.uuid4().hex[:8]}"  # this run's events only
    config_data = config.model_dump()
    tracker = _ProgressTracker()
    queue = list(reversed(shards))
    with open_client(config, echo) as client:
        client.subscribe_topic(topic, tracker.on_event)
        running: dict[Any, int] = {}
        while queue or running:
            processes, threads, machines = _worker_processes(client) if queue else (0, 0, 0)
            while queue and len(running) < max(2 * threads, 2 * SHARDS_PER_WORKER):
                shard = queue.pop()
                future = client.submit(
                    run_shard_task,
                    target,
                    config.storage_options,
                    pid,
                    shard,
                    config_data,
                    max(1, processes),
                    max(1, machines),
                    topic,
                    key=f"flowdc-{pid}-{shard:05d}",
                    retries=TASK_RETRIES,
                    pure=False,
                )
                running[future] = shard
            try:
                done = wait(list(running), timeout=PROGRESS_INTERVAL, return_when="FIRST_COMPLETED")
                finished = done.done
            except (TimeoutError, asyncio.TimeoutError):
                finished = set()
            for future in finished:
                shard = running.pop(future)
                if future.status == "finished":
                    result: ShardResult = future.result()
                    tracker.finish(result)
                    outcome.results.append(result)
                    sink.shard_done(result)
                elif future.status == "error":
                    error = future.exception()
                    outcome.errors[shard] = f"{type(error).__name__}: {error}"
                else:
                    outcome.errors[shard] = f"the Dask task ended as {future.status}"
                future.release()
            sink.progress(tracker.snapshot())
        client.unsubscribe_topic(topic)
    return outcome


class _WorkerState:
    """Per worker process: one event loop thread and the HTTP session its shards share."""

    def __init__(self) -> None:
        install_event_loop_policy()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="flowdc-loop", daemon=True).start()
        self.fetchers: dict[str, list[Any]] = {}  # key -> [fetcher, shards using it]
        self.latest = ""
        atexit.register(self.close)

    def close(self) -> None:
        """Close the sessions when the worker process ends (a clean exit, not a kill)."""

        async def close_all() -> None:
            for fetcher, _ in self.fetchers.values():
                await fetcher.close()
            self.fetchers.clear()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(timeout=5)

    async def _acquire(
        self, config: DownloadConfig, share: tuple[int, int, str]
    ) -> tuple[str, Any]:
        from flowdc.shard.fetch.client import Fetcher

        processes, machines, run_key = share
        key = f"{config.model_dump_json()}/{processes}/{machines}/{run_key}"
        self.latest = key
        if key not in self.fetchers:
            concurrency = max(1, config.concurrent_downloads // processes)
            fetcher = Fetcher(
                config,
                concurrency=concurrency,
                processes=processes,
                run_key=run_key,
                machines=machines,
            )
            self.fetchers[key] = [fetcher, 0]
        self.fetchers[key][1] += 1
        return key, self.fetchers[key][0]

    async def _release(self, key: str) -> None:
        """A session nobody uses any more (the config or the worker count changed) is closed."""
        entry = self.fetchers[key]
        entry[1] -= 1
        if entry[1] == 0 and key != self.latest:
            del self.fetchers[key]
            await entry[0].close()

    async def run(
        self,
        target: str,
        storage_options: dict[str, Any] | None,
        plan: Plan,
        shard: int,
        config: DownloadConfig,
        share: tuple[int, int, str],
        report: Callable[[list[int]], None],
    ) -> ShardResult:
        """`share`: (the run's worker processes, its machines, its plan's id)."""
        key, fetcher = await self._acquire(config, share)
        delta = [0, 0, 0]  # successes, failures, bytes since the last report

        def on_progress(success: bool, size: int) -> None:
            delta[0 if success else 1] += 1
            delta[2] += size

        def flush() -> None:
            if any(delta):
                report([shard, *delta])
                delta[:] = [0, 0, 0]

        async def reporter() -> None:
            while True:
                await asyncio.sleep(PROGRESS_INTERVAL)
                flush()

        reporting = asyncio.create_task(reporter())
        try:
            return await run_shard_to(
                target, storage_options, plan, shard, config, fetcher, on_progress
            )
        finally:
            reporting.cancel()
            flush()
            await self._release(key)


_state: _WorkerState | None = None
_state_lock = threading.Lock()


def run_shard_task(
    target: str,
    storage_options: dict[str, Any] | None,
    plan_key: str,
    shard: int,
    config_data: dict[str, Any],
    share: int,
    machines: int,
    topic: str,
) -> ShardResult:
    """The Dask task: run one shard on this worker; `share` worker processes on `machines`
    machines split the limits (fetch/client.py's Fetcher)."""
    global _state
    from distributed import get_worker

    worker = get_worker()
    with _state_lock:
        if _state is None:
            _state = _WorkerState()
    plan = worker_plan(target, storage_options, plan_key)
    config = DownloadConfig(**config_data)
    job = _state.run(
        target,
        storage_options,
        plan,
        shard,
        config,
        (share, machines, plan_key),
        lambda counts: worker.log_event(topic, counts),
    )
    return asyncio.run_coroutine_threadsafe(job, _state.loop).result()


def worker_main(argv: list[str]) -> int:
    """`flowdc worker ADDRESS [dask worker options]`: `dask worker` with FLOW-DC's defaults."""
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: flowdc worker tcp://MANAGER:8786 [dask worker options]\n"
            "Starts a Dask worker for `flowdc download --engine dask` (default: one worker "
            "process per core, two shards at once in each). Options after the address go to "
            "`dask worker` (see `dask worker --help`), e.g. --nworkers 4."
        )
        return 0 if argv else 2
    if not argv[0].startswith("-") and not _WORKER_ADDRESS.fullmatch(argv[0]):
        print(
            f"flowdc: error: worker address {argv[0]!r} is not tcp://HOST:PORT; give the address "
            f"the manager's `flowdc download --engine dask --listen HOST:PORT` printed",
            file=sys.stderr,
        )
        return 2
    extra = argv[1:]
    defaults: list[str] = []
    if not any(a.startswith("--nworkers") for a in extra):
        defaults += ["--nworkers", str(os.cpu_count() or 1)]
    if not any(a.startswith("--nthreads") for a in extra):
        defaults += ["--nthreads", str(SHARDS_PER_WORKER)]
    command = [sys.executable, "-m", "distributed.cli.dask_worker", argv[0], *defaults, *extra]
    os.execv(sys.executable, command)
    return 0  # not reached: execv replaces this process
