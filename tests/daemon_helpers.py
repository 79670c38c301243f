"""Helpers for tests that run the daemon in-process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from balloond.config import Config
from balloond.daemon import Daemon

#: How long a test waits for something a running daemon does. Generous: a busy two-core
#: machine running TCG guests is slow, and this is a deadline, not an expectation.
WAIT_S = 120.0


@contextlib.asynccontextmanager
async def running(config: Config, **kwargs: Any) -> AsyncIterator[Daemon]:
    """A daemon running in this event loop, past its first discovery; stopped on exit."""
    daemon = Daemon(config, **kwargs)
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(on_ready=ready.set), name="daemon")
    try:
        await asyncio.wait_for(ready.wait(), WAIT_S)
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, WAIT_S)


async def until(check: Callable[[], bool], *, timeout_s: float = WAIT_S) -> bool:
    """Poll ``check`` until it holds (True) or the time is up (False)."""
    end = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.05)
    return True
