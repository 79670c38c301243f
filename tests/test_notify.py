"""The sd_notify adapter against a real datagram socket, as systemd would hold it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from balloond.adapters.port import DaemonPort
from balloond.adapters.systemd import (
    Notifier,
    NotifyAdapter,
    notify_address,
    status_line,
    watchdog_interval_s,
)
from balloond.core.units import GiB
from balloond.programs.logs import stderr_is_journal
from balloond.service.supervisor import TaskFailure


class Listener:
    """What systemd's end of NOTIFY_SOCKET sees: one dict per datagram."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    @staticmethod
    def _parse(data: bytes) -> dict[str, str]:
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    async def receive(self) -> dict[str, str]:
        """The next datagram (generous wait)."""
        loop = asyncio.get_running_loop()
        return self._parse(await asyncio.wait_for(loop.sock_recv(self.sock, 4096), 10))

    async def until(self, key: str) -> dict[str, str]:
        """The next datagram that carries ``key``."""
        while key not in (message := await self.receive()):
            pass
        return message

    def drain(self) -> list[dict[str, str]]:
        """Every datagram received so far."""
        out = []
        with contextlib.suppress(BlockingIOError):
            while True:
                out.append(self._parse(self.sock.recv(4096)))
        return out


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[tuple[str, Listener]]:
    address = str(tmp_path / "notify.sock")
    listener = Listener(address)
    yield address, listener
    listener.sock.close()


def test_address_forms() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract/name") == b"\0abstract/name"
    assert notify_address(None) is None
    assert notify_address("") is None
    assert notify_address("vsock:2:1234") is None


def test_sends_to_a_path_socket(path_listener: tuple[str, Listener]) -> None:
    address, listener = path_listener
    notifier = Notifier(address)
    assert notifier.send(READY=1, STATUS="two\nlines")
    assert listener.drain()[0] == {"READY": "1", "STATUS": "two lines"}
    notifier.close()


