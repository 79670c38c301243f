"""Telling systemd how balloond is doing: the sd_notify protocol, spoken directly.

systemd passes a datagram socket in ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract
address); a service sends it newline-separated ``KEY=VALUE`` lines. The protocol is small
enough that a dependency would cost more than these few lines. Without ``NOTIFY_SOCKET``
(a terminal, a test, another supervisor) every send is a no-op.

:class:`NotifyAdapter` sends, over the daemon's life:

- ``READY=1`` once the config is loaded and the first discovery is done;
- ``STATUS=...`` a one-line summary, refreshed every few seconds;
- ``WATCHDOG=1`` at half of ``WATCHDOG_USEC``, but only while the host planner's cycle counter
  advances: a wedged control loop stops the pings and systemd restarts the service;
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` (systemd >= 253 wants it), then ``READY=1``, around
  every reload, whether SIGHUP or ``balloonctl reload`` asked for it;
- ``STOPPING=1`` as soon as shutdown begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from typing import Any

from balloond.adapters.port import DaemonPort
from balloond.core.units import fmt_size

log = logging.getLogger("balloond.adapters.systemd")

#: How often STATUS= is refreshed.
STATUS_INTERVAL_S = 5.0
#: Keys of messages that are never dropped for a full queue.
MUST_DELIVER = frozenset({"READY", "RELOADING", "STOPPING"})
#: How many such messages may wait; more would mean systemd is gone, not busy.
MAX_BACKLOG = 32
#: How often a waiting message is tried again.
RETRY_S = 0.02
#: How long STOPPING=1 may wait for room in systemd's queue at shutdown.
STOPPING_DRAIN_S = 2.0
#: The control loop counts as turning if its cycle counter moved within this many of its
#: poll intervals (a loop slower than half the watchdog must not be taken for a wedged one).
STALL_POLL_INTERVALS = 3.0


def notify_address(value: str | None) -> str | bytes | None:
    """The ``NOTIFY_SOCKET`` value as an AF_UNIX address, or None if unusable.

    ``/path`` is a file-system socket, ``@name`` an abstract one (leading NUL byte). Other
    forms (systemd >= 254 also knows ``vsock:``) are not for a service on the host.
    """
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


class Notifier:
    """Sends sd_notify messages; never raises, and is silent without a socket.

    systemd's queue for the notify socket is short (``net.unix.max_dgram_qlen``, often 10
    datagrams) and a busy systemd may not read it for a while. A message with ``READY``,
    ``RELOADING`` or ``STOPPING`` must not be lost to a full queue: it waits in
    :attr:`backlog`, in order, until :meth:`flush` gets it out (the adapter retries it every
    few milliseconds). ``STATUS`` and ``WATCHDOG`` are superseded by the next one, so one
    that finds the queue full, or finds a backlog it may not overtake, is dropped, with one
    log line until a send goes through again.
    """

    def __init__(self, address: str | None = None, *, env: Mapping[str, str] = os.environ) -> None:
        raw = address if address is not None else env.get("NOTIFY_SOCKET")
        self.address = notify_address(raw)
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket address; not notifying", raw)
        self._sock: socket.socket | None = None
        self._failed = False
        self._dropping = False
        #: Messages that must reach systemd, oldest first, waiting for room in its queue.
        self.backlog: deque[bytes] = deque(maxlen=MAX_BACKLOG)
        #: STATUS/WATCHDOG messages dropped because systemd's queue was full.
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines in one datagram; True if it was sent now.

        A message that must not be lost and cannot go now stays in :attr:`backlog`.
        """
        if self.address is None:
            return False
        text = "\n".join(f"{key}={_one_line(str(value))}" for key, value in fields.items())
        data = text.encode()
        if MUST_DELIVER & fields.keys():
            self.backlog.append(data)
            return self.flush()
        if self.backlog and not self.flush():
            self._drop(next(iter(fields)), "behind messages that must go first")
            return False
        outcome = self._sendto(data)
        if outcome is _Outcome.FULL:
            self._drop(next(iter(fields)), "systemd's notify queue is full")
        return outcome is _Outcome.SENT

    def flush(self) -> bool:
        """Send what waits in :attr:`backlog`, in order; True once it is empty."""
        while self.backlog:
            if self._sendto(self.backlog[0]) is not _Outcome.SENT:
                return False
            self.backlog.popleft()
        return True

    async def drain(self, timeout_s: float) -> bool:
        """Keep flushing the backlog for up to ``timeout_s``; True once it is empty."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                # Nothing signals room in another process's socket queue: poll for it.
                while not self.flush():  # noqa: ASYNC110
                    await asyncio.sleep(RETRY_S)
        if self.backlog:
            log.error(
                "systemd did not take %d message(s) within %.1fs: %s",
                len(self.backlog),
                timeout_s,
                b" | ".join(self.backlog).decode(errors="replace"),
            )
            return False
        return True

    def _sendto(self, data: bytes) -> _Outcome:
        assert self.address is not None
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except (BlockingIOError, InterruptedError):
            return _Outcome.FULL  # EAGAIN: systemd's queue is full; it will read it
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                return _Outcome.FULL
            # systemd gone or restarting: report once, keep running, try again next time.
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", _show(self.address), exc)
            self._failed = True
            self.close()
            return _Outcome.FAILED
        self._failed = False
        if self._dropping:
            log.info("systemd takes notify messages again (%d dropped)", self.dropped)
            self._dropping = False
        return _Outcome.SENT

    def _drop(self, key: str, why: str) -> None:
        self.dropped += 1
        if not self._dropping:
            log.warning("%s= not sent: %s (a newer one will follow)", key, why)
            self._dropping = True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _Outcome(enum.Enum):
    SENT = "sent"
    FULL = "full"  # try again soon
    FAILED = "failed"  # no systemd there now


def watchdog_interval_s(env: Mapping[str, str] = os.environ) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, if systemd asks this process for pings."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. a wrapper that exec'd us)
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; no watchdog pings", usec)
        return None
    return value / 2e6 if value > 0 else None


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def status_line(daemon: DaemonPort) -> str:
    """``3 guests (3 active), 1.5GiB reclaimed, 0 under pressure`` plus any trouble."""
    s = daemon.summary()
    parts = [
        f"{s['guests']} guest{'s' if s['guests'] != 1 else ''} ({s['active']} active)",
        f"{fmt_size(s['reclaimed_bytes'])} reclaimed",
        f"{s['under_pressure']} under pressure",
    ]
    if daemon.dry_run:
        parts.append("dry run")
    if daemon.reload_error:
        parts.append(f"last reload refused: {daemon.reload_error}")
    failed = daemon.task_failures()
    if failed:
        latest = max(failed, key=lambda f: f.last_failure_time)
        parts.append(
            f"{sum(f.failures for f in failed)} task failure(s), "
            f"latest {latest.task}: {latest.last_error}"
        )
    return ", ".join(parts)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _show(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address


class NotifyAdapter:
    """Keeps systemd informed about the running daemon."""

    name = "systemd-notify"

    def __init__(
        self,
        daemon: DaemonPort,
        *,
        notifier: Notifier | None = None,
        watchdog_s: float | None = None,
        status_interval_s: float = STATUS_INTERVAL_S,
    ) -> None:
        self.daemon = daemon
        self.notifier = notifier or Notifier()
        self.watchdog_s = watchdog_s if watchdog_s is not None else watchdog_interval_s()
        self.status_interval_s = status_interval_s
        self._seen_cycles = -1
        self._last_turn_s = time.monotonic()
        self._withheld = False
        self._ready_sent = False
        daemon.on_reload(self._on_reload)

    def _on_reload(self, starting: bool) -> None:
        if not self._ready_sent:
            return  # systemd treats READY=1 as start-up done; not before discovery
        if starting:
            self.notifier.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec())
        else:
            self.notifier.send(READY=1, STATUS=status_line(self.daemon))

    async def run(self, stop: asyncio.Event) -> None:
        if not self.notifier.enabled:
            return
        try:
            if not self._ready_sent:
                await _wait_either(self.daemon.wait_ready(), stop)
                if stop.is_set():
                    return
                self.notifier.send(READY=1, STATUS=status_line(self.daemon))
                self._ready_sent = True
                log.debug("told systemd we are ready")
            await self._loop(stop)
        finally:
            if stop.is_set():
                self.notifier.send(STOPPING=1, STATUS="stopping")
                await self.notifier.drain(STOPPING_DRAIN_S)
                self.notifier.close()

    async def _loop(self, stop: asyncio.Event) -> None:
        period = self.status_interval_s
        if self.watchdog_s is not None:
            period = min(period, self.watchdog_s)
        next_status = 0.0
        while not stop.is_set():
            self.notifier.flush()  # a READY or RELOADING that found systemd's queue full
            now = time.monotonic()
            if self.watchdog_s is not None:
                self.watchdog_tick(now)
            if now >= next_status:
                self.notifier.send(STATUS=status_line(self.daemon))
                next_status = now + self.status_interval_s
            wait_s = RETRY_S if self.notifier.backlog else period
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await stop.wait()

    def watchdog_tick(self, now: float) -> bool:
        """Ping the watchdog if the control loop turned recently; True if it pinged."""
        cycles = self.daemon.cycles
        if cycles != self._seen_cycles:
            self._seen_cycles = cycles
            self._last_turn_s = now
        watchdog_s = self.watchdog_s or 0.0
        allowed = max(watchdog_s, STALL_POLL_INTERVALS * self.daemon.config.daemon.poll_interval_s)
        if now - self._last_turn_s > allowed:
            if not self._withheld:
                log.error(
                    "control loop has not turned for %.0fs; withholding watchdog pings",
                    now - self._last_turn_s,
                )
                self._withheld = True
            return False
        if self._withheld:
            log.info("control loop turning again; watchdog pings resumed")
            self._withheld = False
        return self.notifier.send(WATCHDOG=1)


async def _wait_either(ready: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Wait until ``ready`` returns or ``stop`` is set."""
    waiters = [
        asyncio.create_task(ready, name="notify:wait-ready"),
        asyncio.create_task(stop.wait(), name="notify:wait-stop"),
    ]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
