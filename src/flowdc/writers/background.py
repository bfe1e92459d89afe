"""One thread per shard that writes its samples in order, so the event loop never waits for disk.

The loop only queues a sample (a lock and a wake-up); it does not wait for each write to finish,
which took a thread pool's future and a call back into the loop per image (about 5% of the loop).
The thread fills in each record's `path` itself; the records are read only after `close`. The
queue is bounded: when the disk falls behind, `put` waits for room, so memory stays bounded. A
failed write (a full disk) is raised by the next `put` and by `close`; later samples are dropped.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

from flowdc.writers import SampleWriter

QUEUE_LIMIT = 64
"""Samples waiting for the thread at most (each holds its image's bytes: about 10 MB)."""


class BackgroundWriter:
    def __init__(self, writer: SampleWriter, name: str, limit: int = QUEUE_LIMIT) -> None:
        self.writer = writer
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[dict[str, Any], tuple[Any, ...]] | None] = queue.Queue(limit)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    async def put(self, record: dict[str, Any], *args: Any) -> None:
        """Queue `writer.add(*args)`; the thread sets record["path"] to what it returns."""
        if self.error is not None:
            raise self.error
        try:
            self._queue.put_nowait((record, args))
        except queue.Full:  # the disk is behind: wait for room without holding up the loop
            await asyncio.get_running_loop().run_in_executor(None, self._queue.put, (record, args))

    def close(self) -> None:
        """Wait until every queued sample is written; raise the first write error."""
        self.stop()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Wait until the thread is done, raising nothing (a failed shard's own error counts)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        add = self.writer.add
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain: the shard fails, nothing more is written
            record, args = item
            try:
                record["path"] = add(*args)
            except BaseException as exc:
                self.error = exc
