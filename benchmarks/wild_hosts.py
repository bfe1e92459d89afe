"""The wild bed's remote hosts: a seeded generator of their hidden behaviour, and one asyncio
process that plays all of them (run inside the hosts' namespace, one listener per address).

Each host has a hidden request rate (a token bucket holding one second's worth, or, for a
no-burst host, none: a request within 1/rate of the last accepted one is refused, as nginx's
limit_req without burst does), a concurrency above which it slows down (each request in flight
above it adds one more time to first byte), a time to first byte (the server sleeps before the
headers), a bandwidth cap (writes paced on a per-host byte clock) and an answer when over its rate
(429 or 503, with or without Retry-After). Kinds beyond that:

- flaky: fails a fixed share of the requests it accepts (500, 502, 503 without Retry-After, or a
  reset), whatever the rate;
- blackhole: its address is routed `blackhole` in the hosts' namespace (SYNs vanish);
- refuse: its address exists and nothing listens (connection refused);
- dying: serves well until it has answered half its URLs, then its address is black-holed (the
  machine is gone: new SYNs vanish, answers in flight stall);
- comeback: refuses connections until `back_after` seconds after the run starts, then serves.

Every request a host sees is logged (arrival time on CLOCK_MONOTONIC, host, status, bytes, row,
client machine: the last byte of the peer's address less 11);
the bed reads the log through a control socket (a Unix socket: a file, not a network address).

    python wild_hosts.py SPEC.json POOL_DIR CONTROL_SOCKET      (inside the hosts' namespace)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

KINDS = ("normal", "noburst", "flaky", "blackhole", "refuse", "dying", "comeback", "open")
DEAD_KINDS = ("blackhole", "refuse", "dying")  # rows that must end with a failure (dying: some)
PORT = 80
# log codes besides HTTP statuses: a flaky host's error is FLAKY + its status (a flaky 503 is not
# a throttle); -1 a flaky reset; -2 the dying host's death; -3 the comeback host's return
FLAKY = 1000
MIB = 1 << 20


@dataclass
class Host:
    index: int
    kind: str
    urls: int = 0
    rate: float | None = None  # requests/s; None: no limit
    knee: int = 1000  # requests in flight above which each more adds one time to first byte
    ttfb: float = 0.02  # seconds to the headers
    bandwidth: float | None = None  # bytes/s over all its connections; None: no cap
    throttle_status: int = 429
    retry_after: int | None = None
    flaky_share: float = 0.0
    flaky_mode: str = "500"  # 500, 502, 503 or reset
    back_after: float = 0.0  # comeback: seconds of refusing from the start of a run
    extra: dict = field(default_factory=dict)


def log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def generate(
    hosts: int, urls: int, seed: int, back_after: float = 30.0, open_hosts: int = 8
) -> list[Host]:
    """`hosts` wild hosts sharing `urls` URLs Zipf-like, then `open_hosts` hosts without limits
    (for the scaling and resize lists). Every behaviour appears at least once when hosts >= 10."""
    rng = random.Random(seed)
    mids = min(5, max(1, hosts // 40))
    shares = [0.5] + [s / 100 for s in (8, 6, 5, 4, 3)[:mids]]
    tail = hosts - 1 - mids
    weights = [1 / (rank + 1) ** 0.4 for rank in range(tail)]
    rest = 1 - sum(shares)
    shares += [rest * w / sum(weights) for w in weights]
    counts = [int(urls * s) for s in shares]
    for index in range(urls - sum(counts)):  # the remainder, one each from the tail's start
        counts[(1 + mids + index % max(1, tail)) % hosts] += 1
    made = []
    for index in range(hosts):
        host = Host(index=index, kind="normal", urls=counts[index])
        host.rate = round(log_uniform(rng, 1, 300), 2)
        host.knee = int(log_uniform(rng, 2, 64))
        host.ttfb = round(min(2.0, max(0.02, rng.lognormvariate(math.log(0.15), 1.0))), 3)
        host.bandwidth = round(log_uniform(rng, 2, 50) * MIB)
        host.throttle_status = rng.choice((429, 503))
        host.retry_after = rng.choice((None, 1, 2))
        made.append(host)
    # the big hosts are CDN-like: fast, wide, a rate their share can use
    big = made[0]
    big.rate, big.knee, big.ttfb, big.bandwidth = 250.0, 64, 0.05, 100 * MIB
    for host in made[1 : 1 + mids]:
        host.rate = round(max(host.rate, rng.uniform(40, 120)), 2)
        host.knee = max(host.knee, 16)
        host.ttfb = min(host.ttfb, 0.3)
        host.bandwidth = max(host.bandwidth, 20 * MIB)
    # behaviours: on the tail (drawn), plus one mid host flaky, one no-burst and one dying
    tail_indices = list(range(1 + mids, hosts))
    rng.shuffle(tail_indices)
    per = max(1, hosts // 50)
    plan = (
        [("blackhole", per), ("refuse", per), ("comeback", 1)]
        + [("flaky", max(1, hosts // 20)), ("noburst", max(1, hosts // 20))]
        + ([("dying", 1)] if mids < 3 else [])
    )
    if mids >= 3:  # a mid host dies halfway, one is flaky, one has no burst
        made[1 + mids - 1].kind = "dying"
        made[2].kind = "flaky"
        made[3].kind = "noburst"
    for kind, count in plan:
        for _ in range(count):
            if tail_indices:
                made[tail_indices.pop()].kind = kind
    for host in made:
        if host.kind == "flaky":
            host.flaky_share = round(rng.uniform(0.05, 0.3), 2)
            host.flaky_mode = rng.choice(("500", "502", "503", "reset"))
        if host.kind == "noburst":
            host.rate = round(rng.uniform(2, 20) if host.index > mids else host.rate, 2)
            host.retry_after = None
        if host.kind == "comeback":
            host.back_after = back_after
    for offset in range(open_hosts):
        made.append(Host(index=hosts + offset, kind="open", ttfb=0.02))
    return made


def spec_hosts(path: Path) -> list[Host]:
    return [Host(**entry) for entry in json.loads(path.read_text())]


def write_spec(hosts: list[Host], path: Path) -> None:
    path.write_text(json.dumps([asdict(h) for h in hosts]))


# ---------------------------------------------------------------------------- the server


class HostState:
    def __init__(self, spec: Host, address: str) -> None:
        self.spec = spec
        self.address = address
        self.server: asyncio.base_events.Server | None = None
        self.reset()

    def reset(self) -> None:
        spec = self.spec
        self.tokens = max(1.0, spec.rate or 1.0)
        self.filled = time.monotonic()
        self.last_ok = -1e9
        self.inflight = 0
        self.max_inflight = 0
        self.served = 0
        self.dead = False
        self.byte_clock = 0.0
        self.rng = random.Random(spec.index * 7919 + 1)

    def admit(self, now: float) -> bool:
        """Whether the rate limit lets this request in."""
        rate = self.spec.rate
        if rate is None:
            return True
        if self.spec.kind == "noburst":
            if now - self.last_ok < 1 / rate:
                return False
            self.last_ok = now
            return True
        capacity = max(1.0, rate)
        self.tokens = min(capacity, self.tokens + (now - self.filled) * rate)
        self.filled = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Hosts:
    def __init__(self, specs: list[Host], pool: list[bytes], addresses: list[str]) -> None:
        self.pool = pool
        self.states = [HostState(s, a) for s, a in zip(specs, addresses, strict=True)]
        self.log: list[tuple[float, int, int, int, int, int]] = []
        self.writers: set[asyncio.StreamWriter] = set()
        self.timers: list[asyncio.TimerHandle] = []
        self.t0 = time.monotonic()
        self.generation = 0  # a run's number: a request of an earlier run is not logged in this

    def record(self, generation: int, entry: tuple[float, int, int, int, int, int]) -> None:
        if generation == self.generation:
            self.log.append(entry)

    async def listen(self, state: HostState) -> None:
        if state.server is None:
            state.server = await asyncio.start_server(
                lambda r, w, s=state: self.connection(s, r, w),
                state.address,
                PORT,
                backlog=1024,
                reuse_address=True,
            )

    async def unlisten(self, state: HostState) -> None:
        if state.server is not None:
            state.server.close()
            state.server = None

    async def ip(self, *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await process.wait()

    async def die(self, state: HostState) -> None:
        state.dead = True
        await self.ip("route", "add", "blackhole", f"{state.address}/32")
        await self.ip("addr", "del", f"{state.address}/32", "dev", "lo")
        await self.unlisten(state)
        self.log.append((time.monotonic(), state.spec.index, -2, 0, -1, -1))  # the death, logged

    async def revive(self, state: HostState) -> None:
        if state.dead:
            await self.ip("addr", "add", f"{state.address}/32", "dev", "lo")
            await self.ip("route", "del", "blackhole", f"{state.address}/32")
        state.dead = False

    async def start_run(self) -> None:
        """A new run: every host as at the start, the log emptied, open connections closed."""
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        self.generation += 1
        self.log = []
        self.t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        for state in self.states:
            kind = state.spec.kind
            await self.revive(state)
            state.reset()
            if kind in ("blackhole", "refuse"):
                continue
            if kind == "comeback":
                await self.unlisten(state)
                self.timers.append(
                    loop.call_later(
                        state.spec.back_after, lambda s=state: asyncio.ensure_future(self.back(s))
                    )
                )
                continue
            await self.listen(state)

    async def back(self, state: HostState) -> None:
        await self.listen(state)
        self.log.append((time.monotonic(), state.spec.index, -3, 0, -1, -1))  # back, logged

    async def connection(
        self, state: HostState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.writers.add(writer)
        writer.transport.set_write_buffer_limits(high=256 * 1024)
        try:
            machine = int(writer.get_extra_info("peername")[0].rsplit(".", 1)[1]) - 11
        except (TypeError, ValueError, IndexError):
            machine = -1
        try:
            for _ in range(100_000):  # requests on one keep-alive connection
                head = await reader.readuntil(b"\r\n\r\n")
                if not await self.request(state, head, writer, machine):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def request(
        self, state: HostState, head: bytes, writer: asyncio.StreamWriter, machine: int
    ) -> bool:
        """Answer one request; False to close the connection."""
        now = time.monotonic()
        gen = self.generation
        spec = state.spec
        line = head.split(b"\r\n", 1)[0].split()
        row, pick = -1, -1
        try:
            parts = line[1].decode().split("/")  # /i/<row>/<pick>.jpg
            row, pick = int(parts[2]), int(parts[3].split(".")[0])
        except (IndexError, ValueError):
            pass
        if state.dead:
            await asyncio.sleep(300)  # a dead machine answers nothing
            return False
        if not 0 <= pick < len(self.pool):
            self.record(gen, (now, spec.index, 404, 0, row, machine))
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return True
        if not state.admit(now):
            self.record(gen, (now, spec.index, spec.throttle_status, 0, row, machine))
            reason = b"Too Many Requests" if spec.throttle_status == 429 else b"Unavailable"
            extra = b"" if spec.retry_after is None else b"Retry-After: %d\r\n" % spec.retry_after
            writer.write(
                b"HTTP/1.1 %d %s\r\n%sContent-Length: 0\r\n\r\n"
                % (spec.throttle_status, reason, extra)
            )
            return True
        state.inflight += 1
        state.max_inflight = max(state.max_inflight, state.inflight)
        try:
            over = max(0, state.inflight - spec.knee)
            await asyncio.sleep(spec.ttfb * (1 + over))
            if spec.kind == "flaky" and state.rng.random() < spec.flaky_share:
                if spec.flaky_mode == "reset":
                    self.record(gen, (now, spec.index, -1, 0, row, machine))
                    writer.transport.abort()
                    return False
                code = int(spec.flaky_mode)
                self.record(gen, (now, spec.index, FLAKY + code, 0, row, machine))
                writer.write(b"HTTP/1.1 %d Error\r\nContent-Length: 0\r\n\r\n" % code)
                return True
            if state.dead:
                await asyncio.sleep(300)
                return False
            body = self.pool[pick]
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                % len(body)
            )
            await self.send(state, writer, memoryview(body))
            self.record(gen, (now, spec.index, 200, len(body), row, machine))
            if gen != self.generation:  # a request of an earlier run: counts for nothing now
                return False
            state.served += 1
            if spec.kind == "dying" and state.served >= spec.urls // 2 and not state.dead:
                await self.die(state)
            return True
        finally:
            if gen == self.generation:
                state.inflight -= 1

    async def send(self, state: HostState, writer: asyncio.StreamWriter, body: memoryview) -> None:
        bandwidth = state.spec.bandwidth
        if not bandwidth:
            writer.write(body)
            await writer.drain()
            return
        chunk = 64 * 1024
        for start in range(0, len(body), chunk):
            piece = body[start : start + chunk]
            now = time.monotonic()
            begin = max(now, state.byte_clock)
            state.byte_clock = begin + len(piece) / bandwidth
            if state.byte_clock > now:
                await asyncio.sleep(state.byte_clock - now)
            if state.dead:
                await asyncio.sleep(300)
                return
            writer.write(piece)
            await writer.drain()

    def dump(self, path: str) -> None:
        hosts = {
            str(s.spec.index): {"max_inflight": s.max_inflight, "served": s.served}
            for s in self.states
        }
        Path(path).write_text(json.dumps({"t0": self.t0, "log": self.log, "hosts": hosts}))

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            command = json.loads(await reader.readline())
            if command["cmd"] == "reset":
                await self.start_run()
            elif command["cmd"] == "dump":
                self.dump(command["path"])
            writer.write(b"ok\n")
            await writer.drain()
        finally:
            writer.close()


async def serve(spec_path: Path, pool_dir: Path, control: str, addresses: list[str]) -> None:
    specs = spec_hosts(spec_path)
    pool = [p.read_bytes() for p in sorted(pool_dir.glob("*.jpg"), key=lambda p: int(p.stem))]
    hosts = Hosts(specs, pool, addresses)
    await hosts.start_run()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_unix_server(hosts.control, control)
    print("ready", flush=True)
    await stop.wait()
    server.close()


def main() -> int:
    from wild_net import host_address

    spec_path, pool_dir, control = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    addresses = [host_address(h.index) for h in spec_hosts(spec_path)]
    asyncio.run(serve(spec_path, pool_dir, control, addresses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
