"""The shard's writer thread: order, paths, a bounded queue, and write errors."""

from __future__ import annotations

import asyncio
import tarfile
import threading
from pathlib import Path

import pytest

from flowdc.shard.writers.background import BackgroundWriter
from flowdc.shard.writers.webdataset import TarShardWriter


def test_samples_are_written_in_order_and_records_get_their_paths(tmp_path: Path) -> None:
    tar = TarShardWriter(tmp_path, 0)
    writes = BackgroundWriter(tar, "test-writer")
    records = [{"key": f"{i:04d}"} for i in range(50)]

    async def main() -> None:
        for i, record in enumerate(records):
            await writes.put(record, record["key"], "jpg", bytes([i]) * (100 + i), {}, None, i)

    asyncio.run(main())
    writes.close()
    tar.commit()
    assert [r["path"] for r in records] == [f"{i:04d}.jpg" for i in range(50)]
    with tarfile.open(tmp_path / "00000.tar") as archive:
        names = archive.getnames()
        assert names[:4] == ["0000.jpg", "0000.json", "0000.cls", "0001.jpg"]
        member = archive.extractfile("0049.jpg")
        assert member is not None and member.read() == bytes([49]) * 149


class _Gated:
    """A writer whose writes wait for a gate; the first `fail_at`-th write raises."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.gate = threading.Event()
        self.written: list[str] = []
        self.fail_at = fail_at

    def add(self, key: str, *_: object) -> str:
        self.gate.wait(10)
        if self.fail_at is not None and len(self.written) == self.fail_at:
            raise OSError(28, "No space left on device")
        self.written.append(key)
        return key


def test_a_full_queue_makes_put_wait_without_blocking_the_loop() -> None:
    writer = _Gated()
    writes = BackgroundWriter(writer, "test-writer", limit=3)

    async def main() -> list[str]:
        ticks: list[str] = []

        async def ticker() -> None:
            for _ in range(5):
                ticks.append("tick")
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        for i in range(3):  # the thread waits at the gate with the first; three held in all
            await writes.put({}, str(i))
        fourth = asyncio.create_task(writes.put({}, "3"))
        await asyncio.sleep(0.1)
        assert not fourth.done()  # no room until the thread writes
        writer.gate.set()
        await asyncio.wait_for(fourth, 10)
        await tick_task
        return ticks

    assert asyncio.run(main()) == ["tick"] * 5  # the loop ran while put waited
    writes.close()
    assert writer.written == ["0", "1", "2", "3"]


def test_a_failed_write_is_raised_by_the_next_put_and_by_close() -> None:
    writer = _Gated(fail_at=1)
    writer.gate.set()
    writes = BackgroundWriter(writer, "test-writer")

    async def main() -> None:
        await writes.put({}, "a")
        await writes.put({}, "b")  # fails in the thread
        for _ in range(200):  # bounded: until the thread has met the error
            if writes.error is not None:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(OSError, match="No space"):
            await writes.put({}, "c")

    asyncio.run(main())
    with pytest.raises(OSError, match="No space"):
        writes.close()
    assert writer.written == ["a"]
    writes.stop()  # a second stop after close raises nothing
