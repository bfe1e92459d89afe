"""The TaskVine engine: a manager (this process) and `vine_worker`s anywhere that reach it.

Each pending shard becomes one FunctionCall of the warm library on the workers (worker.py),
with the plan (sent once per worker) and the shard's rows as input files. Calls are submitted a
few at a time (twice the function slots of the connected workers), each with the share of the
politeness limits that the slots connected at that moment give it (as the Dask engine splits
them by worker processes), so that ten workers are together as polite as one.

Two storage modes. Gathered (the default for a local output): the shard's samples, results
table and stats marker come back as output files into the output's `.flowdc-taskvine/incoming`,
are checked against the plan (storage/verify.py) and committed (storage/gather.py) by checker
processes (checker.py), while this loop goes on receiving and dispatching; a shard
that fails the check is counted (`shards_rejected` in the run record and overview.json), its
worker is distrusted for the rest of the run (told so in its next call, it leaves), and the
shard runs again, at most MAX_REJECTIONS times. Shared (--shared_output, or s3://): workers
commit into the output themselves and send back only their answer.

TaskVine reruns the call of a worker that is lost (killed, cut off); a call that fails on its
worker runs again up to TASK_RETRIES times, then the shard is reported as failed and stays
uncommitted. The progress bar adds the running totals each call appends to a watched file
(TaskVine sends its new lines every few seconds) to those of the committed shards. The manager
never unpickles anything a worker sends: answers are JSON files.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowdc.config.options import DownloadConfig
from flowdc.core.layout import is_remote
from flowdc.core.results import ShardResult
from flowdc.core.version import __version__
from flowdc.engines.base import Echo, Engine, EngineOutcome, Progress, ProgressSink, plan_id
from flowdc.engines.taskvine import manager as vine_manager
from flowdc.engines.taskvine import worker
from flowdc.engines.taskvine.checker import Checkers
from flowdc.planning.plan import Plan

TASK_RETRIES = 2
"""More attempts of a shard whose call failed on its worker (a lost worker costs none)."""
MAX_REJECTIONS = 5
"""Returned copies of one shard that may fail the checks before it is reported as failed (each
came from another worker: one is distrusted, and leaves, after its first)."""
REFUSED_DELAY = 1.0
"""Seconds before a shard a worker refused (another version, distrusted) is offered again."""
MAX_REPLY_BYTES = 1 << 20
CHECK_POLL = 0.2
"""Seconds between looks at the checker when nothing else is left to wait for."""
_PROGRESS_TAIL = 256


@dataclass
class _Attempt:
    shard: int
    task: Any
    outputs: dict[str, Path]
    files: list[Any] = field(default_factory=list)
    identity: str = ""
    """How the worker that ran it named itself (host:pid of its vine_worker)."""
    where: str = ""


class TaskVineEngine(Engine):
    """A TaskVine manager on --port; workers join with `flowdc worker --engine taskvine`."""

    def __init__(self, config: DownloadConfig, echo: Echo) -> None:
        super().__init__(config, echo)
        self.session: vine_manager.Session | None = None

    def _open(self) -> vine_manager.Session:
        if self.session is None:
            self.session = vine_manager.open_session(self.config, self.echo)
        return self.session

    def prepare(self, shard_count: int) -> None:
        """Start the manager now: workers connect and warm up while the plan is made."""
        if shard_count:
            self._open()

    def run(self, plan: Plan, shards: dict[int, int], sink: ProgressSink) -> EngineOutcome:
        """Run `shards` on whatever workers join; the manager stops when this returns, and tells
        the workers to exit when every shard is committed (else they wait for it to resume)."""
        if not shards:
            self.close()
            return EngineOutcome()
        complete = False
        try:
            outcome = _ShardRun(self._open(), plan, shards, sink, self.config, self.echo).run()
            complete = not outcome.errors
        finally:
            self._close(shutdown_workers=complete)
        return outcome

    def close(self) -> None:
        self._close(shutdown_workers=False)

    def _close(self, shutdown_workers: bool) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            vine_manager.close_session(session, shutdown_workers)


class _ShardRun:
    """One run's loop: submit, collect, check, commit, report."""

    def __init__(
        self,
        session: vine_manager.Session,
        plan: Plan,
        shards: dict[int, int],
        sink: ProgressSink,
        config: DownloadConfig,
        echo: Echo,
    ) -> None:
        self.vine = vine_manager.import_taskvine()
        self.session = session
        self.manager = session.manager
        self.plan = plan
        self.run_key = plan_id(plan)
        self.sink = sink
        self.config = config
        self.echo = echo
        self.gathered = session.incoming is not None
        remote = is_remote(config.output)
        self.target = config.output if remote else str(Path(config.output).resolve())
        self.queue: deque[int] = deque(sorted(shards))
        self.later: list[tuple[float, int]] = []  # refused shards, offered again after a delay
        self.running: dict[int, _Attempt] = {}
        self.checking: dict[int, _Attempt] = {}  # returned shards the checker holds
        self.checker: Checkers | None = None
        self.submitted: Counter[int] = Counter()
        self.failures: Counter[int] = Counter()
        self.rejections: Counter[int] = Counter()
        self.rows_files: dict[int, Any] = {}
        self.distrusted: set[str] = set()
        self.refusals_told: set[str] = set()
        self.idle = vine_manager.IdleWorkers(self.manager, echo)
        self.done = Progress()
        self.outcome = EngineOutcome()
        self.outcome.counters["shards_rejected"] = 0
        self.config_data = config.model_dump()
        plan_path = session.outgoing / "plan.json"
        plan_path.write_text(plan.to_json(), encoding="utf-8")
        # cached on each worker for the run, never served by another worker
        self.plan_file = self.manager.declare_file(str(plan_path), cache=True, peer_transfer=False)

    def run(self) -> EngineOutcome:
        self.checker = Checkers(self.plan.output) if self.gathered else None
        try:
            while self.queue or self.running or self.later or self.checking:
                now = time.monotonic()
                while self.later and self.later[0][0] <= now:
                    self.queue.appendleft(self.later.pop(0)[1])
                workers = vine_manager.connected_workers(self.manager)
                self._top_up(workers)
                if self.running or self.queue or self.checker is None:
                    task = self.manager.wait(1)
                    if task is not None:
                        self._finish(task)
                else:  # only checks left: TaskVine's wait would hold the answers up to 1 s
                    self.checker.wait(CHECK_POLL)
                if self.checker is not None:
                    for answer in self.checker.answers():
                        self._checked(*answer)
                waiting = bool(self.queue) or self.manager.stats.tasks_waiting > 0
                self.idle.check(workers, waiting)
                self.sink.progress(self._progress())
        finally:
            if self.checker is not None:
                self.checker.close()
        self.manager.undeclare_file(self.plan_file)
        return self.outcome

    def _slots(self, workers: list[dict[str, Any]]) -> int:
        """Function slots (one per core) of the connected workers that may take shards."""
        return sum(
            int(entry.get("cores_total") or 0)
            for entry in workers
            if entry["addrport"] not in self.idle.foreign
        )

    def _machines(self, workers: list[dict[str, Any]]) -> int:
        """Machines (worker addresses without the port) of the workers that may take shards:
        the processes of one machine pace each host together (fetch/pace.py)."""
        return len(
            {
                entry["addrport"].rsplit(":", 1)[0]
                for entry in workers
                if entry["addrport"] not in self.idle.foreign
            }
        )

    def _top_up(self, workers: list[dict[str, Any]]) -> None:
        slots = self._slots(workers)
        machines = self._machines(workers)
        while self.queue and slots and len(self.running) < 2 * slots:
            self._submit(self.queue.popleft(), slots, machines)

    def _submit(self, shard: int, share: int, machines: int) -> None:
        self.submitted[shard] += 1
        stem = f"{shard:05d}-{self.submitted[shard]}"
        names = [worker.PROGRESS_FILE, worker.REPLY_FILE]
        if self.gathered:
            names += [worker.TAR_FILE, worker.RESULTS_FILE, worker.STATS_FILE]
        folder = self.session.incoming or self.session.outgoing
        outputs = {name: folder / f"{stem}.{name}" for name in names}
        request = {
            "version": __version__,
            "shard": shard,
            "mode": "gathered" if self.gathered else "shared",
            "target": self.target,
            "storage_options": self.config.storage_options if not self.gathered else None,
            "config": self.config_data,
            "share": share,
            "machines": machines,
            "run": self.run_key,
            "distrusted": sorted(self.distrusted),
            "outputs": names,
        }
        call = self.vine.FunctionCall(vine_manager.LIBRARY, "run_call", request)
        call.add_input(self.plan_file, worker.PLAN_FILE)
        call.add_input(self._rows_file(shard), worker.ROWS_FILE)
        attempt = _Attempt(shard, call, outputs)
        for name, path in outputs.items():
            declared = self.manager.declare_file(str(path), cache=False, peer_transfer=False)
            call.add_output(declared, name, watch=name == worker.PROGRESS_FILE)
            attempt.files.append(declared)
        call.add_feature(vine_manager.feature())
        call.set_tag(f"shard-{shard:05d}")
        self.running[self.manager.submit(call)] = attempt

    def _rows_file(self, shard: int) -> Any:
        if shard not in self.rows_files:
            import pyarrow.parquet as pq

            path = self.session.outgoing / f"{shard:05d}.rows.parquet"
            pq.write_table(self.plan.read_shard(shard), path)
            self.rows_files[shard] = self.manager.declare_file(
                str(path), cache=False, peer_transfer=False
            )
        return self.rows_files[shard]

    def _finish(self, task: Any) -> None:
        attempt = self.running.pop(task.id, None)
        if attempt is None:
            return
        for declared in attempt.files:
            self.manager.undeclare_file(declared)
        reply = _read_reply(attempt.outputs[worker.REPLY_FILE])
        attempt.where = where = f"worker {task.hostname} ({task.addrport})"
        if task.result != "success" or reply is None:
            self._failed(attempt.shard, f"its call on {where} ended as {task.result}")
        elif reply.get("refused"):
            self._refused(attempt.shard, reply, where)
        elif not reply.get("ok"):
            self._failed(attempt.shard, f"on {where}: {str(reply.get('error'))[:1000]}")
        elif self.checker is not None:  # gathered: its files wait for the checker
            attempt.identity = str(reply.get("identity"))[:200]
            self.checking[attempt.shard] = attempt
            files = attempt.outputs
            self.checker.submit(
                attempt.shard,
                files[worker.TAR_FILE],
                files[worker.RESULTS_FILE],
                files[worker.STATS_FILE],
                attempt.identity,
            )
            return
        else:
            self._shared_done(attempt.shard, reply, where)
        _remove(attempt)

    def _checked(self, kind: str, shard: int, value: Any) -> None:
        """The checker's answer on a returned shard."""
        attempt = self.checking.pop(shard)
        _remove(attempt)
        if kind == "done":
            self._done(value)
        elif kind == "rejected":
            self._rejected(shard, attempt.identity, attempt.where, value)
        elif kind == "failed":
            self._failed(shard, f"from {attempt.where}: {value}")
        else:
            self._give_up(shard, value)

    def _requeue(self, shard: int) -> None:
        self.queue.appendleft(shard)

    def _failed(self, shard: int, why: str) -> None:
        self.failures[shard] += 1
        if self.failures[shard] <= TASK_RETRIES:
            self._requeue(shard)
        else:
            self._give_up(shard, why)

    def _give_up(self, shard: int, why: str) -> None:
        self.outcome.errors[shard] = why
        self._forget_rows(shard)

    def _refused(self, shard: int, reply: dict[str, Any], where: str) -> None:
        identity = str(reply.get("identity"))[:200]
        self.distrusted.add(identity)
        if reply.get("refused") == "version" and identity not in self.refusals_told:
            self.refusals_told.add(identity)
            theirs = str(reply.get("version"))[:40]
            self.echo(
                f"{where} runs FLOW-DC {theirs} and this manager FLOW-DC {__version__}: it "
                f"refuses shards; install FLOW-DC {__version__} there"
            )
        self.later.append((time.monotonic() + REFUSED_DELAY, shard))

    def _rejected(self, shard: int, identity: str, where: str, why: str) -> None:
        self.outcome.counters["shards_rejected"] += 1
        self.rejections[shard] += 1
        self.distrusted.add(identity)
        self.echo(f"shard {shard} from {where} rejected: {why}; it runs again on another worker")
        if self.rejections[shard] >= MAX_REJECTIONS:
            self._give_up(shard, f"rejected {self.rejections[shard]} times, last: {why}")
        else:
            self._requeue(shard)

    def _shared_done(self, shard: int, reply: dict[str, Any], where: str) -> None:
        try:
            result = ShardResult.from_json(json.dumps(reply["result"]))
            result.skipped = bool(reply.get("skipped"))
        except (KeyError, TypeError, ValueError) as exc:
            self._failed(shard, f"{where} answered without the shard's stats ({exc})")
            return
        counts = (result.rows, result.successes, result.failures, result.bytes)
        if result.shard != shard or not all(isinstance(n, int) and n >= 0 for n in counts):
            self._failed(shard, f"{where} answered with stats that are not this shard's")
            return
        self._done(result)

    def _done(self, result: ShardResult) -> None:
        self._forget_rows(result.shard)
        self.done.successes += result.successes
        self.done.failures += result.failures
        self.done.bytes += result.bytes
        self.outcome.results.append(result)
        self.sink.shard_done(result)

    def _forget_rows(self, shard: int) -> None:
        declared = self.rows_files.pop(shard, None)
        if declared is not None:
            self.manager.undeclare_file(declared)
            (self.session.outgoing / f"{shard:05d}.rows.parquet").unlink(missing_ok=True)

    def _progress(self) -> Progress:
        """Committed shards plus the last line of the watched progress file of each shard
        running or being checked."""
        totals = Progress(self.done.successes, self.done.failures, self.done.bytes)
        for attempt in [*self.running.values(), *self.checking.values()]:
            counts = _last_progress(attempt.outputs[worker.PROGRESS_FILE])
            totals.successes += counts[0]
            totals.failures += counts[1]
            totals.bytes += counts[2]
        return totals


def _remove(attempt: _Attempt) -> None:
    """The files an attempt left here (a committed tar was renamed away already)."""
    for path in attempt.outputs.values():
        path.unlink(missing_ok=True)


def _read_reply(path: Path) -> dict[str, Any] | None:
    """A worker's answer, or None when it is missing or is no JSON object."""
    try:
        if path.stat().st_size > MAX_REPLY_BYTES:
            return None
        reply = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return reply if isinstance(reply, dict) else None


def _last_progress(path: Path) -> tuple[int, int, int]:
    """The last whole line of a progress file: successes failures bytes (zeros if none)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - _PROGRESS_TAIL))
            lines = handle.read().split(b"\n")[:-1]
    except OSError:
        return (0, 0, 0)
    for line in reversed(lines):
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() and len(f) < 16 for f in fields):
            successes, failures, size = (int(f) for f in fields)
            return (successes, failures, size)
    return (0, 0, 0)
