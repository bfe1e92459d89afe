"""A fake-clock simulation of one client's AdaptiveRate against one host's hidden limit, for the
tests of fetch/aimd.py: the client sends whenever its rate allows (it always has work), the host
decides on arrival, the answer comes back a fixed latency later."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from flowdc.shard.fetch.aimd import AdaptiveConcurrency, AdaptiveRate, RateSettings
from flowdc.shard.fetch.pace import LocalPace


@dataclass
class HiddenHost:
    """`rate` requests/s; `burst`: tokens it holds (0: nginx's limit_req without burst, a
    request inside 1/rate of the last accepted one is refused); `flaky`: share of accepted
    requests answered 503 whatever the rate."""

    rate: float
    burst: float = 0.0
    flaky: float = 0.0
    seed: int = 1
    tokens: float = field(init=False, default=0.0)
    last: float = field(init=False, default=-1e9)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self.rng = random.Random(self.seed)

    def accepts(self, now: float) -> bool:
        if self.burst == 0:
            if now - self.last < 1 / self.rate:
                return False
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            if self.tokens < 1:
                return False
            self.tokens -= 1
        self.last = now
        return True


@dataclass
class Outcome:
    sent: list[float]
    accepted: int
    refused: int
    failed: int
    controller: AdaptiveRate

    def most_in_window(self, window: float = 10.0) -> int:
        """The most requests the host saw in any `window` seconds."""
        most, start = 0, 0
        for end, at in enumerate(self.sent):
            while self.sent[start] < at - window:
                start += 1
            most = max(most, end - start + 1)
        return most


@dataclass
class Client:
    controller: AdaptiveRate
    concurrency: AdaptiveConcurrency = field(default_factory=AdaptiveConcurrency)
    answers: list[tuple[float, float, str]] = field(default_factory=list)  # (at, sent, kind)

    def next_event(self, now: float) -> tuple[float, bool]:
        """(when, is it an answer): the next answer, or the next send its limits allow."""
        send = self.controller.available_at(now)
        if len(self.answers) >= self.concurrency.allowed(share=1000):
            send = max(send, self.answers[0][0] + 1e-9)
        if self.answers and self.answers[0][0] <= send:
            return self.answers[0][0], True
        return send, False


def simulate(
    host: HiddenHost,
    seconds: float,
    initial: float = 20.0,
    latency: float = 0.1,
    refusal_says_rate: bool = True,
    clients: int = 1,
    shared: bool = False,
) -> Outcome:
    """Run `clients` clients (each its own controller, as worker processes are) against `host`
    for `seconds`. `refusal_says_rate`: the host's refusals are 429s (or carry Retry-After);
    else 503s without it, which may be a flaky host's noise. `shared`: the clients take their
    turns from one pace, as the processes of one machine do (fetch/pace.py), and each holds the
    machine's rate; else each paces on its own with its share of the limits (machines)."""
    machine_pace = LocalPace()
    share = 1 if shared else clients
    group = [
        Client(
            AdaptiveRate(
                RateSettings(initial / share, 0.5 / share, 500.0, 20),
                machine_pace if shared else None,
            )
        )
        for _ in range(clients)
    ]
    sent: list[float] = []
    accepted = refused = failed = 0
    now = 0.0
    while now < seconds:
        now, answer, client = min(
            (*each.next_event(now), index) for index, each in enumerate(group)
        )
        each = group[client]
        if answer:
            _, sent_at, kind = heapq.heappop(each.answers)
            each.concurrency.on_answer(latency, sent_at, now, len(each.answers) + 1)
            if kind == "ok":
                each.controller.on_success(sent_at, now)
            else:
                noise = kind == "flaky" or not refusal_says_rate
                each.controller.on_throttle(sent_at, now, may_be_noise=noise)
            continue
        if not each.controller.try_take(now):
            continue  # another client of the machine took the turn
        sent.append(now)
        if not host.accepts(now):
            refused += 1
            kind = "refused"
        elif host.rng.random() < host.flaky:
            failed += 1
            kind = "flaky"
        else:
            accepted += 1
            kind = "ok"
        heapq.heappush(each.answers, (now + latency, now, kind))
    return Outcome(sent, accepted, refused, failed, group[0].controller)
