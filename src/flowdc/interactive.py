"""Running FLOW-DC from notebooks and other programs that already run an event loop.

Jupyter runs an asyncio loop in the kernel's main thread, so `asyncio.run` there fails with
"cannot be called from a running event loop". `run_sync` then runs the coroutine in a thread of its
own with its own loop, and an interrupt (Jupyter's stop button, Ctrl-C) cancels it there, so the
coroutine's cleanup (closing the HTTP session) runs before the interrupt reaches the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_CANCEL_WAIT_SECONDS = 10.0


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not a terminal IPython)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def tqdm_class() -> Any:
    """tqdm's notebook bar in a Jupyter kernel with ipywidgets, else the terminal bar."""
    if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm
    from tqdm import tqdm

    return tqdm


def loop_is_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end from synchronous code, whether or not a loop is running."""
    if not loop_is_running():
        return asyncio.run(coroutine)
    return _run_in_thread(coroutine)


def _run_in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    box: dict[str, Any] = {}
    started = threading.Event()

    async def main() -> T:
        box["loop"] = asyncio.get_running_loop()
        box["task"] = asyncio.current_task()
        started.set()
        return await coroutine

    def target() -> None:
        try:
            box["result"] = asyncio.run(main())
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=target, name="flowdc-run-sync", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)  # a short join keeps the caller's thread open to an interrupt
    except KeyboardInterrupt:
        started.wait(_CANCEL_WAIT_SECONDS)
        if "task" in box:
            with contextlib.suppress(RuntimeError):  # the loop had already finished
                box["loop"].call_soon_threadsafe(box["task"].cancel)
        thread.join(_CANCEL_WAIT_SECONDS)
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]
