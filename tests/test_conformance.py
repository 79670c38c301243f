"""Conformance: the simulator and real QEMU answer balloond's QMP the same way.

The simulator (:mod:`testkit.sim`) stands in for QEMU wherever real guests are too slow or
too few: the scale benchmark drives thousands of them. That is only worth something while
it behaves like the real thing, so every test here runs twice, once against a real lab guest
(QEMU with the Linux virtio_balloon driver; marked ``lab``) and once against a simulated
guest, through balloond's own :class:`~balloond.adapters.qmp.QmpLink` (and raw qemu.qmp where the
link hides the wire). A test that passes on ``lab`` and fails on ``sim`` is a simulator bug.

Each test starts the guests it needs. A lab guest boots only where the guest's driver must
answer; the others are used while the guest kernel is still starting, which QMP does not
notice (the monitor answers from the first moment).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from qemu.qmp import ExecuteError, QMPClient

from balloond.adapters.qmp import QmpLink
from balloond.core.errors import NoBalloonError, QMPCommandError
from balloond.core.link import LinkState
from balloond.core.stats import QMP_NOT_REPORTED, QMP_STAT_NAMES, BalloonStats
from balloond.core.units import MiB
from testkit.lab import LabGuest, LabImage
from testkit.sim import SimFleet, SimGuestSpec

T = TypeVar("T")

RAM_BYTES = 512 * MiB
BALLOON = "/machine/peripheral/balloon0"
#: Per call; a guard against a hang, not a performance claim.
TIMEOUT_S = 5.0
#: How long a test waits for what a guest does (generous: a loaded machine under TCG is slow).
WAIT_S = 60.0
#: The guest-stats fields QEMU 7.2 reports (later versions add more).
QEMU_72_STATS = frozenset(QMP_STAT_NAMES[:10])


@dataclass(frozen=True, slots=True)
class GuestKind:
    """What a test needs of its guest. ``booted``: wait until the guest's kernel (and its
    balloon driver, if any) runs; a simulated guest is always there at once."""

    balloon: bool = True
    balloon_id: str | None = "balloon0"
    driver: bool = True
    booted: bool = False
    deflate_on_oom: bool = False
    free_page_reporting: bool = False


class Backend:
    """Starts guests of one kind of QEMU for one test and stops them after it."""

    name = ""

    async def guest(self, name: str, kind: GuestKind) -> Path:
        """Start a guest; returns its QMP socket path."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class LabBackend(Backend):
    """Real QEMU guests from the lab image (each boot costs seconds under TCG)."""

    name = "lab"

    def __init__(self, image: LabImage, workdir: Path) -> None:
        self.image = image
        self.workdir = workdir
        self.guests: list[LabGuest] = []

    async def guest(self, name: str, kind: GuestKind) -> Path:
        guest = LabGuest(
            self.image,
            workdir=self.workdir,
            name=name,
            memory_mib=RAM_BYTES // MiB,
            balloon=kind.balloon,
            balloon_id=kind.balloon_id,
            driver=kind.driver,
            deflate_on_oom=kind.deflate_on_oom,
            free_page_reporting=kind.free_page_reporting,
        )
        self.guests.append(guest)
        await guest.start()
        if kind.booted:
            await guest.wait_booted()
        return guest.qmp_socket

    async def close(self) -> None:
        for guest in reversed(self.guests):
            await guest.stop()


class SimBackend(Backend):
    """Simulated guests, served from a fleet in the test's own event loop."""

    name = "sim"

    def __init__(self) -> None:
        # Short and under /tmp: a unix socket path must fit in 107 bytes.
        self._dir = tempfile.TemporaryDirectory(prefix="conf", dir="/tmp")
        self.fleet = SimFleet(dir=self._dir.name, guests=[])

    async def start(self) -> None:
        await self.fleet.start()

    async def guest(self, name: str, kind: GuestKind) -> Path:
        spec = SimGuestSpec(
            name,
            RAM_BYTES,
            balloon=kind.balloon,
            balloon_id=kind.balloon_id,
            driver=kind.driver,
            deflate_on_oom=kind.deflate_on_oom,
            free_page_reporting=kind.free_page_reporting,
        )
        return (await self.fleet.add(spec)).socket_path

    async def close(self) -> None:
        await self.fleet.close()
        self._dir.cleanup()


