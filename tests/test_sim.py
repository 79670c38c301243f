"""The simulated QEMU guests over real unix sockets, spoken to with qemu.qmp like the daemon.

Expected bytes and messages come from QEMU 7.2 (qemu-system-x86_64 with a virtio-balloon-pci
device, with and without a guest driver).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from qemu.qmp import ExecuteError, QMPClient

from balloond.core.stats import QMP_NOT_REPORTED, BalloonStats
from balloond.core.units import GiB, MiB
from testkit.sim import GuestState, SimFleet, SimGuestSpec, Trace

T = TypeVar("T")
BALLOON = "/machine/peripheral/balloon0"
TIMEOUT_S = 10.0  # a guard against hangs, not a performance claim


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a test coroutine; fail if it leaves tasks behind."""

    async def checked() -> T:
        result = await coro
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, f"tasks left behind: {leftover}"
        return result

    return asyncio.run(checked())


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # Short and under /tmp: unix socket paths must fit in 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sim", dir="/tmp") as d:
        yield Path(d)


@asynccontextmanager
async def fleet_of(sockdir: Path, *specs: SimGuestSpec) -> AsyncIterator[SimFleet]:
    async with SimFleet(dir=sockdir, guests=specs) as fleet:
        yield fleet


@asynccontextmanager
async def served(sockdir: Path, guest: SimGuestSpec) -> AsyncIterator[tuple[SimFleet, QMPClient]]:
    """A one-guest fleet and a negotiated client connected to it."""
    async with fleet_of(sockdir, guest) as fleet, client(fleet.socket_path(guest.name)) as qmp:
        yield fleet, qmp


@asynccontextmanager
async def client(path: Path) -> AsyncIterator[QMPClient]:
    qmp = QMPClient("test")
    await asyncio.wait_for(qmp.connect(str(path)), TIMEOUT_S)
    try:
        yield qmp
    finally:
        await qmp.disconnect()


async def execute(qmp: QMPClient, cmd: str, args: dict[str, Any] | None = None) -> Any:
    return await asyncio.wait_for(qmp.execute(cmd, args), TIMEOUT_S)


async def error_of(qmp: QMPClient, cmd: str, args: dict[str, Any] | None = None) -> tuple[str, str]:
    with pytest.raises(ExecuteError) as info:
        await execute(qmp, cmd, args)
    return info.value.error_class, info.value.error.error.desc


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = TIMEOUT_S) -> None:
    async def poll() -> None:
        while not await check():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout_s)


async def next_event(qmp: QMPClient, name: str) -> dict[str, Any]:
    while True:
        event = await asyncio.wait_for(qmp.events.get(), TIMEOUT_S)
        if event["event"] == name:
            return dict(event)


async def guest_stats(qmp: QMPClient) -> dict[str, Any]:
    reply = await execute(qmp, "qom-get", {"path": BALLOON, "property": "guest-stats"})
    assert isinstance(reply, dict)
    return reply