def test_sends_to_an_abstract_socket() -> None:
    name = f"balloond-test-{os.getpid()}"
    listener = Listener(b"\0" + name.encode())
    try:
        notifier = Notifier(env={"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.send(WATCHDOG=1)
        assert listener.drain()[0] == {"WATCHDOG": "1"}
        notifier.close()
    finally:
        listener.sock.close()


def test_silent_without_notify_socket() -> None:
    notifier = Notifier(env={})
    assert not notifier.enabled
    assert not notifier.send(READY=1)


def test_a_vanished_socket_is_not_fatal(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert not notifier.send(READY=1)
    assert not notifier.send(READY=1)


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    pid = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": pid}) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "x"}) is None


class FakeDaemon:
    """What the adapter may use of the daemon (its part of DaemonPort), without guests or a
    config file: the narrow interface makes the stand-in this small."""

    def __init__(self, **summary: Any) -> None:
        self.counts = {
            "guests": 2,
            "active": 2,
            "reclaimed_bytes": 3 * GiB // 2,
            "under_pressure": 1,
        }
        self.counts.update(summary)
        self.dry_run = False
        self.reload_error: str | None = None
        self.cycles = 0
        self.config = SimpleNamespace(daemon=SimpleNamespace(poll_interval_s=0.1))
        self.failed: list[TaskFailure] = []
        self.ready = asyncio.Event()
        self.reload_hooks: list[Callable[[bool], None]] = []

    def summary(self) -> dict[str, int]:
        return self.counts

    def task_failures(self) -> list[TaskFailure]:
        return self.failed

    def on_reload(self, hook: Callable[[bool], None]) -> None:
        self.reload_hooks.append(hook)

    async def wait_ready(self) -> None:
        await self.ready.wait()


def _fake_daemon(**summary: Any) -> FakeDaemon:
    return FakeDaemon(**summary)


def test_status_line() -> None:
    fake = _fake_daemon()
    assert status_line(cast(DaemonPort, fake)) == (
        "2 guests (2 active), 1.5GiB reclaimed, 1 under pressure"
    )
    fake.reload_error = "policy.x: bad"
    assert status_line(cast(DaemonPort, fake)).endswith("last reload refused: policy.x: bad")
    fake.failed.append(TaskFailure("host-planner", 2, "KeyError: 'MemAvailable'"))
    assert status_line(cast(DaemonPort, fake)).endswith(
        "2 task failure(s), latest host-planner: KeyError: 'MemAvailable'"
    )


def _fill(notifier: Notifier) -> int:
    """Send STATUS until systemd's end has no room (its queue is net.unix.max_dgram_qlen
    datagrams); returns how many went out."""
    sent = 0
    while notifier.send(STATUS=f"filler {sent}"):
        sent += 1
        assert sent < 100_000, "the listener's queue never filled"
    return sent


def test_ready_reloading_stopping_wait_out_a_full_queue_status_does_not(
    path_listener: tuple[str, Listener],
) -> None:
    address, listener = path_listener
    notifier = Notifier(address)
    sent = _fill(notifier)
    assert notifier.dropped == 1  # the STATUS that found no room: superseded, dropped
    assert not notifier.send(RELOADING=1)
    assert not notifier.send(READY=1, STATUS="ready again")
    assert not notifier.send(WATCHDOG=1)  # may not overtake READY: dropped
    assert not notifier.send(STOPPING=1)
    assert len(notifier.backlog) == 3
    assert len(listener.drain()) == sent  # systemd catches up
    assert notifier.flush()
    assert [next(iter(m)) for m in listener.drain()] == ["RELOADING", "READY", "STOPPING"]


async def test_stopping_reaches_a_slow_systemd(path_listener: tuple[str, Listener]) -> None:
    address, listener = path_listener
    fake = _fake_daemon()
    fake.ready.set()
    adapter = NotifyAdapter(
        cast(DaemonPort, fake), notifier=Notifier(address), status_interval_s=60
    )
    stop = asyncio.Event()
    task = asyncio.create_task(adapter.run(stop), name="notify-under-test")
    try:
        assert "READY" in await listener.until("READY")
        _fill(adapter.notifier)
        stop.set()
        await asyncio.sleep(0.3)  # systemd busy elsewhere for a while, then it reads
        received = listener.drain()
        while not task.done():
            received += listener.drain()
            await asyncio.sleep(0.01)
        received += listener.drain()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert "STOPPING" in received[-1]


def test_watchdog_is_withheld_while_the_loop_stalls(path_listener: tuple[str, Listener]) -> None:
    address, listener = path_listener
    fake = _fake_daemon()  # poll_interval_s 0.1: the grace is max(watchdog, 3 polls) = 1 s
    adapter = NotifyAdapter(cast(DaemonPort, fake), notifier=Notifier(address), watchdog_s=1.0)
    fake.cycles = 1
    assert adapter.watchdog_tick(100.0)
    assert adapter.watchdog_tick(100.9)  # no new cycle yet, but within the grace
    assert not adapter.watchdog_tick(101.1)  # stalled
    assert not adapter.watchdog_tick(105.0)
    fake.cycles = 2
    assert adapter.watchdog_tick(105.5)  # turning again
    assert [m["WATCHDOG"] for m in listener.drain()] == ["1", "1", "1"]


async def test_lifecycle_messages(path_listener: tuple[str, Listener]) -> None:
    """READY only once the daemon is ready; pings while it turns; RELOADING then READY
    around a reload; STOPPING last."""
    address, listener = path_listener
    fake = _fake_daemon()
    adapter = NotifyAdapter(
        cast(DaemonPort, fake), notifier=Notifier(address), watchdog_s=0.05, status_interval_s=0.05
    )
    stop = asyncio.Event()
    task = asyncio.create_task(adapter.run(stop), name="notify-under-test")
    try:
        await asyncio.sleep(0.2)
        assert listener.drain() == []  # nothing before READY
        fake.ready.set()
        assert (await listener.until("READY"))["READY"] == "1"
        fake.cycles += 1
        assert (await listener.until("WATCHDOG"))["WATCHDOG"] == "1"
        assert "reclaimed" in (await listener.until("STATUS"))["STATUS"]

        for hook in fake.reload_hooks:
            hook(True)
        reloading = await listener.until("RELOADING")
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) > 0
        for hook in fake.reload_hooks:
            hook(False)
        assert (await listener.until("READY"))["READY"] == "1"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert listener.drain()[-1]["STOPPING"] == "1"


async def test_no_socket_means_the_adapter_just_returns() -> None:
    adapter = NotifyAdapter(cast(DaemonPort, _fake_daemon()), notifier=Notifier(env={}))
    await asyncio.wait_for(adapter.run(asyncio.Event()), 10)


def test_journal_format_only_when_stderr_is_the_journal(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as f, contextlib.redirect_stderr(f):
        st = os.fstat(f.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"})
        assert not stderr_is_journal({})
