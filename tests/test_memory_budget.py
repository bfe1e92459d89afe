"""The memory budget for bodies in flight (fetch/budget.py, --max_memory): bodies from a real
server reserve their bytes, wait when the budget is spent, and give them back once written."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flowdc.core.status import SUCCESS
from flowdc.planning.inputs import InputTable
from flowdc.planning.plan import make_plan
from flowdc.shard.fetch.budget import MemoryBudget
from flowdc.shard.fetch.client import Fetcher
from flowdc.shard.fetch.http import FetchResult
from flowdc.shard.run import run_shard_async
from flowdc.shard.writers.background import BackgroundWriter
from flowdc.shard.writers.webdataset import TarShardWriter
from flowdc.testserver import ImageServer
from tests.test_background_writer import _Gated
from tests.test_fetch import make_config, with_fetcher

MIB = 1 << 20


async def fetch_all(fetcher: Fetcher, urls: list[str]) -> list[FetchResult]:
    return list(await asyncio.gather(*(fetcher.fetch(url) for url in urls)))


def test_bodies_with_a_length_never_hold_more_than_the_budget(fresh_server: ImageServer) -> None:
    urls = [fresh_server.url(f"bigcl/2?n={i}") for i in range(40)]

    async def work(fetcher: Fetcher) -> tuple[list[FetchResult], MemoryBudget]:
        return await fetch_all(fetcher, urls), fetcher.http.budget

    results, budget = with_fetcher(work, concurrency=40, max_memory=7 * MIB, timeout=30)
    assert [r.status for r in results] == [SUCCESS] * 40
    assert budget.peak <= 7 * MIB, budget.peak
    assert budget.peak >= 6 * MIB  # three bodies at once: the budget was used, not starved
    assert budget.waits > 0
    assert budget.in_use == 0  # every reservation was given back


def test_chunked_bodies_hold_at_most_one_body_over_the_budget(fresh_server: ImageServer) -> None:
    """Bodies without a length grow chunk by chunk; when every holder waits for more, the first
    goes on (no deadlock), so one body may overshoot."""
    urls = [fresh_server.url(f"big/2?n={i}") for i in range(30)]

    async def work(fetcher: Fetcher) -> tuple[list[FetchResult], MemoryBudget]:
        return await fetch_all(fetcher, urls), fetcher.http.budget

    results, budget = with_fetcher(work, concurrency=30, max_memory=5 * MIB, timeout=30)
    assert {r.status for r in results} == {SUCCESS}
    assert budget.peak <= 5 * MIB + 2 * MIB, budget.peak
    assert budget.waits > 0
    assert budget.in_use == 0


def test_a_body_larger_than_the_budget_is_fetched_alone(fresh_server: ImageServer) -> None:
    urls = [fresh_server.url("bigcl/3"), fresh_server.url("big/3"), fresh_server.url("bigcl/3")]

    async def work(fetcher: Fetcher) -> tuple[list[FetchResult], MemoryBudget]:
        return await fetch_all(fetcher, urls), fetcher.http.budget

    results, budget = with_fetcher(work, concurrency=3, max_memory=1 * MIB, timeout=30)
    assert [len(r.data or b"") for r in results] == [3 * MIB] * 3
    assert budget.peak <= 1 * MIB + 3 * MIB, budget.peak
    assert budget.in_use == 0


def test_waiting_for_memory_does_not_count_against_the_timeout(fresh_server: ImageServer) -> None:
    """The wait is this process's doing: a timeout would be blamed on the host (its rate cut)."""

    async def work(fetcher: Fetcher) -> tuple[FetchResult, float]:
        budget = fetcher.http.budget
        hog = budget.reservation()
        assert hog.try_grow(budget.limit)  # the budget is spent elsewhere
        waiting = asyncio.ensure_future(fetcher.fetch(fresh_server.url("bigcl/1")))
        await asyncio.sleep(2.5)  # well past the timeout
        assert not waiting.done()
        hog.release()
        result = await waiting
        return result, budget.in_use

    result, in_use = with_fetcher(work, max_memory=2 * MIB, timeout=1, max_retry_attempts=0)
    assert result.status == SUCCESS, result.error
    assert result.attempts == 1
    assert in_use == 0


