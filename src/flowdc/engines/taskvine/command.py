"""`flowdc worker --engine taskvine MANAGER:PORT`: a `vine_worker` for this FLOW-DC.

It runs TaskVine's `vine_worker` with what a FLOW-DC worker needs: the feature
`flowdc-<version>` (the manager sends its shards only to workers that offer it), this Python's
bin folder first on PATH (the library that runs the shards is started as `python`, and must be
this environment's), a workspace of its own, one core per function slot, and neither
TCP_LOW_PORT nor TCP_HIGH_PORT from the environment (a value left by a TaskVine manager would
make the worker fail to bind its transfer port). The worker runs in a session of its own; on
Ctrl-C or SIGTERM that session (the worker, its library, the shards it runs) is ended, and
whatever is left of it when the worker exits (a vine_worker can leave its transfer server
running); the worker exits by itself when this process dies (--parent-death). A worker that the
manager distrusts leaves (worker.py), and this prints why.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flowdc.core.version import __version__

STOP_GRACE = 5.0
NOTE_CHECK = 0.5
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+):([0-9]{1,5})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowdc worker --engine taskvine",
        description="Start a TaskVine worker for `flowdc download --engine taskvine` (from the "
        "same FLOW-DC version). Options not listed here go to vine_worker (see vine_worker "
        "--help).",
    )
    parser.add_argument(
        "manager", nargs="?", metavar="MANAGER:PORT", help="where the manager listens"
    )
    parser.add_argument(
        "--manager_name", "--manager-name", help="find the manager by name in the catalog"
    )
    parser.add_argument("--catalog", help="catalog server(s) for --manager_name, HOST:PORT")
    parser.add_argument(
        "--cores",
        type=int,
        default=os.cpu_count() or 1,
        help="shards run at once (default: the number of cores)",
    )
    parser.add_argument("--password", help="the manager's password file")
    parser.add_argument("--ssl", action="store_true", help="the manager uses TLS")
    parser.add_argument(
        "--workspace", help="folder for the worker's files (default: a new temporary folder)"
    )
    return parser


def worker_main(argv: list[str]) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    where: list[str]
    if args.manager_name:
        where = ["--manager-name", args.manager_name]
        where += ["--catalog", args.catalog] if args.catalog else []
    elif args.manager and (match := _ADDRESS.fullmatch(args.manager)):
        where = [match.group(1).strip("[]"), match.group(2)]
    else:
        given = f" {args.manager!r} is not HOST:PORT;" if args.manager else ""
        print(
            f"flowdc: error:{given} give the manager's HOST:PORT (as `flowdc download --engine "
            f"taskvine` printed it) or --manager_name NAME",
            file=sys.stderr,
        )
        return 2
    program = _vine_worker()
    if program is None:
        print(
            "flowdc: error: no vine_worker here: run `make taskvine` in a FLOW-DC clone, or "
            "`conda install -c conda-forge ndcctools`",
            file=sys.stderr,
        )
        return 2
    if args.password and not os.access(args.password, os.R_OK):
        print(f"flowdc: error: --password {args.password}: no readable file", file=sys.stderr)
        return 2
    workspace = args.workspace or tempfile.mkdtemp(prefix="flowdc-vine-worker-")
    command = [
        program,
        "--workspace",
        workspace,
        "--cores",
        str(max(1, args.cores)),
        "--feature",
        f"flowdc-{__version__}",
        "--parent-death",
        *(["--password", args.password] if args.password else []),
        *(["--ssl"] if args.ssl else []),
        *extra,
        *where,
    ]
    return _run(command)


def _vine_worker() -> str | None:
    """This environment's vine_worker (make taskvine links it beside python), else PATH's."""
    beside = Path(sys.executable).parent / "vine_worker"
    return str(beside) if beside.exists() else shutil.which("vine_worker")


def worker_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TCP_LOW_PORT", "TCP_HIGH_PORT")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _run(command: list[str]) -> int:
    """vine_worker until it ends; then why, when the FLOW-DC library made it leave."""
    from flowdc.engines.taskvine.worker import NOTES_ENV

    handle, notes = tempfile.mkstemp(prefix="flowdc-worker-", suffix=".notes")
    os.close(handle)
    env = {**worker_environment(), NOTES_ENV: notes}
    try:
        code = _supervise(subprocess.Popen(command, env=env, start_new_session=True), Path(notes))
        left = Path(notes).read_text(encoding="utf-8").strip()
    finally:
        os.unlink(notes)
    if left:
        print(f"flowdc worker: {left.splitlines()[-1]}", file=sys.stderr)
        return 3
    return code


def _supervise(process: subprocess.Popen[bytes], notes: Path) -> int:
    """Wait for the worker; end it on Ctrl-C or SIGTERM, or when its library leaves a note."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return process.wait(NOTE_CHECK)
            if notes.stat().st_size:
                _stop(process)
                return process.wait()
    except KeyboardInterrupt:
        _stop(process)
        return 130
    finally:
        end_session(process.pid)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the worker tells the manager it goes), then SIGKILL of its whole session."""
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_GRACE)
    end_session(process.pid)


def end_session(session: int) -> None:
    """SIGKILL what is left of the worker's session (its library, its shards' processes)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        members = session_members(session)
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def session_members(session: int) -> list[int]:
    """Live processes of a session (Linux /proc; elsewhere only its process group)."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(session, 0)
            return [session]
        except ProcessLookupError:
            return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[3]) == session and fields[0] != b"Z":
            found.append(int(entry))
    return found
