"""One thread per shard that writes its samples in order, so the event loop never waits for disk.

The loop does not wait for each write to finish (a thread pool's future and a call back into the
loop per image cost about 5% of the loop), nor does it wake the thread for each sample: handing
one over took a lock, a condition and a wake-up, 6% of the loop's samples in a profile. Samples
are gathered and handed over in batches, at the end of the loop's turn or every BATCH samples.
The thread fills in each record's `path` itself; the records are read only after `close`.
At most `limit` samples are held (gathered, queued or being written): when the disk falls
behind, `put` waits for room without holding up the loop, so memory stays bounded. A failed
write (a full disk) is raised by the next `put` and by `close`; later samples are dropped.
A sample may carry a `release` callback (its body's memory budget, fetch/budget.py): the thread
calls it once the sample is written or dropped.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

from flowdc.shard.writers import SampleWriter

QUEUE_LIMIT = 64
"""Samples held at most (each holds its image's bytes: about 10 MB in all)."""
BATCH = 16
"""Samples handed to the thread at once at most."""

_Sample = tuple[dict[str, Any], tuple[Any, ...], Callable[[], None] | None]


class BackgroundWriter:
    def __init__(self, writer: SampleWriter, name: str, limit: int = QUEUE_LIMIT) -> None:
        self.writer = writer
        self.error: BaseException | None = None
        self._room = threading.Semaphore(limit)
        self._queue: queue.SimpleQueue[list[_Sample] | None] = queue.SimpleQueue()
        self._gathered: list[_Sample] = []
        self._hand_over_planned = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    async def put(
        self, record: dict[str, Any], *args: Any, release: Callable[[], None] | None = None
    ) -> None:
        """Queue `writer.add(*args)`; the thread sets record["path"] to what it returns, then
        calls `release` (also when the sample is dropped, here or there)."""
        if self.error is not None:
            if release is not None:
                release()
            raise self.error
        if not self._room.acquire(blocking=False):  # the disk is behind: wait for room
            self._hand_over()
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._room.acquire)
            except BaseException:
                if release is not None:
                    release()
                raise
        self._gathered.append((record, args, release))
        if len(self._gathered) >= BATCH:
            self._hand_over()
        elif not self._hand_over_planned:
            self._hand_over_planned = True
            asyncio.get_running_loop().call_soon(self._hand_over)

    def _hand_over(self) -> None:
        self._hand_over_planned = False
        if self._gathered:
            batch, self._gathered = self._gathered, []
            self._queue.put(batch)

    def close(self) -> None:
        """Wait until every sample is written; raise the first write error."""
        self.stop()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Wait until the thread is done, raising nothing (a failed shard's own error counts)."""
        if not self._closed:
            self._closed = True
            self._hand_over()
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        add = self.writer.add
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            for record, args, release in batch:
                try:
                    if self.error is None:  # else drain: the shard fails, nothing more is written
                        record["path"] = add(*args)
                except BaseException as exc:
                    self.error = exc
                finally:
                    self._room.release()
                    if release is not None:
                        release()