def test_a_cancelled_wait_leaves_nothing_reserved(fresh_server: ImageServer) -> None:
    async def work(fetcher: Fetcher) -> tuple[int, int]:
        budget = fetcher.http.budget
        hog = budget.reservation()
        assert hog.try_grow(budget.limit)
        waiting = asyncio.ensure_future(fetcher.fetch(fresh_server.url("bigcl/1")))
        await asyncio.sleep(0.5)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        hog.release()
        await asyncio.sleep(0.1)
        return budget.in_use, len(budget._growing) + len(budget._starting)

    assert with_fetcher(work, max_memory=2 * MIB) == (0, 0)


def test_the_writer_thread_releases_a_body_once_written() -> None:
    """A shard's bodies stay reserved while they wait for the disk, and are given back after."""
    writer = _Gated()

    async def main() -> list[int]:
        budget = MemoryBudget(10 * MIB)
        writes = BackgroundWriter(writer, "test-writer", limit=8)
        seen = []
        for i in range(4):
            memory = budget.reservation()
            assert memory.try_grow(MIB)
            await writes.put({}, f"k{i}", "jpg", b"x", b"{}", None, i, release=memory.release)
        await asyncio.sleep(0.1)
        seen.append(budget.in_use)  # the disk has not written any
        writer.gate.set()
        await asyncio.get_running_loop().run_in_executor(None, writes.close)
        seen.append(budget.in_use)
        return seen

    assert asyncio.run(main()) == [4 * MIB, 0]


def test_a_failed_write_releases_the_bodies_it_drops() -> None:
    writer = _Gated(fail_at=1)
    writer.gate.set()

    async def main() -> int:
        budget = MemoryBudget(10 * MIB)
        writes = BackgroundWriter(writer, "test-writer", limit=8)
        for i in range(5):
            memory = budget.reservation()
            assert memory.try_grow(MIB)
            with contextlib.suppress(OSError):  # the failed write, raised by a later put
                await writes.put({}, f"k{i}", "jpg", b"x", b"{}", None, i, release=memory.release)
            await asyncio.sleep(0.05)
        writes.stop()
        return budget.in_use

    assert asyncio.run(main()) == 0


@pytest.fixture(scope="module")
def large_images() -> Iterator[ImageServer]:
    """PNGs of noise, 2 MiB each (noise does not compress)."""
    rng = random.Random(5)
    images = {}
    for i in range(4):
        noise = Image.frombytes("RGB", (836, 836), rng.randbytes(836 * 836 * 3))
        buffer = io.BytesIO()
        noise.save(buffer, format="PNG", compress_level=1)
        images[f"{i}.png"] = buffer.getvalue()
    with ImageServer(images, hosts=("127.0.0.4",)) as running:
        yield running


def test_a_shard_of_large_images_stays_within_the_budget(
    large_images: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_shard_async with the Fetcher of a worker and a slow disk: bodies are held from the
    first byte until the writer wrote them (not only until they are queued for it), and every
    reservation is given back by the commit."""
    size = len(large_images.images["0.png"])
    held = {"queued": 0, "written": 0, "most": 0}
    put, add = BackgroundWriter.put, TarShardWriter.add

    async def counted_put(self: BackgroundWriter, *args: Any, **kwargs: Any) -> None:
        held["queued"] += 1
        await put(self, *args, **kwargs)

    def slow_add(self: TarShardWriter, *args: Any) -> str:
        held["most"] = max(held["most"], held["queued"] - held["written"])
        time.sleep(0.1)
        held["written"] += 1
        return add(self, *args)

    monkeypatch.setattr(BackgroundWriter, "put", counted_put)
    monkeypatch.setattr(TarShardWriter, "add", slow_add)
    urls = [large_images.url(f"img/{i % 4}.png?n={i}") for i in range(16)]
    source = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": urls}), source)
    options: dict[str, Any] = {"input": str(source), "output": str(tmp_path / "ds")}
    config = make_config(**options, max_memory=7 * MIB, shard_size=100, timeout=30)
    (tmp_path / "ds").mkdir()
    plan = make_plan(config, InputTable(str(source), None))

    async def main() -> tuple[int, MemoryBudget]:
        fetcher = Fetcher(config, concurrency=16)
        try:
            result = await run_shard_async(plan, 0, config, fetcher)
            return result.successes, fetcher.http.budget
        finally:
            await fetcher.close()

    successes, budget = asyncio.run(main())
    assert successes == 16
    assert held["most"] * size <= 7 * MIB, held  # bodies waiting for the disk: within budget
    assert 2 * size < budget.peak <= 7 * MIB, budget.peak
    assert budget.waits > 0
    assert budget.in_use == 0
