"""Checking and committing the shards workers send back, in processes of their own.

A returned shard is read whole once to be checked (every image hashed: about half a second for
a shard of 2,500 images here, one core hashes about 650 MB/s); done in the manager's loop, that
half second is one in which TaskVine neither takes the next shard's files nor sends the free
slot a new shard (a slot is free only once its shard's files are back). A thread would not help:
TaskVine's wait holds Python's lock for up to a second. So child processes (one per core of the
manager's machine, at most MAX_CHECKERS: at the end of a run many shards come back at once) take
the shards over pipes (no helper thread either: `send` and `poll` are called by the loop
itself), check each against the plan (storage/verify.py), commit it (storage/gather.py) and
answer with the shard's stats, or why it was refused. A shard is in one checker at a time, and
different shards' commits touch different files.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections.abc import Iterator
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any

from flowdc.core.errors import ShardRejected
from flowdc.core.layout import is_committed
from flowdc.core.results import ShardResult
from flowdc.engines.base import callers_main_hidden
from flowdc.planning.plan import Plan
from flowdc.storage.gather import commit_checked_shard
from flowdc.storage.verify import check_returned_shard

Answer = tuple[str, int, Any]
"""("done", shard, ShardResult), ("rejected", shard, why), ("failed", shard, why: its files did
not read, it may run again) or ("uncommitted", shard, why: the output refused it)."""


MAX_CHECKERS = 4


class Checkers:
    """The checking processes of one run, for the plan in the local output `output`: one from
    the start, more (up to one per core) only when a shard comes back while all are busy (each
    costs about a second of CPU to start: its imports)."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.most = max(1, min(MAX_CHECKERS, os.cpu_count() or 1))
        self.checkers = [Checker(output)]

    def submit(self, shard: int, tar: Path, results: Path, stats: Path, worker: str) -> None:
        least = min(self.checkers, key=lambda checker: len(checker.waiting))
        if least.waiting and len(self.checkers) < self.most:
            least = Checker(self.output)
            self.checkers.append(least)
        least.submit(shard, tar, results, stats, worker)

    def wait(self, seconds: float) -> None:
        """Until an answer is ready (or a checker died), at most `seconds`."""
        busy = [checker.connection for checker in self.checkers if checker.waiting]
        if busy:
            with contextlib.suppress(OSError):
                mp_connection.wait(busy, seconds)

    def answers(self) -> Iterator[Answer]:
        for checker in self.checkers:
            yield from checker.answers()

    def close(self) -> None:
        for checker in self.checkers:
            checker.close()


class Checker:
    """One checking process."""

    def __init__(self, output: str) -> None:
        context = mp.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child, output), name="flowdc-checker", daemon=True
        )
        with callers_main_hidden():  # a script need not guard its flowdc.download call
            self.process.start()
        child.close()
        self.waiting: set[int] = set()

    def submit(self, shard: int, tar: Path, results: Path, stats: Path, worker: str) -> None:
        self.waiting.add(shard)
        self.connection.send((shard, str(tar), str(results), str(stats), worker))

    def answers(self) -> Iterator[Answer]:
        """The answers ready now (a process that died fails what it held)."""
        while self.waiting:
            try:
                if not self.connection.poll():
                    return
                answer: Answer = self.connection.recv()
            except (EOFError, OSError):
                for shard in sorted(self.waiting):
                    yield ("failed", shard, "the process that checks returned shards died")
                self.waiting.clear()
                return
            self.waiting.discard(answer[1])
            yield answer

    def close(self) -> None:
        with contextlib.suppress(OSError):  # it died: nothing to tell
            self.connection.send(None)
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.connection.close()


def _serve(connection: Any, output: str) -> None:
    plan = Plan.load(output)
    assert plan is not None
    while (job := connection.recv()) is not None:
        shard, tar, results, stats, worker = job
        files = Path(tar), Path(results), Path(stats)
        connection.send(_check_and_commit(plan, shard, *files, worker))


def _check_and_commit(
    plan: Plan, shard: int, tar: Path, results: Path, stats: Path, worker: str
) -> Answer:
    output = Path(plan.output)
    if is_committed(output, shard):  # never happens in one run; a marker is never replaced
        return ("done", shard, ShardResult.load(output, shard))
    try:
        checked = check_returned_shard(plan, shard, plan.read_shard(shard), tar, results, stats)
    except ShardRejected as why:
        return ("rejected", shard, str(why))
    except OSError as exc:
        return ("failed", shard, f"its files do not read: {exc.strerror or exc}")
    try:
        result = commit_checked_shard(plan, checked, worker=worker)
    except OSError as exc:  # a full disk, an unwritable output: the shard stays pending
        return ("uncommitted", shard, f"cannot commit it: {exc.strerror or exc}")
    result.skipped = False
    return ("done", shard, result)
