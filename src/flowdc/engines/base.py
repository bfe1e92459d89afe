"""What every engine shares: the interface the runner drives, progress and outcome types, and
the set-up of a worker process's event loop.

An engine is given the plan, the config and a sink; it runs `run_shard` (through
storage/remote.py's `run_shard_to`, which also handles object storage) for each pending shard
wherever its workers are, reports progress and finished shards to the sink as they come, and
returns the shard results and the errors of shards that could not run. Engines never import each
other: what two of them need lives here.
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

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


def install_event_loop_policy() -> None:
    """uvloop when installed, unless FLOWDC_EVENT_LOOP=asyncio (for comparing the two)."""
    if os.environ.get("FLOWDC_EVENT_LOOP", "uvloop") != "uvloop":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