@pytest.fixture(params=[pytest.param("lab", marks=pytest.mark.lab), "sim"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each test runs against a real lab guest and against a simulated one."""
    chosen: Backend
    if request.param == "lab":
        chosen = LabBackend(request.getfixturevalue("lab_image"), tmp_path)
    else:
        chosen = sim = SimBackend()
        await sim.start()
    try:
        yield chosen
    finally:
        await chosen.close()


# --- helpers ---------------------------------------------------------------------------


async def linked(backend: Backend, kind: GuestKind, **link_options: Any) -> QmpLink:
    """A guest of ``kind`` and a QmpLink connected to it (the caller closes the link)."""
    path = await backend.guest("guest", kind)
    link = QmpLink("guest", path, **link_options)
    await link.connect(timeout_s=TIMEOUT_S)
    return link


async def until(check: Callable[[], Awaitable[T]], *, deadline_s: float) -> T:
    """Call ``check`` every 0.1 s until it returns something truthy or the deadline passes;
    returns its last value."""
    end = time.monotonic() + deadline_s
    while True:
        value = await check()
        if value or time.monotonic() > end:
            return value
        await asyncio.sleep(0.1)


async def qmp_error(link: QmpLink, cmd: str, args: dict[str, Any] | None) -> QMPCommandError:
    with pytest.raises(QMPCommandError) as info:
        await link.execute(cmd, args, timeout_s=TIMEOUT_S)
    return info.value


async def raw_stats(link: QmpLink) -> dict[str, Any]:
    assert link.balloon_path is not None
    args = {"path": link.balloon_path, "property": "guest-stats"}
    reply = await link.execute("qom-get", args, timeout_s=TIMEOUT_S)
    assert isinstance(reply, dict)
    return reply


# --- the tests -------------------------------------------------------------------------


async def test_greeting_capabilities_and_connect(backend: Backend) -> None:
    path = await backend.guest("guest", GuestKind())
    qmp = QMPClient("conformance")
    await asyncio.wait_for(qmp.connect(str(path)), TIMEOUT_S)  # sends qmp_capabilities
    try:
        greeting = qmp.greeting
        assert greeting is not None
        info = greeting._asdict()["QMP"]
        assert isinstance(info, dict)
        assert info["capabilities"] == ["oob"]
        version = info["version"]["qemu"]
        assert all(isinstance(version[k], int) for k in ("major", "minor", "micro"))
        assert await asyncio.wait_for(qmp.execute("query-version"), TIMEOUT_S) == info["version"]
        with pytest.raises(ExecuteError) as again:
            await asyncio.wait_for(qmp.execute("qmp_capabilities"), TIMEOUT_S)
        assert again.value.error_class == "CommandNotFound"
    finally:
        await qmp.disconnect()

    link = QmpLink("guest", path)
    try:
        await link.connect(timeout_s=TIMEOUT_S)
        assert link.state is LinkState.PROBING
        assert link.balloon_path == BALLOON
    finally:
        await link.close()


async def test_balloon_without_id_is_under_peripheral_anon(backend: Backend) -> None:
    link = await linked(backend, GuestKind(balloon_id=None))
    try:
        path = link.balloon_path
        assert path is not None
        assert path.startswith("/machine/peripheral-anon/device[")
        kind = await link.execute("qom-get", {"path": path, "property": "type"}, timeout_s=5)
        assert kind == "virtio-balloon-pci"
        assert link.state is LinkState.PROBING
    finally:
        await link.close()


async def test_query_memory_size_summary(backend: Backend) -> None:
    link = await linked(backend, GuestKind())
    try:
        reply = await link.execute("query-memory-size-summary", timeout_s=TIMEOUT_S)
        assert reply == {"base-memory": RAM_BYTES, "plugged-memory": 0}
        assert link.boot_bytes == RAM_BYTES
        assert await link.query_actual(timeout_s=TIMEOUT_S) == RAM_BYTES
    finally:
        await link.close()


async def test_stats_are_unset_until_the_guest_reports(backend: Backend) -> None:
    # A guest whose driver has not reported yet (here: never will) is the "before" state:
    # a booted guest's driver sends one report as it loads, before any polling.
    link = await linked(backend, GuestKind(driver=False))
    try:
        reply = await raw_stats(link)
        assert reply["last-update"] == 0
        assert set(reply["stats"]) == QEMU_72_STATS
        assert set(reply["stats"].values()) == {QMP_NOT_REPORTED}
        stats = await link.read_stats(timeout_s=TIMEOUT_S)
        assert stats == BalloonStats(last_update=0)
        assert not stats.valid
        interval = await link.execute(
            "qom-get",
            {"path": BALLOON, "property": "guest-stats-polling-interval"},
            timeout_s=TIMEOUT_S,
        )
        assert interval == 0
    finally:
        await link.close()


async def test_stats_are_valid_and_fresh_once_polling_is_on(backend: Backend) -> None:
    link = await linked(backend, GuestKind(booted=True))
    try:
        interval_s = 1
        await link.enable_stats(interval_s, timeout_s=TIMEOUT_S)
        polling = await link.execute(
            "qom-get",
            {"path": BALLOON, "property": "guest-stats-polling-interval"},
            timeout_s=TIMEOUT_S,
        )
        assert polling == interval_s

        async def valid() -> BalloonStats | None:
            stats = await link.read_stats(timeout_s=TIMEOUT_S)
            return stats if stats.valid else None

        first = await until(valid, deadline_s=WAIT_S)
        assert first is not None, "no valid stats"
        assert link.state is LinkState.ACTIVE
        assert first.total_bytes is not None
        assert 0 < first.total_bytes <= RAM_BYTES
        assert first.available_bytes is not None
        assert 0 < first.available_bytes <= first.total_bytes

        async def newer() -> BalloonStats | None:
            stats = await link.read_stats(timeout_s=TIMEOUT_S)
            return stats if stats.last_update > first.last_update else None

        later = await until(newer, deadline_s=WAIT_S)
        assert later is not None, "last-update did not advance"
        assert abs(later.last_update - time.time()) < WAIT_S  # host wall-clock seconds
        assert set((await raw_stats(link))["stats"]) == QEMU_72_STATS
    finally:
        await link.close()


async def test_balloon_moves_actual_emits_balloon_change_and_clamps_to_ram(
    backend: Backend,
) -> None:
    link = await linked(backend, GuestKind(booted=True))

    def near(size: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return abs(await link.query_actual(timeout_s=TIMEOUT_S) - size) <= MiB

        return check

    try:
        link.pending_events()  # only what the command causes counts
        await link.set_target(RAM_BYTES // 2, timeout_s=TIMEOUT_S)
        assert await until(near(RAM_BYTES // 2), deadline_s=WAIT_S), "half size not reached"

        async def balloon_changes() -> list[int]:
            return [e.data["actual"] for e in link.pending_events() if e.name == "BALLOON_CHANGE"]

        # QEMU sends at most one BALLOON_CHANGE a second, the latest value when it is up.
        seen = await until(balloon_changes, deadline_s=WAIT_S)
        assert seen, "no BALLOON_CHANGE after the balloon moved"
        assert all(RAM_BYTES // 2 - MiB <= actual < RAM_BYTES for actual in seen)

        # Above RAM: accepted, and the guest goes back to exactly its RAM, never above.
        await link.set_target(2 * RAM_BYTES, timeout_s=TIMEOUT_S)

        async def full() -> bool:
            return await link.query_actual(timeout_s=TIMEOUT_S) == RAM_BYTES

        assert await until(full, deadline_s=WAIT_S), "not back to full size"
    finally:
        await link.close()


async def test_balloon_value_zero_is_an_error(backend: Backend) -> None:
    link = await linked(backend, GuestKind())
    try:
        for value in (0, -MiB):
            err = await qmp_error(link, "balloon", {"value": value})
            assert err.error_class == "GenericError"
            assert "Parameter 'target' expects a size" in str(err)
        with pytest.raises(ValueError, match="positive"):
            await link.set_target(0, timeout_s=TIMEOUT_S)  # refused before it reaches QEMU
        assert await link.query_actual(timeout_s=TIMEOUT_S) == RAM_BYTES
    finally:
        await link.close()


async def test_negative_polling_interval_is_an_error(backend: Backend) -> None:
    link = await linked(backend, GuestKind())
    try:
        args = {"path": BALLOON, "property": "guest-stats-polling-interval", "value": -1}
        err = await qmp_error(link, "qom-set", args)
        assert err.error_class == "GenericError"
        assert "timer value must be greater than zero" in str(err)
        with pytest.raises(ValueError, match=">= 1"):
            await link.enable_stats(-1, timeout_s=TIMEOUT_S)
        polling = await link.execute(
            "qom-get",
            {"path": BALLOON, "property": "guest-stats-polling-interval"},
            timeout_s=TIMEOUT_S,
        )
        assert polling == 0
    finally:
        await link.close()


async def test_unknown_command_is_command_not_found(backend: Backend) -> None:
    link = await linked(backend, GuestKind())
    try:
        err = await qmp_error(link, "no-such-command", None)
        assert err.error_class == "CommandNotFound"
        assert "The command no-such-command has not been found" in str(err)
        assert link.state is LinkState.PROBING  # a refused command does not end the link
        assert await link.query_actual(timeout_s=TIMEOUT_S) == RAM_BYTES
    finally:
        await link.close()


async def test_no_balloon_device_is_device_not_active(backend: Backend) -> None:
    link = await linked(backend, GuestKind(balloon=False))
    try:
        assert link.state is LinkState.NO_DEVICE
        assert link.balloon_path is None
        assert link.boot_bytes == RAM_BYTES
        for cmd, args in (("query-balloon", None), ("balloon", {"value": RAM_BYTES // 2})):
            with pytest.raises(NoBalloonError) as info:
                await link.execute(cmd, args, timeout_s=TIMEOUT_S)
            assert info.value.error_class == "DeviceNotActive"
            assert "No balloon device has been activated" in str(info.value)
        with pytest.raises(NoBalloonError):
            await link.read_stats(timeout_s=TIMEOUT_S)
    finally:
        await link.close()


async def test_driver_not_loaded_is_no_driver(backend: Backend) -> None:
    link = await linked(backend, GuestKind(driver=False), driver_grace_s=2.0)
    states = [link.state]
    try:
        await link.enable_stats(1, timeout_s=TIMEOUT_S)
        await link.set_target(RAM_BYTES // 2, timeout_s=TIMEOUT_S)  # accepted, never acted on

        async def no_driver() -> bool:
            stats = await link.read_stats(timeout_s=TIMEOUT_S)
            assert not stats.valid
            return link.state is LinkState.NO_DRIVER

        assert await until(no_driver, deadline_s=WAIT_S), "not reported as NO_DRIVER"
        states.append(link.state)
        assert await link.query_actual(timeout_s=TIMEOUT_S) == RAM_BYTES
    finally:
        await link.close()
    assert states == [LinkState.PROBING, LinkState.NO_DRIVER]


@pytest.mark.parametrize(
    ("deflate_on_oom", "free_page_reporting"), [(False, False), (True, True), (True, False)]
)
async def test_the_balloon_devices_features_are_read_on_connect(
    backend: Backend, deflate_on_oom: bool, free_page_reporting: bool
) -> None:
    kind = GuestKind(deflate_on_oom=deflate_on_oom, free_page_reporting=free_page_reporting)
    link = await linked(backend, kind)
    try:
        assert link.deflate_on_oom is deflate_on_oom
        assert link.free_page_reporting is free_page_reporting
    finally:
        await link.close()
