"""The wild bed: FLOW-DC and img2dataset against a few hundred remote hosts that behave like the
web's, from 1, 2 and 4 client machines, all inside network namespaces made for the run.

    sudo .venv/bin/python benchmarks/wild.py [--machines 1 2 4] [--urls 20000] [--hosts 200]
        [--seed 1] [--mbit 400] [--duration-limit 600] [--cases wild img2dataset scale resize]
        [--json OUT]

The hosts (wild_hosts.py) share the list Zipf-like (one holds half, a few several percent, a long
tail tens of URLs each) and hide a request rate, a concurrency knee, a time to first byte, a
bandwidth cap and their answer when pushed (429 or 503, with or without Retry-After); some are
flaky, black holes, refusing, one dies halfway, one comes back after --comeback-after seconds, some
allow no burst. One asyncio process in the hosts' namespace plays them all and logs every request.
The images (wild_corpus.py) are photo-like JPEGs of 0.5-12 megapixels, mean near 353 KB, made once
per seed and cached under ~/.cache/flowdc-wild. The network (wild_net.py): each client machine is
a namespace whose downloads are capped at --mbit; nothing outside the namespaces is reached.

Cases (each run bounded by --duration-limit seconds, then stopped; what it wrote is measured):
- wild: `flowdc download` on the wild list, with 1 machine (the local engine, its defaults) and
  with 2 and 4 (the Dask engine: a scheduler and `flowdc worker --nworkers 1` in each machine's
  namespace, `--concurrent_downloads` 256 per machine, as docs/distributed.md says);
- img2dataset: img2dataset on the same list from 1 machine, with the settings of throughput.py
  (2 processes x 64 threads, timeout 30: what its README recommends for a 2-core machine);
- scale: `flowdc download` on a list of hosts without limits, 1, 2 and 4 machines capped at
  --scale-mbit: the scaling efficiency where the machines' bandwidth, not the hosts, binds;
- resize: both tools with center_crop to 256 px on the no-limit list, one machine without a cap
  (CPU binds), then benchmarks/pixel_floor.py on the bed's pool.

Every run is measured against the ideal of the same run (wild_measure.ideal): time / ideal; per
host the most requests it saw in any 10 s window over 10 s at its hidden rate (server side); the
429/503 share of all requests; whether every input row is in the results tables exactly once;
dead hosts' rows failed; images/s; the client's CPU (cores used on average).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import wild_corpus
import wild_hosts
import wild_measure
import wild_net
from core_run import _adopt_orphans, _reap_session, _tree_rss
from throughput import ensure_img2dataset, i2d_command

HERE = Path(__file__).resolve().parent
CASES = ("wild", "img2dataset", "scale", "resize")
SCHEDULER_PORT = 8786


def flowdc_version() -> str:
    """Which FLOW-DC the runs use: the git commit of the source `python -m flowdc` imports, and
    whether its tree has changes (an editable install runs whatever that tree holds)."""
    spec = importlib.util.find_spec("flowdc")
    if spec is None or spec.origin is None:
        return "not installed"
    folder = Path(spec.origin).resolve().parent
    git = ["git", "-C", str(folder)]
    head = subprocess.run([*git, "log", "-1", "--format=%h %ci"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "."], capture_output=True, text=True)
    changed = " + uncommitted changes" if dirty.stdout.strip() else ""
    return f"{folder}: {head.stdout.strip() or 'not a git tree'}{changed}"


def clean_env() -> dict[str, str]:
    """This environment without proxies (nothing but the bed is reachable from a machine)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    # kept: PYTHONPATH=<tree>/src runs that tree's FLOW-DC in every machine (flowdc_version
    # reports the tree this process imports, so the children must import the same)
    return env


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def process_cpu(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def stop_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM a process's session (it was started in its own), then SIGKILL after `grace`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 15)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait(5)


class WildBed:
    """The namespaces, the hosts' server and the machines; a context manager that removes all."""

    def __init__(
        self,
        hosts: list[wild_hosts.Host],
        pool_dir: Path,
        machines: int,
        mbit: float | None,
        work: Path,
    ) -> None:
        self.hosts = hosts
        self.pool_dir = pool_dir
        self.mbit = mbit
        self.work = work
        blackholes = tuple(h.index for h in hosts if h.kind == "blackhole")
        self.net = wild_net.Bed(len(hosts), machines, mbit, blackholes=blackholes)
        self.server: subprocess.Popen | None = None
        self.control = str(work / "control.sock")
        self.env = clean_env()

    def __enter__(self) -> WildBed:
        self.net.__enter__()
        try:
            self._start_server()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.server is not None:
            stop_group(self.server, 5)
            self.server = None
        self.net.close()

    def _start_server(self) -> None:
        spec = self.work / "hosts.json"
        wild_hosts.write_spec(self.hosts, spec)
        command = [sys.executable, str(HERE / "wild_hosts.py"), str(spec), str(self.pool_dir),
                   self.control]  # fmt: skip
        log = open(self.work / "server.log", "ab")
        self.server = subprocess.Popen(
            self.net.exec(self.net.hosts_ns, *command),
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
            cwd=self.work,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not os.path.exists(self.control):
            if self.server.poll() is not None:
                raise RuntimeError(f"the hosts' server ended: see {self.work / 'server.log'}")
            time.sleep(0.1)
        if not os.path.exists(self.control):
            raise RuntimeError("the hosts' server did not start in 120 s")

    def command(self, **message: str) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(60)
            sock.connect(self.control)
            sock.sendall(json.dumps(message).encode() + b"\n")
            if not sock.makefile().readline().startswith("ok"):
                raise RuntimeError(f"the hosts' server did not do {message}")

    def set_cap(self, machine: int, mbit: float | None) -> None:
        """Change one machine's download cap (None: no cap)."""
        peer, ns = f"vc{machine}", self.net.hosts_ns
        wild_net.run(*self.net.exec(ns, "tc", "qdisc", "del", "dev", peer, "root"), check=False)
        if mbit:
            rate = f"{mbit}mbit"
            self.net.ns_run(ns, "tc", "qdisc", "add", "dev", peer, "root", "handle", "1:", "htb",
                            "default", "10")  # fmt: skip
            self.net.ns_run(ns, "tc", "class", "add", "dev", peer, "parent", "1:", "classid",
                            "1:10", "htb", "rate", rate, "ceil", rate)  # fmt: skip

    def start_cluster(self, machines: int, processes: list[subprocess.Popen]) -> str:
        """A Dask scheduler in machine 0 and `flowdc worker` (one process, two threads) in each
        machine; returns the scheduler's address once every worker has joined."""
        address = f"tcp://{wild_net.client_address(0)}:{SCHEDULER_PORT}"
        log = open(self.work / "cluster.log", "ab")
        first = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--no-dashboard",
                 "--host", wild_net.client_address(0), "--port", str(SCHEDULER_PORT)]  # fmt: skip
        commands = [(0, first)]
        for machine in range(machines):
            commands.append((machine, [sys.executable, "-m", "flowdc", "worker", address,
                             "--nworkers", "1", "--nthreads", "2", "--no-dashboard",
                             "--host", wild_net.client_address(machine),
                             "--name", f"machine{machine}", "--death-timeout", "60"]))  # fmt: skip
        for machine, command in commands:
            processes.append(
                subprocess.Popen(
                    self.net.exec(self.net.client_ns[machine], *command),
                    stdout=log,
                    stderr=log,
                    cwd=self.work,
                    env=self.env,
                    start_new_session=True,
                )
            )
        wait = (
            f"from distributed import Client; "
            f"Client({address!r}, timeout=60).wait_for_workers({machines}, timeout=90)"
        )
        subprocess.run(
            self.net.exec(self.net.client_ns[0], sys.executable, "-c", wait),
            check=True,
            timeout=120,
            cwd=self.work,
            env=self.env,
            capture_output=True,
        )
        return address

    def run(self, name: str, command: list[str], machines: int, limit: float) -> dict:
        """Run a tool in machine 0 (with a Dask cluster over `machines` when the command asks
        for one: '{scheduler}' in it), bounded by `limit` seconds; returns timings and CPU."""
        _adopt_orphans()
        self.command(cmd="reset")
        cluster: list[subprocess.Popen] = []
        before = os.times()
        busy0, total0 = cpu_busy()
        server0 = process_cpu(self.server.pid) if self.server else 0.0
        errors = open(self.work / f"{name}.stderr", "w+b")
        timed_out = False
        peak = 0
        try:
            if any("{scheduler}" in part for part in command):
                address = self.start_cluster(machines, cluster)
                command = [part.replace("{scheduler}", address) for part in command]
            started = time.monotonic()
            process = subprocess.Popen(
                self.net.exec(self.net.client_ns[0], *command),
                stdout=subprocess.DEVNULL,
                stderr=errors,
                cwd=self.work,
                env=self.env,
                start_new_session=True,
            )
            deadline = started + limit
            while process.poll() is None:
                if time.monotonic() > deadline:
                    timed_out = True
                    stop_group(process, 20)
                    break
                peak = max(peak, _tree_rss(process.pid)[0])
                time.sleep(0.1)
            seconds = time.monotonic() - started
            _reap_session(process.pid)
        finally:
            for member in reversed(cluster):
                stop_group(member, 10)
            for ns in self.net.client_ns:  # nothing of this run lives on
                wild_net.kill_namespace_processes(ns)
        after = os.times()
        busy1, total1 = cpu_busy()
        errors.seek(0)
        tail = errors.read().decode(errors="replace")[-3000:]
        errors.close()
        log_path = self.work / f"{name}.log.json"
        self.command(cmd="dump", path=str(log_path))
        cpu = (after.children_user - before.children_user) + (
            after.children_system - before.children_system
        )
        return {
            "started": started,
            "seconds": seconds,
            "returncode": process.returncode,
            "timed_out": timed_out,
            "client_cpu": cpu,
            "client_peak_mb": peak / 1e6,
            "server_cpu": (process_cpu(self.server.pid) if self.server else 0.0) - server0,
            "machine_busy": (busy1 - busy0) / max(1, total1 - total0),
            "stderr_tail": tail,
            "log": wild_measure.load_log(log_path),
        }


def flowdc_command(urls: Path, out: Path, machines: int, *extra: str) -> list[str]:
    """`flowdc download` as a user types it: the local engine on one machine, else the Dask
    engine on the bed's cluster with 256 downloads per machine (docs/distributed.md)."""
    command = [sys.executable, "-m", "flowdc", "download", "--input", str(urls), "--output",
               str(out), "--no-progress"]  # fmt: skip
    if machines > 1:
        command += ["--engine", "dask", "--scheduler", "{scheduler}",
                    "--concurrent_downloads", str(256 * machines)]  # fmt: skip
    return [*command, *extra]


def img2dataset_command(urls: Path, out: Path, *extra: str) -> list[str]:
    return i2d_command(ensure_img2dataset(), urls, out, 64, "--output_format", "webdataset", *extra)


def run_case(
    bed: WildBed,
    label: str,
    command: list[str],
    machines: int,
    rows: list[tuple[int, int, int]],
    sizes: list[int],
    args: argparse.Namespace,
    mbit: float | None,
    out: Path,
) -> dict:
    run = bed.run(label, command, machines, args.duration_limit)
    ideal = wild_measure.ideal(bed.hosts, rows, sizes, machines, mbit, args.timeout)
    log = run.pop("log")
    result = wild_measure.measure(bed.hosts, rows, log, out, run["started"], run["seconds"])
    result.update(run)
    # every request the hosts saw, as seconds from the tool's start (JSON only)
    result["server_log"] = [
        (round(t - run["started"], 4), h, c, b, r, m) for t, h, c, b, r, m in log["log"]
    ]
    result["ideal"] = {k: v for k, v in ideal.items() if k != "per_host"}
    result["ideal_per_host"] = ideal["per_host"]
    if mbit is None:  # no cap and no host limit: nothing bounds the time but the CPU
        result["ideal"]["seconds"] = None
    result["time_over_ideal"] = run["seconds"] / ideal["seconds"] if mbit else None
    result["images_per_s"] = result["success"] / run["seconds"]
    result["client_cores"] = run["client_cpu"] / run["seconds"]
    with contextlib.suppress(OSError, ValueError, KeyError):
        overview = json.loads((out / "overview.json").read_text())
        result["overview_total"] = overview["download_summary"]["total"]
    shutil.rmtree(out, ignore_errors=True)
    print_run(label, result, bed.hosts)
    return result


def print_run(label: str, r: dict, hosts: list[wild_hosts.Host]) -> None:
    ideal = r["ideal"]
    bound = (
        f"ideal {ideal['seconds']:.1f} s (bandwidth {ideal['bandwidth_seconds']:.1f} s, slowest "
        f"host {ideal['slowest_host']} {ideal['slowest_host_seconds']:.1f} s)"
        if ideal["seconds"]
        else "no ideal (no cap, no host limit: the CPU binds)"
    )
    print(
        f"\n== {label}: {r['seconds']:.1f} s{' (STOPPED at the limit)' if r['timed_out'] else ''}"
        f", exit {r['returncode']}; {bound}"
    )
    print(
        f"   rows {r['results_rows']}/{r['rows']} (missing {r['missing']}, duplicated "
        f"{r['duplicated']}, unexpected {r['unexpected']}), success {r['success']}, phantom "
        f"successes {r['phantom_successes']}, dead rows failed {r['dead_rows_failed']}/"
        f"{r['dead_rows']}, dying host rows ok {r['dying_rows_success']}/{r['dying_rows']}"
    )
    print(
        f"   requests {r['requests']}, 429/503 {r['throttled']} ({r['throttled_share']:.1%}), "
        f"flaky errors {r['flaky_errors']}; client CPU {r['client_cpu']:.0f} s "
        f"({r['client_cores']:.2f} cores), server CPU {r['server_cpu']:.0f} s, machine busy "
        f"{r['machine_busy']:.0%}"
    )
    by_index = {h.index: h for h in hosts}
    worst = sorted(r["over_limit"].items(), key=lambda kv: -kv[1])[:5]
    print(
        "   most over their rate (max 10 s window / rate): "
        + ", ".join(
            f"{h} {by_index[h].kind} rate {by_index[h].rate}: {v:.2f}" for h, v in worst if v > 1
        )
    )
    kinds = ", ".join(f"{k} {v['success']}/{v['rows']}" for k, v in sorted(r["per_kind"].items()))
    print(f"   success per kind: {kinds}")
    print(
        f"   MB per machine (server side) {r['machine_mb']}; MB/s per 10 s from the start: "
        f"{r['mb_per_s_by_10s']}"
    )
    print(
        f"   last request of a living host at {r['last_useful_request']:.0f} s: the last "
        f"{r['dead_tail']:.0f} s only dead hosts kept the run going"
    )
    for host, b in sorted(r["behaviour"].items(), key=lambda kv: kv[1]["kind"]):
        spec = by_index[host]
        detail = f"share {spec.flaky_share} {spec.flaky_mode}" if spec.kind == "flaky" else ""
        print(
            f"   {b['kind']} host {host} {detail}: {b['success']}/{b['urls']} ok, "
            f"{b['requests']} requests, {b['achieved_rate']} requests/s of {b['allowed_rate']} "
            f"allowed, refused {b['refused_share']:.0%}, first {b['first']}, last {b['last']}"
        )
    late = []
    for host, times in r["timeline"].items():
        allowed = r["ideal_per_host"].get(host)
        if allowed is not None and by_index[host].kind != "open":
            late.append((times["last"] - allowed, host, times, allowed))
    late.sort(reverse=True)
    for _excess, host, times, allowed in late[:4]:
        spec = by_index[host]
        print(
            f"   late host {host} ({spec.kind}, {spec.urls} URLs, rate {spec.rate}, ttfb "
            f"{spec.ttfb}, knee {spec.knee}): first request at {times['first']:.0f} s, last at "
            f"{times['last']:.0f} s, its ideal {allowed:.0f} s, answers {times['codes']}, "
            f"most in flight {times['max_inflight']}"
        )
    if r["returncode"] not in (0, None) and not r["timed_out"]:
        print("   stderr: " + r["stderr_tail"][-600:].replace("\n", "\n   "))


def table(results: list[dict]) -> None:
    print(
        f"\n{'case':<12}{'tool':<12}{'mach':>5}{'time s':>8}{'ideal s':>8}{'t/ideal':>8}"
        f"{'img/s':>7}{'success':>8}{'429/503':>8}{'max over':>9}{'>1.1':>5}{'rows ok':>8}"
        f"{'dead ok':>8}{'cores':>6}"
    )
    for r in results:
        ratio = f"{r['time_over_ideal']:.2f}" if r["time_over_ideal"] else "-"
        ideal = f"{r['ideal']['seconds']:.0f}" if r["ideal"]["seconds"] else "-"
        dead = f"{r['dead_rows_failed']}/{r['dead_rows']}"
        print(
            f"{r['case']:<12}{r['tool']:<12}{r['machines']:>5}{r['seconds']:>8.1f}{ideal:>8}"
            f"{ratio:>8}{r['images_per_s']:>7.0f}{r['success'] / r['rows']:>8.1%}"
            f"{r['throttled_share']:>8.1%}{r['max_over_limit']:>9.2f}"
            f"{len(r['hosts_over_1_1']):>5}{'yes' if r['accounted'] else 'NO':>8}"
            f"{dead:>8}{r['client_cores']:>6.2f}"
        )


def scaling(results: list[dict]) -> None:
    runs = {r["machines"]: r["seconds"] for r in results if r["case"] == "scale"}
    if 1 in runs:
        print("\nscaling on the no-limit list (efficiency = speed-up / machines):")
        for machines, seconds in sorted(runs.items()):
            speedup = runs[1] / seconds
            print(f"  {machines} machine(s): {seconds:.1f} s, speed-up {speedup:.2f}, "
                  f"efficiency {speedup / machines:.2f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pool", type=int, default=64, help="images in the pool")
    parser.add_argument("--mbit", type=float, default=400, help="each machine's download cap")
    parser.add_argument("--open-urls", type=int, default=8000, help="URLs of the no-limit list")
    parser.add_argument("--scale-mbit", type=float, default=200,
                        help="each machine's cap in the scale case: low enough that 4 machines "
                        "stay under what 2 cores can download and store")  # fmt: skip
    parser.add_argument("--comeback-after", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="both tools' request timeout (FLOW-DC's default; throughput.py gives "
                        "img2dataset 30): a black hole costs the ideal one")  # fmt: skip
    parser.add_argument("--duration-limit", type=float, default=600, help="seconds per tool run")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--flowdc-args", default="", help="extra options for flowdc download")
    parser.add_argument("--json", help="write every measurement to this JSON file")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    why = wild_net.netns_permitted()
    if why:
        print(f"cannot build the bed: {why}")
        return 2
    wild_net.install_signal_handlers()
    wild_net.sweep_stale()
    hosts = wild_hosts.generate(args.hosts, args.urls, args.seed, args.comeback_after)
    pool_dir, sizes = wild_corpus.make_pool(args.pool, args.seed)
    rows = wild_measure.wild_rows(hosts, args.pool, args.seed)
    open_rows = wild_measure.open_rows(hosts, args.open_urls, args.pool, args.seed)
    print(
        f"{args.urls:,} URLs on {args.hosts} hosts (+{len(hosts) - args.hosts} without limits), "
        f"pool of {len(sizes)} JPEGs in {pool_dir}, mean {statistics.mean(sizes) / 1e3:.0f} KB; "
        f"machines {args.machines}, {args.mbit:g} Mbit/s each; {os.cpu_count()} cores"
    )
    version = flowdc_version()
    print(f"FLOW-DC: {version}")
    counts: dict[str, int] = {}
    for host in hosts:
        counts[host.kind] = counts.get(host.kind, 0) + 1
    print("hosts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    extra = args.flowdc_args.split()
    results: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="flowdc-wild-"))
    try:
        with WildBed(hosts, pool_dir, max(args.machines), args.mbit, work) as bed:
            lists = {
                "wild": wild_measure.write_list(rows, work / "wild.parquet"),
                "open": wild_measure.write_list(open_rows, work / "open.parquet"),
            }

            def one(case, tool, machines, command, list_rows, out, mbit=args.mbit):
                label = f"{case} {tool} {machines} machine(s)"
                result = run_case(bed, label, command, machines, list_rows, sizes, args, mbit, out)
                result.update(case=case, tool=tool, machines=machines)
                results.append(result)

            for case in args.cases:
                if case == "wild":
                    for m in args.machines:
                        out = work / f"out-wild-{m}"
                        command = flowdc_command(lists["wild"], out, m, *extra)
                        one("wild", "flowdc", m, command, rows, out)
                elif case == "img2dataset":
                    out = work / "out-i2d"
                    command = img2dataset_command(lists["wild"], out, "--resize_mode", "no",
                                                  "--disable_all_reencoding", "True")  # fmt: skip
                    one("wild", "img2dataset", 1, command, rows, out)
                elif case == "scale":
                    for machine in range(max(args.machines)):
                        bed.set_cap(machine, args.scale_mbit)
                    try:
                        for m in args.machines:
                            out = work / f"out-scale-{m}"
                            command = flowdc_command(lists["open"], out, m, *extra)
                            one("scale", "flowdc", m, command, open_rows, out, args.scale_mbit)
                    finally:
                        for machine in range(max(args.machines)):
                            bed.set_cap(machine, args.mbit)
                elif case == "resize":
                    bed.set_cap(0, None)
                    try:
                        resize = ("--resize_mode", "center_crop", "--image_size", "256")
                        out = work / "out-resize-flowdc"
                        command = flowdc_command(lists["open"], out, 1, *resize, *extra)
                        one("resize", "flowdc", 1, command, open_rows, out, None)
                        out = work / "out-resize-i2d"
                        one("resize", "img2dataset", 1, img2dataset_command(lists["open"], out,
                            *resize), open_rows, out, None)  # fmt: skip
                    finally:
                        bed.set_cap(0, args.mbit)
                    floor = subprocess.run(
                        [sys.executable, str(HERE / "pixel_floor.py"), "--images", str(pool_dir),
                         "--repeat", "3"], capture_output=True, text=True, timeout=900)  # fmt: skip
                    print("\npixel_floor.py on the bed's pool:\n" + floor.stdout + floor.stderr)
                    results.append({"case": "pixel_floor", "output": floor.stdout})
        measured = [r for r in results if "tool" in r]
        table(measured)
        scaling(measured)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {"args": vars(args), "flowdc": version, "results": results},
                    indent=1,
                    default=str,
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