class RawClient:
    """A byte-level QMP client, to check exact replies and queueing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def __aenter__(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_unix_connection(str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    async def line(self, timeout_s: float = TIMEOUT_S) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), timeout_s)

    async def ask(self, text: str) -> bytes:
        self.writer.write(text.encode() + b"\n")
        return await self.line()


def sockets_in(directory: Path) -> list[Path]:
    return list(directory.glob("*.sock"))


def spec(
    name: str = "g", ram_bytes: int = GiB, trace: Trace | None = None, **kw: Any
) -> SimGuestSpec:
    return SimGuestSpec(name, ram_bytes, trace, **kw)


# --- greeting and negotiation ------------------------------------------------------------


def test_greeting_and_negotiation_like_qemu(sockdir: Path) -> None:
    async def main() -> None:
        async with fleet_of(sockdir, spec()) as fleet, RawClient(fleet.socket_path("g")) as raw:
            assert await raw.line() == (
                b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
                b'"package": ""}, "capabilities": ["oob"]}}\r\n'
            )
            assert await raw.ask('{"execute": "query-balloon", "id": 5}') == (
                b'{"id": 5, "error": {"class": "CommandNotFound", "desc": '
                b"\"Expecting capabilities negotiation with 'qmp_capabilities'\"}}\r\n"
            )
            ok = await raw.ask('{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}')
            assert ok == b'{"return": {}}\r\n'
            assert await raw.ask('{"execute": "qmp_capabilities"}') == (
                b'{"error": {"class": "CommandNotFound", "desc": '
                b'"Capabilities negotiation is already complete, command ignored"}}\r\n'
            )
            assert await raw.ask('{"execute": "query-balloon", "id": "x"}') == (
                b'{"return": {"actual": 1073741824}, "id": "x"}\r\n'
            )
            # Several requests in one write, no newline between them, as QEMU accepts.
            raw.writer.write(b'{"execute":"query-status","id":1}{"execute":"nosuch","id":[1,2]}')
            assert await raw.line() == (
                b'{"return": {"status": "running", "singlestep": false, "running": true}, '
                b'"id": 1}\r\n'
            )
            assert await raw.line() == (
                b'{"id": [1, 2], "error": {"class": "CommandNotFound", '
                b'"desc": "The command nosuch has not been found"}}\r\n'
            )

    run(main())


def test_qemu_qmp_client_connects_and_queries(sockdir: Path) -> None:
    async def main() -> None:
        async with served(sockdir, spec(qemu_version=(9, 2, 1), package="sim")) as (_fleet, qmp):
            assert await execute(qmp, "query-version") == {
                "qemu": {"micro": 1, "minor": 2, "major": 9},
                "package": "sim",
            }
            assert await execute(qmp, "query-balloon") == {"actual": GiB}
            assert await execute(qmp, "query-memory-size-summary") == {
                "base-memory": GiB,
                "plugged-memory": 0,
            }
            names = {c["name"] for c in await execute(qmp, "query-commands")}
            assert {"balloon", "query-balloon", "qom-get", "qom-set", "quit"} <= names

    run(main())


def test_one_client_at_a_time_the_next_one_waits(sockdir: Path) -> None:
    async def main() -> None:
        async with fleet_of(sockdir, spec()) as fleet:
            path = fleet.socket_path("g")
            async with RawClient(path) as first:
                await first.line()
                async with RawClient(path) as second:
                    second.writer.write(b'{"execute": "qmp_capabilities"}\n')
                    with pytest.raises(TimeoutError):
                        await second.line(timeout_s=0.3)  # connected, but not served
                    await first.close()  # the next client in line is served
                    assert (await second.line()).startswith(b'{"QMP"')
                    assert await second.line() == b'{"return": {}}\r\n'

    run(main())


# --- the balloon -------------------------------------------------------------------------


def test_balloon_moves_actual_at_a_finite_rate_and_emits_rate_limited_events(
    sockdir: Path,
) -> None:
    async def main() -> None:
        async with served(sockdir, spec(ram_bytes=4 * GiB)) as (fleet, qmp):
            assert await execute(qmp, "balloon", {"value": 2 * GiB}) == {}
            first = (await execute(qmp, "query-balloon"))["actual"]
            assert 2 * GiB < first <= 4 * GiB  # not there yet: it moves at a finite rate
            events = [await next_event(qmp, "BALLOON_CHANGE")]
            while events[-1]["data"]["actual"] != 2 * GiB:
                events.append(await next_event(qmp, "BALLOON_CHANGE"))
            assert (await execute(qmp, "query-balloon"))["actual"] == 2 * GiB
            # QEMU sends the first change at once and then at most one a second.
            stamps = [
                e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6 for e in events
            ]
            assert len(events) <= 3
            assert all(b > a for a, b in itertools.pairwise(stamps))
            assert ("BALLOON_CHANGE", {"actual": 2 * GiB}) in fleet.guest("g").events_sent

    run(main())


def test_balloon_value_above_ram_is_clamped(sockdir: Path) -> None:
    async def main() -> None:
        async with served(sockdir, spec()) as (_fleet, qmp):
            await execute(qmp, "balloon", {"value": 512 * MiB})
            await eventually(lambda: _actual_is(qmp, 512 * MiB))
            assert await execute(qmp, "balloon", {"value": 99 * GiB}) == {}
            await eventually(lambda: _actual_is(qmp, GiB))

    run(main())


async def _actual_is(qmp: QMPClient, value: int) -> bool:
    return bool((await execute(qmp, "query-balloon"))["actual"] == value)


# --- stats -------------------------------------------------------------------------------


def test_stats_are_not_reported_until_the_guest_answers(sockdir: Path) -> None:
    async def main() -> None:
        slow_boot = spec(driver_load_s=3600.0)
        async with served(sockdir, slow_boot) as (_fleet, qmp):
            reply = await guest_stats(qmp)
            assert reply["last-update"] == 0
            assert len(reply["stats"]) == 10  # QEMU 7.2's fields, no stat-oom-kills
            assert set(reply["stats"].values()) == {QMP_NOT_REPORTED}
            interval = {"path": BALLOON, "property": "guest-stats-polling-interval"}
            assert await execute(qmp, "qom-get", interval) == 0

    run(main())


def test_stats_refresh_only_while_polling(sockdir: Path) -> None:
    async def main() -> None:
        async with served(sockdir, spec()) as (fleet, qmp):
            # The driver sent one report when it loaded; with polling off it stays as it is.
            at_boot = BalloonStats.from_qmp(await guest_stats(qmp))
            assert at_boot.valid
            model = fleet.guest("g").model
            assert model.last_report_t_s == model.boot_t_s
            interval = {"path": BALLOON, "property": "guest-stats-polling-interval"}
            await execute(qmp, "qom-set", interval | {"value": 1})
            assert await execute(qmp, "qom-get", interval) == 1
            report = model.last_report_t_s
            assert report is not None
            assert report > model.boot_t_s  # turning polling on asks at once

            async def refreshed() -> bool:
                stats = BalloonStats.from_qmp(await guest_stats(qmp))
                return stats.last_update > at_boot.last_update

            await eventually(refreshed)
            stats = BalloonStats.from_qmp(await guest_stats(qmp))
            assert stats.total_bytes is not None
            assert stats.total_bytes < GiB
            assert stats.available_bytes is not None
            assert stats.free_bytes is not None

            await execute(qmp, "qom-set", interval | {"value": 0})
            stopped = model.last_report_t_s
            await asyncio.sleep(1.2)
            await guest_stats(qmp)
            assert model.last_report_t_s == stopped

    run(main())


# --- errors as QEMU reports them ---------------------------------------------------------

QEMU_ERRORS: list[tuple[str, dict[str, Any] | None, str, str]] = [
    ("balloon", {"value": 0}, "GenericError", "Parameter 'target' expects a size"),
    ("balloon", {"value": -5}, "GenericError", "Parameter 'target' expects a size"),
    ("balloon", {}, "GenericError", "Parameter 'value' is missing"),
    (
        "balloon",
        {"value": "x"},
        "GenericError",
        "Invalid parameter type for 'value', expected: integer",
    ),
    (
        "balloon",
        {"value": 1.5},
        "GenericError",
        "Invalid parameter type for 'value', expected: integer",
    ),
    ("balloon", {"value": 1, "extra": 2}, "GenericError", "Parameter 'extra' is unexpected"),
    ("query-balloon", {"a": 1}, "GenericError", "Parameter 'a' is unexpected"),
    ("nosuch", None, "CommandNotFound", "The command nosuch has not been found"),
    (
        "qom-set",
        {"path": BALLOON, "property": "guest-stats-polling-interval", "value": -1},
        "GenericError",
        "timer value must be greater than zero",
    ),
    (
        "qom-set",
        {"path": BALLOON, "property": "guest-stats-polling-interval", "value": 2**32},
        "GenericError",
        "timer value is too big",
    ),
    (
        "qom-set",
        {"path": BALLOON, "property": "guest-stats-polling-interval", "value": "a"},
        "GenericError",
        "Invalid parameter type for 'guest-stats-polling-interval', expected: integer",
    ),
    (
        "qom-set",
        {"path": BALLOON, "property": "guest-stats", "value": 1},
        "GenericError",
        "Property 'virtio-balloon-device.guest-stats' is not writable",
    ),
    (
        "qom-set",
        {"path": BALLOON, "property": "deflate-on-oom", "value": True},
        "GenericError",
        "Attempt to set property 'deflate-on-oom' on anonymous device "
        "(type 'virtio-balloon-device') after it was realized",
    ),
    (
        "qom-get",
        {"path": BALLOON, "property": "nosuch"},
        "GenericError",
        "Property 'virtio-balloon-pci.nosuch' not found",
    ),
    (
        "qom-get",
        {"path": "/machine/peripheral/nosuch", "property": "guest-stats"},
        "DeviceNotFound",
        "Device '/machine/peripheral/nosuch' not found",
    ),
    ("qom-list", {"path": "/nosuch"}, "DeviceNotFound", "Device '/nosuch' not found"),
    ("qom-list", {"path": ""}, "GenericError", "Path '' is ambiguous"),
    ("qom-list", {}, "GenericError", "Parameter 'path' is missing"),
]


def test_errors_match_qemu_classes_and_messages(sockdir: Path) -> None:
    async def main() -> None:
        async with served(sockdir, spec()) as (_fleet, qmp):
            for cmd, args, error_class, desc in QEMU_ERRORS:
                assert await error_of(qmp, cmd, args) == (error_class, desc), (cmd, args)

    run(main())


def test_no_balloon_device_is_device_not_active(sockdir: Path) -> None:
    async def main() -> None:
        async with served(sockdir, spec(balloon=False)) as (_fleet, qmp):
            expected = ("DeviceNotActive", "No balloon device has been activated")
            assert await error_of(qmp, "query-balloon") == expected
            assert await error_of(qmp, "balloon", {"value": 0}) == expected
            listing = await execute(qmp, "qom-list", {"path": "/machine/peripheral"})
            assert listing == [{"name": "type", "type": "string"}]

    run(main())


def test_device_without_id_sits_under_peripheral_anon(sockdir: Path) -> None:
    async def main() -> None:
        async with served(sockdir, spec(balloon_id=None)) as (_fleet, qmp):
            anon = await execute(qmp, "qom-list", {"path": "/machine/peripheral-anon"})
            assert anon == [
                {"name": "type", "type": "string"},
                {"name": "device[0]", "type": "child<virtio-balloon-pci>"},
            ]
            path = "/machine/peripheral-anon/device[0]"
            reply = await execute(qmp, "qom-get", {"path": path, "property": "guest-stats"})
            assert BalloonStats.from_qmp(reply).valid

    run(main())


# --- guests that misbehave ---------------------------------------------------------------


def test_no_driver_guest_accepts_balloon_but_nothing_moves(sockdir: Path) -> None:
    async def main() -> None:
        async with served(sockdir, spec(driver=False)) as (fleet, qmp):
            assert await execute(qmp, "balloon", {"value": 512 * MiB}) == {}
            interval = {"path": BALLOON, "property": "guest-stats-polling-interval"}
            await execute(qmp, "qom-set", interval | {"value": 1})
            await asyncio.sleep(0.3)
            assert await execute(qmp, "query-balloon") == {"actual": GiB}
            assert (await guest_stats(qmp))["last-update"] == 0
            fleet.guest("g").set_driver(True)  # the module loads after all
            await eventually(lambda: _actual_is(qmp, 512 * MiB))
            assert (await guest_stats(qmp))["last-update"] > 0

    run(main())


def test_oom_kill_shows_in_stats_from_qemu_9_2(sockdir: Path) -> None:
    surge = Trace(times_s=(0.0, 1.0), anon_bytes=(100 * MiB, 700 * MiB), cache_bytes=(0, 0))

    async def main() -> None:
        guest = spec(trace=surge, qemu_version=(9, 2, 0))
        async with served(sockdir, guest) as (fleet, qmp):
            await execute(qmp, "balloon", {"value": 512 * MiB})
            interval = {"path": BALLOON, "property": "guest-stats-polling-interval"}
            await execute(qmp, "qom-set", interval | {"value": 1})

            async def killed() -> bool:
                stats = BalloonStats.from_qmp(await guest_stats(qmp))
                return (stats.oom_kills or 0) >= 1

            await eventually(killed)
            assert fleet.guest("g").model.oom_kills >= 1
            assert len((await guest_stats(qmp))["stats"]) == 16

    run(main())


def test_pause_hangs_the_monitor_until_resume(sockdir: Path) -> None:
    async def main() -> None:
        async with served(sockdir, spec()) as (fleet, qmp):
            guest = fleet.guest("g")
            guest.pause()
            assert guest.state is GuestState.FROZEN
            pending = asyncio.ensure_future(qmp.execute("query-status"))
            done, _ = await asyncio.wait([pending], timeout=0.3)
            assert not done  # like SIGSTOP: no answer
            guest.resume()
            status = await asyncio.wait_for(pending, TIMEOUT_S)
            assert status == {"running": True, "singlestep": False, "status": "running"}

    run(main())


def test_stop_and_cont_send_events_and_hold_the_balloon(sockdir: Path) -> None:
    async def main() -> None:
        async with served(sockdir, spec()) as (_fleet, qmp):
            await execute(qmp, "stop")
            assert (await next_event(qmp, "STOP")).get("data") is None
            assert (await execute(qmp, "query-status"))["status"] == "paused"
            await execute(qmp, "balloon", {"value": 512 * MiB})
            await asyncio.sleep(0.3)
            assert await execute(qmp, "query-balloon") == {"actual": GiB}
            await execute(qmp, "cont")
            await next_event(qmp, "RESUME")
            await eventually(lambda: _actual_is(qmp, 512 * MiB))

    run(main())


def test_kill_removes_the_socket_and_restart_boots_afresh(sockdir: Path) -> None:
    async def main() -> None:
        async with fleet_of(sockdir, spec()) as fleet:
            guest = fleet.guest("g")
            path = fleet.socket_path("g")
            qmp = QMPClient("test")
            await qmp.connect(str(path))
            await execute(qmp, "balloon", {"value": 512 * MiB})
            await guest.kill()  # SIGTERM
            assert guest.state is GuestState.DEAD
            assert not path.exists()
            shutdown = await next_event(qmp, "SHUTDOWN")
            assert shutdown["data"] == {"guest": False, "reason": "host-signal"}
            with pytest.raises((EOFError, ConnectionError)):
                await qmp.disconnect()  # re-raises the reader's error, as with real QEMU
            await guest.restart()
            async with client(path) as again:
                assert await execute(again, "query-balloon") == {"actual": GiB}

    run(main())


def test_sigkill_resets_the_connection_and_leaves_a_stale_socket(sockdir: Path) -> None:
    async def main() -> None:
        async with fleet_of(sockdir, spec()) as fleet, RawClient(fleet.socket_path("g")) as raw:
            await raw.line()
            await raw.ask('{"execute": "qmp_capabilities"}')
            await fleet.guest("g").kill(sig="SIGKILL")
            # QEMU's peer sees a reset; the simulator's sees EOF (or a reset).
            with contextlib.suppress(ConnectionResetError):
                assert await raw.line() == b""
            path = fleet.socket_path("g")
            assert path.exists()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_unix_connection(str(path))
            await fleet.guest("g").restart()
            async with RawClient(path) as again:
                assert (await again.line()).startswith(b'{"QMP"')

    run(main())


def test_quit_sends_shutdown_then_the_process_is_gone(sockdir: Path) -> None:
    async def main() -> None:
        async with fleet_of(sockdir, spec()) as fleet, RawClient(fleet.socket_path("g")) as raw:
            await raw.line()
            await raw.ask('{"execute": "qmp_capabilities"}')
            shutdown = json.loads(await raw.ask('{"execute": "quit"}'))
            assert shutdown["event"] == "SHUTDOWN"
            assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
            assert set(shutdown["timestamp"]) == {"seconds", "microseconds"}
            assert await raw.line() == b'{"return": {}}\r\n'
            assert await raw.line() == b""
            assert fleet.guest("g").state is GuestState.DEAD
            assert not fleet.socket_path("g").exists()

    run(main())


# --- scale -------------------------------------------------------------------------------


def test_500_guests_start_and_answer(sockdir: Path) -> None:
    async def main() -> None:
        specs = [spec(f"g{i:03d}", 512 * MiB) for i in range(500)]
        async with SimFleet(dir=sockdir, guests=specs) as fleet:
            assert len(await asyncio.to_thread(sockets_in, sockdir)) == 500

            async def ask(name: str) -> Any:
                async with client(fleet.socket_path(name)) as qmp:
                    return await execute(qmp, "query-balloon")

            replies = await asyncio.wait_for(
                asyncio.gather(*(ask(n) for n in fleet.names)), timeout=120
            )
            assert replies == [{"actual": 512 * MiB}] * 500
        assert not await asyncio.to_thread(sockets_in, sockdir)

    run(main())


def test_raw_socket_connect_fails_cleanly_after_the_fleet_closes(sockdir: Path) -> None:
    async def main() -> Path:
        async with fleet_of(sockdir, spec()) as fleet:
            return fleet.socket_path("g")

    path = run(main())
    s = socket.socket(socket.AF_UNIX)
    with pytest.raises(FileNotFoundError):
        s.connect(str(path))
    s.close()


def test_guest_states_follow_its_life(sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with fleet_of(sockdir, spec()) as fleet:
            guest = fleet.guest("g")
            guest.stop_vm()
            guest.cont_vm()
            guest.pause()
            guest.resume()
            await guest.kill()
            await guest.restart()

    with caplog.at_level(logging.DEBUG, logger="testkit.sim.guest.g"):
        run(main())
    assert [r.getMessage() for r in caplog.records if r.name == "testkit.sim.guest.g"] == [
        "off -> running",
        "running -> stopped",
        "stopped -> running",
        "running -> frozen",
        "frozen -> running",
        "running -> dead",
        "dead -> running",
        "running -> dead",
    ]
