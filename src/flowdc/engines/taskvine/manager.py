"""The TaskVine side of the manager: the `vine.Manager` and what belongs to it for one run.

`open_session` starts the manager on --port (every interface of the machine: TaskVine has no
choice of address) with its logs in the output's `.flowdc-taskvine/logs/` (or ./vine-run-info for
an s3:// output), so that TaskVine's own tools (`vine_plot_txn_log`, `vine_plot_performance`) can
draw the run; sets the password file, TLS, short keepalives (a worker that vanishes without
closing its connection is given up after two minutes) and, only when --manager_name is given, a
catalog (never TaskVine's public one unless the user leaves --catalog at its default); turns
peer transfers off (no worker serves another the plan or the library's code: a worker may be
anyone's); and installs the
serverless library (worker.py) on every worker that offers this FLOW-DC's feature
(`flowdc-<version>`, which `flowdc worker --engine taskvine` advertises). Creating a Manager sets
TCP_LOW_PORT and TCP_HIGH_PORT in this process's environment, which would make any vine_worker
started from it fail to bind its transfer port: they are put back at once.

`IdleWorkers` explains workers that are connected but never take a shard while shards wait:
TaskVine never sends a task to a worker without the task's feature, so a worker of another
FLOW-DC version (or a plain vine_worker) just sits there. The version it offers is read from
TaskVine's debug log (the only place the manager shows a worker's features).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FlowDCError
from flowdc.core.layout import TASKVINE_DIR, is_remote
from flowdc.core.version import __version__
from flowdc.engines.base import Echo

DEFAULT_PORT = 9123
DEFAULT_CATALOG = "catalog.cse.nd.edu:9097,backup-catalog.cse.nd.edu:9097"
LIBRARY = "flowdc-shards"
KEEPALIVE_INTERVAL = 30
KEEPALIVE_TIMEOUT = 120
IDLE_WORKER_GRACE = 5.0
"""Seconds a connected worker may take nothing while shards wait before the run says why."""
SHUTDOWN_WAIT = 5
TCP_PORT_VARIABLES = ("TCP_LOW_PORT", "TCP_HIGH_PORT")
_FEATURE_LINE = re.compile(rb"rx from \S+ \(([^)\s]+)\): feature (\S+)")
_DEBUG_TAIL = 4 << 20


def feature() -> str:
    """What a worker of this FLOW-DC version offers, and every task of this manager needs."""
    return f"flowdc-{__version__}"


def import_taskvine() -> Any:
    try:
        import ndcctools.taskvine as vine
    except ImportError:
        raise FlowDCError(
            "--engine taskvine needs TaskVine (the ndcctools package): run `make taskvine` in a "
            "FLOW-DC clone, or `conda install -c conda-forge ndcctools`"
        ) from None
    return vine


@dataclass
class Session:
    """A running manager and its folders."""

    manager: Any
    port: int
    logs: Path
    outgoing: Path
    """The rows sent to workers, the plan, and shared mode's small replies."""
    incoming: Path | None
    """Gathered mode: the files workers send back, until checked and committed."""
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


def open_session(config: DownloadConfig, echo: Echo) -> Session:
    """Start the manager and install the library; print how workers join."""
    vine = import_taskvine()
    for name, path in (
        ("--password", config.password),
        ("--ssl_key", config.ssl_key),
        ("--ssl_cert", config.ssl_cert),
    ):
        if path is not None and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise FlowDCError(f"{name} {path}: there is no readable file there")
    shared = config.shared_output or is_remote(config.output)
    stack = contextlib.ExitStack()
    if is_remote(config.output):
        logs = Path.cwd() / "vine-run-info"
        outgoing = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flowdc-vine-")))
        incoming = None
    else:
        folder = Path(config.output) / TASKVINE_DIR
        logs, outgoing = folder / "logs", folder / "outgoing"
        incoming = None if shared else folder / "incoming"
        for leftover in (outgoing, folder / "incoming"):  # of a killed run; the output is locked
            shutil.rmtree(leftover, ignore_errors=True)
        outgoing.mkdir(parents=True)
        if incoming is not None:
            incoming.mkdir()
    port = DEFAULT_PORT if config.port is None else config.port
    manager = _manager(vine, config, port, logs)
    stack.enter_context(manager)  # vine_delete when the session closes
    session = Session(manager, manager.port, logs, outgoing, incoming, stack)
    try:
        _configure(manager, config)
        _install_library(manager)
    except BaseException:
        close_session(session, shutdown_workers=False)
        raise
    _announce(session, config, shared, echo)
    return session


