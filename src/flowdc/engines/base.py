"""What every engine shares: the interface the runner drives, progress and outcome types, the
set-up of a worker process's event loop, and how its child processes start (no pandas, no re-run
of the caller's main module).

An engine is given the plan, the config and a sink; it runs `run_shard` (through
storage/remote.py's `run_shard_to`, which also handles object storage) for each pending shard
wherever its workers are, reports progress and finished shards to the sink as they come, and
returns the shard results and the errors of shards that could not run. Engines never import each
other: what two of them need lives here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from flowdc.config.options import DownloadConfig
from flowdc.core.results import ShardResult
from flowdc.planning.plan import Plan

SHARDS_PER_WORKER = 2
"""Shards one worker process runs at once (the second starts when the first's tail begins)."""
PROGRESS_INTERVAL = 0.25
"""Seconds between a worker's progress reports."""

Echo = Callable[[str], None]


@dataclass
class Progress:
    """Totals reported by the workers since the run began."""

    successes: int = 0
    failures: int = 0
    bytes: int = 0


@dataclass
class EngineOutcome:
    results: list[ShardResult] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    """Shard -> why it could not run (it stays uncommitted; the next run tries it again)."""
    counters: dict[str, int] = field(default_factory=dict)
    """What the engine counted that the run record keeps (TaskVine: shards_rejected)."""


class ProgressSink(Protocol):
    """Where an engine reports: running totals, and each shard as it is committed."""

    def progress(self, totals: Progress) -> None: ...

    def shard_done(self, result: ShardResult) -> None: ...


class Engine(ABC):
    """One way to run a plan's shards. The runner makes one per run (`engines.engine_for`),
    may call `prepare` before planning, then `run` once, then `close`."""

    def __init__(self, config: DownloadConfig, echo: Echo) -> None:
        self.config = config
        self.echo = echo

    def prepare(self, shard_count: int) -> None:  # noqa: B027 (optional hook, empty by default)
        """Called before planning when the input tells how many shards there will be: an engine
        may start its workers now, so that their start-up overlaps the planning."""

    @abstractmethod
    def run(self, plan: Plan, shards: dict[int, int], sink: ProgressSink) -> EngineOutcome:
        """Run `shards` (shard -> rows it will fetch) and return their results and errors."""

    def close(self) -> None:  # noqa: B027 (optional hook, empty by default)
        """Release what `prepare` or `run` started (called also when planning failed)."""


def plan_id(plan: Plan) -> str:
    """Names a plan apart from its output folder: Dask task keys (so a replanned output never
    reuses an old task's result) and the machine's pacing table of a run (fetch/pace.py)."""
    data = json.loads(plan.to_json())
    data.pop("output")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def install_event_loop_policy() -> None:
    """uvloop when installed, unless FLOWDC_EVENT_LOOP=asyncio (for comparing the two)."""
    if os.environ.get("FLOWDC_EVENT_LOOP", "uvloop") != "uvloop":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class _NoPandas:
    """An import finder that refuses pandas (see without_pandas)."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas is not imported in a worker", name=name)


def without_pandas() -> None:
    """pyarrow imports pandas (0.3-0.5 s, a quarter of a worker's start-up) the first time it
    builds an array, only to ask whether its input is a pandas object. A worker never holds one,
    nor does the `flowdc download` command's own process on the local engine (it did the import
    while planning, before the workers could start), so the import is made to fail at once there:
    pyarrow then works without pandas. Never in a program that imports FLOW-DC (it may want
    pandas later), nor under Dask (its dashboard may)."""
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())


@contextmanager
def callers_main_hidden() -> Iterator[None]:
    """While workers start, the main module shows neither `__spec__` nor `__file__`.

    multiprocessing tells each process it starts (spawned, or forked from the fork server)
    which module the parent's `__main__` is, and the child runs that module again, as
    `__mp_main__`, before its target: a script that called `flowdc.download` at its top level
    started a second download in every worker, which failed on the output's lock. A worker
    needs FLOW-DC only (its target and arguments are FLOW-DC's), so it is told of no main
    module and imports none: no guard needed, and no re-run of a notebook kernel's or the
    `flowdc` program's main module either. Outside this block the main module is unchanged.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    names = vars(main)
    saved = {name: names[name] for name in ("__spec__", "__file__") if name in names}
    main.__spec__ = None
    names.pop("__file__", None)
    try:
        yield
    finally:
        names.update(saved)
        if "__spec__" not in saved:
            del main.__spec__
