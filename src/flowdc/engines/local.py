"""The local engine: worker processes on this machine, each with its own event loop.

Each worker takes shard numbers from a shared queue and runs up to SHARDS_PER_WORKER shards at
once on one HTTP session, so the slow tail of one shard never leaves the process idle: it takes a
second shard only when fewer rows than its request slots are left in the first (taking two at
once let the first worker to start take both shards of a two-shard run, leaving the other idle).
Workers report progress and finished shards on a result queue; they exit when their parent dies.
They import FLOW-DC only, never the caller's main module, so a script needs no
`if __name__ == "__main__":` around `flowdc.download` (see engines/base.py's callers_main_hidden).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import multiprocessing as mp
import os
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from typing import Any

from flowdc.config.options import DownloadConfig
from flowdc.core.results import ShardResult
from flowdc.engines.base import (
    PROGRESS_INTERVAL,
    SHARDS_PER_WORKER,
    Echo,
    Engine,
    EngineOutcome,
    Progress,
    ProgressSink,
    callers_main_hidden,
    install_event_loop_policy,
    plan_id,
    without_pandas,
)
from flowdc.planning.plan import Plan

TAIL_CHECK_SECONDS = 0.1
"""How often a worker looks whether its shard's tail has begun (time to take the next one)."""


def _tune_garbage_collector() -> None:
    """The imports' objects live as long as the worker: frozen, the collector stops walking
    them. A download makes dozens of short-lived objects, so young collections run every 20,000
    allocations instead of 700 (each costs about the same either way): a worker's collections
    took 0.14-0.22 s of a 10,000-image run, now 0.06-0.13 s."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    gc.enable()


def _worker_context() -> Any:
    """How workers start: forked from a fork server that imported their modules once.

    Spawned, each worker imported them itself: about 0.7 s of CPU per worker (2 s of a 20-URL run
    on 2 cores, 44 s on 64). The fork server is a fresh, single-threaded interpreter started with
    the first worker; it imports the modules, and every worker after is a fork of it, ready at
    once. Where there is no fork server (Windows), workers are spawned.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["flowdc.engines.local", "flowdc.storage.remote", "uvloop"])
    return context


def _watch_parent(lifeline: Any) -> None:
    """Exit when the main process is gone: it holds the only writing end of the lifeline, so
    the read ends with EOF when it dies, however it dies. (A worker's parent is the fork server,
    which outlives the main process as long as any worker does.)"""
    try:
        while True:
            lifeline.recv()
    except (EOFError, OSError):
        os._exit(1)


def _worker_main(
    config_data: dict[str, Any],
    tasks: mp.Queue,
    events: mp.Queue,
    lifeline: Any,
    storage_options: dict[str, Any] | None,
    environment: dict[str, str],
) -> None:
    """Entry point of a worker process. It imports what it needs, then waits for its first task
    (shard, rows, processes sharing the machine's limits, the plan's folder)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does
    os.environ.clear()  # the run's environment, not the fork server's (started by an earlier run)
    os.environ.update(environment)
    gc.disable()  # the imports make only objects that live on; collections there find nothing
    without_pandas()
    threading.Thread(target=_watch_parent, args=(lifeline,), daemon=True).start()
    install_event_loop_policy()
    importlib.import_module("flowdc.storage.remote")  # the shard's modules, while the parent plans
    _tune_garbage_collector()

    config = DownloadConfig(**config_data)
    first = tasks.get()
    if first is None:
        return
    processes, output = first[2], first[3]
    plan = Plan.load(output)
    assert plan is not None
    asyncio.run(_worker_loop(config, plan, processes, first, tasks, events, storage_options))


async def _worker_loop(
    config: DownloadConfig,
    plan: Plan,
    processes: int,
    first: tuple[int, int, int, str],
    tasks: mp.Queue,
    events: mp.Queue,
    storage_options: dict[str, Any] | None,
) -> None:
    from flowdc.shard.fetch.client import Fetcher
    from flowdc.storage.remote import run_shard_to

    loop = asyncio.get_running_loop()
    fetcher = Fetcher(
        config,
        concurrency=max(1, config.concurrent_downloads // processes),
        processes=processes,
        run_key=plan_id(plan),
    )
    waiting: tuple[int, int, int, str] | None = first
    delta = [0, 0, 0]  # successes, failures, bytes since the last report
    unfinished: dict[int, int] = {}  # rows of each running shard still without a result

    def progress_of(shard: int) -> Callable[[bool, int], None]:
        def on_progress(success: bool, size: int) -> None:
            delta[0 if success else 1] += 1
            delta[2] += size
            unfinished[shard] -= 1

        return on_progress

    async def report() -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            if any(delta):
                events.put(("progress", delta[0], delta[1], delta[2]))
                delta[:] = [0, 0, 0]

    async def run_one(shard: int) -> None:
        try:
            result = await run_shard_to(
                config.output, storage_options, plan, shard, config, fetcher, progress_of(shard)
            )
        except Exception as exc:
            events.put(("error", shard, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            return
        finally:
            del unfinished[shard]
        if any(delta):
            events.put(("progress", delta[0], delta[1], delta[2]))
            delta[:] = [0, 0, 0]
        events.put(("done", shard, result))

    def wants_shard() -> bool:
        """A first shard, or a second once the running one's tail leaves request slots idle."""
        if not running:
            return True
        return len(running) < SHARDS_PER_WORKER and sum(unfinished.values()) < fetcher.concurrency

    reporter = asyncio.create_task(report())
    running: set[asyncio.Task[None]] = set()
    exhausted = False
    try:
        while True:
            while not exhausted and wants_shard():
                task, waiting = waiting or await loop.run_in_executor(None, tasks.get), None
                if task is None:
                    exhausted = True
                    break
                shard, rows = task[0], task[1]
                unfinished[shard] = rows
                running.add(asyncio.create_task(run_one(shard)))
            if not running:
                break
            _, running = await asyncio.wait(
                running,
                timeout=None if exhausted else TAIL_CHECK_SECONDS,
                return_when=asyncio.FIRST_COMPLETED,
            )
    finally:
        reporter.cancel()
        await fetcher.close()