def _manager(vine: Any, config: DownloadConfig, port: int, logs: Path) -> Any:
    saved = {name: os.environ.get(name) for name in TCP_PORT_VARIABLES}
    ssl = (config.ssl_key, config.ssl_cert) if config.ssl_key else None
    template = f"{time.strftime('%Y-%m-%dT%H%M%S')}-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_stderr():  # its own complaints are not one line
            return vine.Manager(
                port=port, run_info_path=str(logs), run_info_template=template, ssl=ssl
            )
    except Exception:
        raise FlowDCError(
            f"cannot start the TaskVine manager on port {port}: another program may be using "
            f"it; pick another --port (0 takes any free one)"
        ) from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Nothing written to stderr, by Python or by TaskVine's C code, reaches the user."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(io.StringIO()):
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _configure(manager: Any, config: DownloadConfig) -> None:
    if config.manager_name:
        manager.set_catalog_servers(config.catalog or DEFAULT_CATALOG)
        manager.set_name(config.manager_name)
    if config.password:
        manager.set_password_file(config.password)
    manager.set_keepalive_interval(KEEPALIVE_INTERVAL)
    manager.set_keepalive_timeout(KEEPALIVE_TIMEOUT)
    with quiet_stderr():  # TaskVine warns, on stderr, that temporary files are not shared
        manager.disable_peer_transfers()
    manager.set_property("flowdc_version", __version__)
    # a slot is free again only once its finished call's files are back: send the next call
    # then, rather than after every finished call has been returned to this loop
    manager.tune("prefer-dispatch", 1)


def _install_library(manager: Any) -> None:
    """One library per worker (it takes the worker's cores: a function slot per core), warmed
    once; calls are forks of it."""
    from flowdc.engines.taskvine import worker

    library = manager.create_library_from_functions(
        LIBRARY,
        worker.run_call,
        add_env=False,  # the worker runs in its own FLOW-DC environment
        exec_mode="fork",
        library_context_info=[worker.warmup, [], {}],
    )
    library.add_feature(feature())
    manager.install_library(library)


def _announce(session: Session, config: DownloadConfig, shared: bool, echo: Echo) -> None:
    host = socket.gethostname()
    options = (" --password FILE" if config.password else "") + (" --ssl" if config.ssl_key else "")
    echo(
        f"TaskVine manager listening on port {session.port} (every interface of {host}); on "
        f"each worker machine run: flowdc worker --engine taskvine {host}:{session.port}{options}"
    )
    if config.manager_name:
        catalog = f" --catalog {config.catalog}" if config.catalog else ""
        echo(
            f"or by name: flowdc worker --engine taskvine --manager_name {config.manager_name}"
            f"{catalog}{options}"
        )
    if not config.password and not config.ssl_key:
        what = (
            "and writes into the output"
            if shared
            else "(the shards it sends back are checked before they are committed)"
        )
        echo(
            f"no --password and no TLS: any machine that reaches port {session.port} can join "
            f"as a worker {what}; see docs/distributed.md"
        )
    echo(
        f"TaskVine logs: {session.manager.logging_directory} (vine_plot_txn_log and "
        f"vine_plot_performance draw them)"
    )


