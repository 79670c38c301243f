"""Long-lived tasks, owned and supervised: none ends without a trace.

The daemon runs a task per guest and a few daemon-wide ones (host planner, discovery, the
adapters). Each is started through a :class:`Supervisor`, which names it, keeps it, and
watches how it ends:

* an exception is logged with its traceback (expected trouble, :class:`OSError` or a
  :class:`~balloond.core.errors.BalloondError`, in one line), counted, and the task is started
  again after a capped, randomised exponential backoff;
* a task meant to run until the stop event (``forever=True``) that returns early is logged
  and started again the same way;
* every failure stays visible in :meth:`Supervisor.failures`, which ``balloonctl status``,
  the metrics and systemd's STATUS line read.

The restart delay is :func:`balloond.runtime.aio.backoff_s`, the same one every reconnect
uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from balloond.core.errors import BalloondError
from balloond.runtime.aio import backoff_s, cancel_and_wait, sleep_unless

log = logging.getLogger("balloond.service.supervisor")

#: First restart delay after a failure; doubles per failure in a row up to the cap.
RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
#: A task that ran this long before failing starts its backoff afresh.
HEALTHY_RUN_S = 60.0
#: How long :meth:`Supervisor.shutdown` waits for tasks it had to cancel.
CANCEL_BUDGET_S = 1.0


@dataclass(slots=True)
class TaskFailure:
    """What went wrong with one supervised task, for status, metrics and STATUS=."""

    task: str
    failures: int = 0
    #: One line: the exception, or "returned before the daemon stopped".
    last_error: str = ""
    #: Wall-clock time of the last failure (epoch seconds).
    last_failure_time: float = 0.0
    #: Whether the task is waiting out its backoff now (False once it runs again).
    restarting: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_failure_time": self.last_failure_time,
            "restarting": self.restarting,
        }


class Supervisor:
    """Starts named tasks, restarts those that fail, and stops them all within a budget.

    ``stop`` ends every task's restart loop; tasks are expected to return soon after it is
    set (they are handed the same event or watch one of their own).
    """

    def __init__(
        self,
        stop: asyncio.Event,
        *,
        restart_min_s: float = RESTART_MIN_S,
        restart_max_s: float = RESTART_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stop = stop
        self.restart_min_s = restart_min_s
        self.restart_max_s = restart_max_s
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        #: Tasks that failed at least once, by name (guests' tasks only appear on failure).
        self.failed: dict[str, TaskFailure] = {}

    def start(
        self,
        name: str,
        factory: Callable[[], Coroutine[Any, Any, None]],
        *,
        forever: bool = False,
        keep: Callable[[], bool] | None = None,
    ) -> asyncio.Task[None]:
        """Run ``factory()`` as the task ``name``, again after each failure.

        ``forever``: returning before ``stop`` is set is a failure too. ``keep``: checked
        before each restart; when it says False the task is no longer wanted (a guest that
        went away) and is not started again.
        """
        task = asyncio.create_task(self._run(name, factory, forever, keep), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def failures(self) -> list[dict[str, Any]]:
        """Every task that failed, oldest name first."""
        return [f.as_dict() for _, f in sorted(self.failed.items())]

    @property
    def failures_total(self) -> int:
        return sum(f.failures for f in self.failed.values())

    def forget(self, name: str) -> None:
        """Drop a task's failure record (a guest that went away for good)."""
        self.failed.pop(name, None)

    async def _run(
        self,
        name: str,
        factory: Callable[[], Coroutine[Any, Any, None]],
        forever: bool,
        keep: Callable[[], bool] | None,
    ) -> None:
        attempt = 0
        while not self.stop.is_set() and (keep is None or keep()):
            started_s = self._clock()
            try:
                await factory()
                if self.stop.is_set() or not forever or (keep is not None and not keep()):
                    return
                why = "returned before the daemon stopped"
                log.error("%s %s", name, why)
            except asyncio.CancelledError:
                raise
            except (OSError, BalloondError) as exc:
                # Expected trouble (a port in use, a broker away): one clear line.
                why = _one_line(exc)
                log.error("%s failed: %s", name, why)
            except Exception as exc:
                # A bug: the traceback is what will fix it.
                why = _one_line(exc)
                log.error("%s failed:\n%s", name, "".join(traceback.format_exception(exc)))
            if self._clock() - started_s > HEALTHY_RUN_S:
                attempt = 0
            delay = backoff_s(attempt, initial_s=self.restart_min_s, cap_s=self.restart_max_s)
            attempt += 1
            record = self.failed.setdefault(name, TaskFailure(name))
            record.failures += 1
            record.last_error = why
            record.last_failure_time = time.time()
            record.restarting = True
            log.warning("%s: restarting in %.1fs (failure %d)", name, delay, record.failures)
            try:
                if await sleep_unless(self.stop, delay):
                    return
            finally:
                record.restarting = False

    async def shutdown(self, budget_s: float) -> None:
        """Wait up to ``budget_s`` for every task to end (``stop`` must be set), then
        cancel the late ones and log each by name."""
        pending = [t for t in self._tasks if not t.done()]
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=budget_s)
        for task in late:
            log.warning("%s did not stop in %.1fs; cancelling", task.get_name(), budget_s)
        left = await cancel_and_wait(late, budget_s=CANCEL_BUDGET_S)
        for task in left:
            log.error("%s ignores cancellation; leaving it behind", task.get_name())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