class WorkerPool:
    """The worker processes, started before the plan is made when the runner knows how many
    shards there will be: a worker's imports take about a second of CPU, and they overlap the
    planning. Each waits for its first task."""

    def __init__(self, config: DownloadConfig, count: int) -> None:
        self.count = max(1, count)
        context = _worker_context()
        self.tasks: mp.Queue = context.Queue()
        self.events: mp.Queue = context.Queue()
        lifeline, self._lifeline = context.Pipe(duplex=False)  # read end, write end
        self.workers = [
            context.Process(
                target=_worker_main,
                args=(
                    config.model_dump(),
                    self.tasks,
                    self.events,
                    lifeline,
                    config.storage_options,
                    dict(os.environ),
                ),
                name=f"flowdc-worker-{index}",
                daemon=True,
            )
            for index in range(self.count)
        ]
        with callers_main_hidden():
            for worker in self.workers:
                worker.start()

    def stop(self, grace: float = 0) -> None:
        """Wait up to `grace` seconds for the workers to finish, then end those still running."""
        for worker in self.workers:
            worker.join(timeout=grace)
            if worker.is_alive():
                worker.terminate()
        for worker in self.workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
        self._lifeline.close()


class LocalEngine(Engine):
    """Worker processes on this machine (`--processes`, default one per core)."""

    def __init__(self, config: DownloadConfig, echo: Echo) -> None:
        super().__init__(config, echo)
        self.pool: WorkerPool | None = None

    def prepare(self, shard_count: int) -> None:
        """Start the workers now: their imports (about a second of CPU each) overlap planning."""
        if shard_count and self.pool is None:
            self.pool = WorkerPool(self.config, min(self.config.effective_processes(), shard_count))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.stop()
            self.pool = None

    def run(self, plan: Plan, shards: dict[int, int], sink: ProgressSink) -> EngineOutcome:
        """Run `shards` in the worker processes (those `prepare` started, else new ones); the
        workers are stopped when this returns."""
        outcome = EngineOutcome()
        if not shards:
            self.close()
            return outcome
        if self.pool is None:
            self.prepare(len(shards))
        pool, self.pool = self.pool, None
        assert pool is not None
        return _run_in_pool(pool, plan, shards, sink, outcome)


def _run_in_pool(
    pool: WorkerPool,
    plan: Plan,
    shards: dict[int, int],
    sink: ProgressSink,
    outcome: EngineOutcome,
) -> EngineOutcome:
    processes = min(pool.count, len(shards))
    for shard in sorted(shards):
        pool.tasks.put((shard, shards[shard], processes, plan.output))
    for _ in range(pool.count):
        pool.tasks.put(None)
    workers, events = pool.workers, pool.events
    progress = Progress()
    remaining = set(shards)
    try:
        while remaining:
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                dead = [w for w in workers if not w.is_alive() and w.exitcode not in (0, None)]
                if dead:
                    codes = ", ".join(str(w.exitcode) for w in dead)
                    for shard in sorted(remaining):
                        outcome.errors[shard] = f"worker process died (exit code {codes})"
                    break
                if all(not w.is_alive() for w in workers):
                    for shard in sorted(remaining):
                        outcome.errors[shard] = "no worker ran this shard"
                    break
                continue
            kind = event[0]
            if kind == "progress":
                progress.successes += event[1]
                progress.failures += event[2]
                progress.bytes += event[3]
                sink.progress(progress)
            elif kind == "done":
                result: ShardResult = event[2]
                remaining.discard(event[1])
                outcome.results.append(result)
                sink.shard_done(result)
            elif kind == "error":
                remaining.discard(event[1])
                outcome.errors[event[1]] = event[2]
    finally:
        pool.stop(grace=0 if remaining else 10)
    return outcome
