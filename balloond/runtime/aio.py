"""The asyncio helpers every layer above the core shares, so that nothing writes them again.

* :func:`backoff_s`: the one reconnect and restart delay (exponential, capped, randomised);
* :func:`sleep_unless`: the one sleep that a stop event interrupts;
* :func:`cancel_and_wait`: cancel tasks and make sure they end;
* :class:`Deadline`: ``asyncio.timeout`` for the hot path, on a loop the caller holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

#: How often :func:`cancel_and_wait` repeats a cancel that did not take.
RECANCEL_S = 0.05


class Deadline:
    """``async with Deadline(loop, seconds):`` raises TimeoutError when the block takes
    longer, exactly as ``asyncio.timeout(seconds)`` does (the same cancel-and-uncancel
    rules), but on a loop the caller already holds.

    Why: on Python 3.11 ``asyncio.timeout`` asks for the running loop twice, and each ask
    is a ``getpid()`` system call; a daemon polling thousands of guests a second spent a
    visible share of its time there. Every QMP call is made under one of these.
    """

    __slots__ = ("_cancelling", "_expired", "_handle", "_loop", "_seconds", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self._loop = loop
        self._seconds = seconds
        self._expired = False

    async def __aenter__(self) -> None:
        self.arm()

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self.disarm(exc_type):
            raise TimeoutError

    # The same, without the two coroutines an ``async with`` makes, for the hottest paths:
    # ``arm()`` before the awaited call; ``disarm()`` after it, in every case.
    def arm(self) -> None:
        """Start the clock on the current task."""
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = self._loop.call_later(self._seconds, self._expire)

    def disarm(self, exc_type: type[BaseException] | None = None) -> bool:
        """Stop the clock; True when it ran out and cancelled the call (``exc_type`` is
        the CancelledError's type): the caller raises its timeout error instead."""
        self._handle.cancel()
        return (
            self._expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        )

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()


def backoff_s(
    attempt: int,
    *,
    initial_s: float,
    cap_s: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry ``attempt`` (0-based): exponential from ``initial_s``, capped at
    ``cap_s``, and randomised into its upper half so that many clients that lost one peer
    do not all come back in the same instant."""
    ceiling = min(cap_s, initial_s * 2.0 ** min(attempt, 32))
    return ceiling * (0.5 + 0.5 * rand())


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, waking at once when ``stop`` is set. True if ``stop`` is set."""
    if seconds > 0 and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
    return stop.is_set()


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, budget_s: float | None = None
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait until they end; returns those still running after
    ``budget_s`` (None: wait as long as it takes).

    The cancel is repeated every :data:`RECANCEL_S`: on Python 3.11, ``asyncio.wait_for``
    (which aiomqtt awaits in every publish) swallows a cancel that arrives in the same
    loop turn as the awaited result, and the task then runs on as if never cancelled.
    """
    pending = {t for t in tasks if not t.done()}
    deadline = None if budget_s is None else time.monotonic() + budget_s
    while pending:
        for task in pending:
            task.cancel()
        wait_s = RECANCEL_S
        if deadline is not None:
            wait_s = min(wait_s, deadline - time.monotonic())
            if wait_s <= 0:
                break
        _, pending = await asyncio.wait(pending, timeout=wait_s)
    return pending