def close_session(session: Session, shutdown_workers: bool) -> None:
    """Free the manager; with `shutdown_workers` (the run is complete) tell the workers to exit
    first (else they wait for a manager on this port, to resume)."""
    manager = session.manager
    try:
        if shutdown_workers:
            # workers_shutdown spares a worker with a task, and a library is one until the
            # worker says it is gone: ask again while workers remain
            manager.remove_library(LIBRARY)
            deadline = time.monotonic() + SHUTDOWN_WAIT
            while True:
                manager.workers_shutdown(0)
                if not manager.stats.workers_connected or time.monotonic() > deadline:
                    break
                manager.wait(1)
    finally:
        session.stack.close()
        shutil.rmtree(session.outgoing, ignore_errors=True)
        if session.incoming is not None:
            shutil.rmtree(session.incoming, ignore_errors=True)


def connected_workers(manager: Any) -> list[dict[str, Any]]:
    """What the manager knows of each connected worker (TaskVine's status records)."""
    return [entry for entry in manager.status("workers") if entry.get("addrport")]


class IdleWorkers:
    """Workers connected for a while that never ran anything while shards waited: said once
    each, with the version they offer when TaskVine's debug log shows it."""

    def __init__(self, manager: Any, echo: Echo) -> None:
        self.debug_log = Path(manager.logging_directory) / "debug"
        self.echo = echo
        self.first_seen: dict[str, float] = {}
        self.told: set[str] = set()
        self.foreign: set[str] = set()
        """Workers known to take no shard of this run (their cores do not share the limits)."""

    def check(self, workers: list[dict[str, Any]], waiting: bool) -> None:
        now = time.monotonic()
        idle = []
        for entry in workers:
            address = entry["addrport"]
            self.first_seen.setdefault(address, now)
            if entry.get("total_tasks_running") or entry.get("total_tasks_complete"):
                self.foreign.discard(address)
                continue
            if waiting and now - self.first_seen[address] >= IDLE_WORKER_GRACE:
                idle.append(entry)
        if not idle:
            return
        for entry in idle:
            self.foreign.add(entry["addrport"])
        untold = [entry for entry in idle if entry["addrport"] not in self.told]
        if not untold:
            return
        offered = self._features()
        for entry in untold:
            address = entry["addrport"]
            self.told.add(address)
            self.echo(_why_idle(entry, offered.get(address, [])))

    def _features(self) -> dict[str, list[str]]:
        """addrport -> the flowdc features it offered, from the end of the debug log."""
        found: dict[str, list[str]] = {}
        try:
            with open(self.debug_log, "rb") as handle:
                handle.seek(max(0, self.debug_log.stat().st_size - _DEBUG_TAIL))
                for line in handle:
                    match = _FEATURE_LINE.search(line)
                    if match and match.group(2).startswith(b"flowdc-"):
                        name = match.group(2).decode("utf-8", "replace")
                        found.setdefault(match.group(1).decode("ascii", "replace"), []).append(name)
        except OSError:
            pass
        return found


def _why_idle(entry: dict[str, Any], offered: list[str]) -> str:
    worker = f"worker {entry.get('hostname', '?')} ({entry['addrport']})"
    mine = feature()
    if mine in offered:
        return (
            f"{worker} offers {mine} but runs nothing: FLOW-DC's library does not start there "
            f"(run `flowdc worker --engine taskvine` from the environment FLOW-DC {__version__} "
            f"is installed in)"
        )
    if offered:
        theirs = ", ".join(name.removeprefix("flowdc-") for name in offered)
        return (
            f"{worker} runs FLOW-DC {theirs} and this manager FLOW-DC {__version__}: it is given "
            f"no shards; install FLOW-DC {__version__} there"
        )
    return (
        f"{worker} offers no FLOW-DC version and is given no shards: start workers with "
        f"`flowdc worker --engine taskvine` of FLOW-DC {__version__} (or vine_worker "
        f"--feature {mine})"
    )
