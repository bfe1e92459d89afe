"""The wild bed's network: namespaces it creates, and always removes.

One namespace holds every remote host ("the internet"): a bridge, 198.19.0.1/24, that the
client machines plug into, and its loopback carrying one /32 per host in 198.18.0.0/16. Each client
machine is a namespace of its own with a veth into that bridge (198.19.0.11, .12, ...), a route to
198.18.0.0/16 through 198.19.0.1 and no default route: nothing else is reachable from it. The
download direction of each machine is capped by HTB on its veth's bridge end. A black-holed host is
an address routed `blackhole` inside the hosts' namespace: a SYN to it vanishes (forwarding is off
there, so nothing answers, not even ICMP). Host names (hostNNN.wild.test) are given to each client
namespace through /etc/netns/<ns>/hosts, which `ip netns exec` mounts over /etc/hosts.

Nothing outside these namespaces is touched except /etc/netns/<ns>/ (made and removed here).
Everything is removed in `Bed.close()`, which `with Bed(...)` calls also on errors; the signal
handlers installed by `install_signal_handlers` turn SIGTERM and SIGHUP into SystemExit so that
`finally` blocks run. `sweep_stale()` removes what a killed run (SIGKILL) left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

PREFIX = "wild"  # every namespace this module makes is named wild<pid>x<suffix>
HOSTS_NET = "198.18"  # host i: 198.18.(i // 250).(i % 250 + 1)
GATEWAY = "198.19.0.1"  # the bridge's address in the hosts' namespace
DOMAIN = "wild.test"


def host_address(index: int) -> str:
    return f"{HOSTS_NET}.{index // 250}.{index % 250 + 1}"


def host_name(index: int) -> str:
    return f"host{index:03d}.{DOMAIN}"


def client_address(machine: int) -> str:
    return f"198.19.0.{11 + machine}"


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=30)


def netns_permitted() -> str | None:
    """None when this process may make network namespaces; else why not, in one line."""
    if os.geteuid() != 0:
        return "not root: the wild bed makes network namespaces"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    name = f"{PREFIX}{os.getpid()}xprobe"
    try:
        result = run("ip", "netns", "add", name, check=False)
        if result.returncode != 0:
            return f"`ip netns add` not permitted: {result.stderr.strip()}"
    finally:
        run("ip", "netns", "del", name, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_namespace_processes(name: str) -> None:
    """SIGTERM then SIGKILL every process in a namespace (bounded: 5 s)."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        pids = [int(p) for p in run("ip", "netns", "pids", name, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)


def delete_namespace(name: str) -> None:
    kill_namespace_processes(name)
    run("ip", "netns", "del", name, check=False)
    shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


def our_namespaces() -> list[str]:
    names = run("ip", "netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in names if line.startswith(PREFIX) and "x" in line]


def sweep_stale() -> list[str]:
    """Remove namespaces of this module whose making process is gone (a SIGKILLed run)."""
    removed = []
    for name in our_namespaces():
        pid = name[len(PREFIX) :].split("x", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            delete_namespace(name)
            removed.append(name)
    with contextlib.suppress(FileNotFoundError):
        for folder in Path("/etc/netns").iterdir():
            pid = folder.name[len(PREFIX) :].split("x", 1)[0]
            if folder.name.startswith(PREFIX) and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
    return removed


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP end the run through SystemExit and SIGINT through KeyboardInterrupt,
    so every `finally` runs."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    # a shell's `cmd &` starts it with SIGINT ignored: Ctrl-C / kill -INT must still clean up
    signal.signal(signal.SIGINT, signal.default_int_handler)


class Bed:
    """The namespaces of one bed: hosts + `machines` clients, each download capped at `mbit`
    (None: no cap). Use as a context manager; `close()` removes everything."""

    def __init__(
        self,
        hosts: int,
        machines: int,
        mbit: float | None,
        blackholes: tuple[int, ...] = (),
        names: bool = True,
    ) -> None:
        self.tag = f"{PREFIX}{os.getpid()}x"
        self.hosts_ns = f"{self.tag}h"
        self.client_ns = [f"{self.tag}c{i}" for i in range(machines)]
        self.host_count = hosts
        self.mbit = mbit
        self.blackholes = blackholes
        self.names = names
        self.made: list[str] = []

    def __enter__(self) -> Bed:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exec(self, ns: str, *command: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *command]

    def ns_run(self, ns: str, *command: str) -> None:
        run(*self.exec(ns, *command))

    def _add_ns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.made.append(name)
        self.ns_run(name, "ip", "link", "set", "lo", "up")

    def _build(self) -> None:
        hosts = self.hosts_ns
        self._add_ns(hosts)
        self.ns_run(hosts, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        self.ns_run(hosts, "ip", "link", "add", "br0", "type", "bridge")
        self.ns_run(hosts, "ip", "addr", "add", f"{GATEWAY}/24", "dev", "br0")
        self.ns_run(hosts, "ip", "link", "set", "br0", "up")
        batch = []
        for index in range(self.host_count):
            if index in self.blackholes:
                batch.append(f"route add blackhole {host_address(index)}/32")
            else:
                batch.append(f"addr add {host_address(index)}/32 dev lo")
        self._batch(hosts, batch)
        # plenty of sockets and a wide accept queue for the hosts' server
        self.ns_run(hosts, "sysctl", "-qw", "net.core.somaxconn=4096")
        for machine, name in enumerate(self.client_ns):
            self._add_ns(name)
            peer = f"vc{machine}"
            run("ip", "link", "add", "eth0", "netns", name, "type", "veth", "peer", "name", peer,
                "netns", hosts)  # fmt: skip
            self.ns_run(hosts, "ip", "link", "set", peer, "master", "br0")
            self.ns_run(hosts, "ip", "link", "set", peer, "up")
            self.ns_run(name, "ip", "addr", "add", f"{client_address(machine)}/24", "dev", "eth0")
            self.ns_run(name, "ip", "link", "set", "eth0", "up")
            self.ns_run(name, "ip", "route", "add", f"{HOSTS_NET}.0.0/16", "via", GATEWAY)
            if self.mbit:
                rate = f"{self.mbit}mbit"
                self.ns_run(hosts, "tc", "qdisc", "add", "dev", peer, "root", "handle", "1:",
                            "htb", "default", "10")  # fmt: skip
                self.ns_run(hosts, "tc", "class", "add", "dev", peer, "parent", "1:", "classid",
                            "1:10", "htb", "rate", rate, "ceil", rate)  # fmt: skip
            if self.names:
                folder = Path("/etc/netns") / name
                folder.mkdir(parents=True, exist_ok=True)
                lines = ["127.0.0.1 localhost", "::1 localhost"]
                lines += [f"{host_address(i)} {host_name(i)}" for i in range(self.host_count)]
                (folder / "hosts").write_text("\n".join(lines) + "\n")

    def _batch(self, ns: str, lines: list[str]) -> None:
        if lines:
            subprocess.run(
                self.exec(ns, "ip", "-batch", "-"),
                input="\n".join(lines) + "\n",
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            )

    def close(self) -> None:
        for name in reversed(self.made):
            delete_namespace(name)
        self.made.clear()

    def gone(self) -> bool:
        """True when none of this bed's namespaces (nor their /etc/netns folders) is left."""
        left = [name for name in our_namespaces() if name.startswith(self.tag)]
        folders = [p for p in Path("/etc/netns").glob(f"{self.tag}*")]
        return not left and not folders
