"""The QMP guest link against real lab guests: stats, targets, and every kind of trouble."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable

import pytest

from balloond.adapters.qmp import QmpLink
from balloond.core.errors import DisconnectedError, LinkTimeoutError
from balloond.core.link import LinkState
from balloond.core.stats import BalloonStats
from balloond.core.units import MiB
from testkit.lab import LabGuest

GuestFactory = Callable[..., Awaitable[LabGuest]]


pytestmark = pytest.mark.lab
TIMEOUT_S = 5.0
#: How long a test waits for what a guest does (generous: a loaded machine under TCG is slow).
WAIT_S = 60.0


async def _connected(guest: LabGuest, **kwargs: float) -> QmpLink:
    link = QmpLink(guest.name, guest.qmp_socket, **kwargs)
    await link.connect(timeout_s=TIMEOUT_S)
    return link


async def _until(predicate_coro, *, deadline_s: float, every_s: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll ``predicate_coro()`` until it returns something truthy or the deadline passes."""
    end = time.monotonic() + deadline_s
    while True:
        value = await predicate_coro()
        if value or time.monotonic() > end:
            return value
        await asyncio.sleep(every_s)


async def test_stats_then_half_size_and_back(lab_guest: LabGuest) -> None:
    link = await _connected(lab_guest)
    states = [link.state]
    try:
        assert link.balloon_path == "/machine/peripheral/balloon0"
        assert link.boot_bytes == 512 * MiB
        interval_s = 2
        await link.enable_stats(interval_s, timeout_s=TIMEOUT_S)

        async def valid_stats() -> BalloonStats | None:
            stats = await link.read_stats(timeout_s=TIMEOUT_S)
            return stats if stats.valid else None

        stats = await _until(valid_stats, deadline_s=WAIT_S)
        assert stats is not None, "no valid stats"
        states.append(link.state)
        assert stats.total_bytes is not None
        assert 0 < stats.total_bytes <= 512 * MiB
        assert stats.available_bytes is not None
        assert stats.available_bytes > 0

        await link.set_target(256 * MiB, timeout_s=TIMEOUT_S)

        async def at(size: int) -> bool:
            actual = await link.query_actual(timeout_s=TIMEOUT_S)
            return abs(actual - size) <= MiB

        assert await _until(lambda: at(256 * MiB), deadline_s=WAIT_S), "half size not reached"
        events = link.pending_events()
        assert any(e.name == "BALLOON_CHANGE" for e in events)
        await link.set_target(512 * MiB, timeout_s=TIMEOUT_S)
        assert await _until(lambda: at(512 * MiB), deadline_s=WAIT_S), "full size not reached"
    finally:
        await link.close()
    assert states == [LinkState.PROBING, LinkState.ACTIVE]
    assert link.state is LinkState.CLOSED


async def test_guest_without_driver_is_reported(make_guest: GuestFactory) -> None:
    guest = await make_guest("nodrv", driver=False)
    link = await _connected(guest, driver_grace_s=3.0)
    try:
        await link.enable_stats(1, timeout_s=TIMEOUT_S)
        await link.set_target(256 * MiB, timeout_s=TIMEOUT_S)  # accepted, never acted on

        async def no_driver() -> bool:
            await link.read_stats(timeout_s=TIMEOUT_S)
            return link.state is LinkState.NO_DRIVER

        assert await _until(no_driver, deadline_s=WAIT_S)
        assert await link.query_actual(timeout_s=TIMEOUT_S) == 512 * MiB
    finally:
        await link.close()


async def test_guest_without_balloon_device(make_guest: GuestFactory) -> None:
    guest = await make_guest("nodev", balloon=False, boot=False)
    link = await _connected(guest)
    try:
        assert link.state is LinkState.NO_DEVICE
        with pytest.raises(Exception, match="no virtio-balloon device"):
            await link.read_stats(timeout_s=TIMEOUT_S)
    finally:
        await link.close()


async def test_device_without_id_is_found(make_guest: GuestFactory) -> None:
    guest = await make_guest("anon", balloon_id=None, boot=False)
    link = await _connected(guest)
    try:
        assert link.balloon_path is not None
        assert link.balloon_path.startswith("/machine/peripheral-anon/")
    finally:
        await link.close()


async def test_sigkill_is_a_disconnect_and_a_new_qemu_is_reconnected(
    lab_guest: LabGuest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    link = await _connected(lab_guest)
    try:
        await link.enable_stats(1, timeout_s=TIMEOUT_S)
        lab_guest.kill(signal.SIGKILL)
        await lab_guest.wait_exited()
        with pytest.raises(DisconnectedError):
            await link.query_actual(timeout_s=TIMEOUT_S)
        assert link.state is LinkState.DISCONNECTED
        assert not any(r.exc_info for r in caplog.records), "a traceback was logged"

        await lab_guest.start()  # a new QEMU on the same socket path
        stop = asyncio.Event()
        assert await link.connect_with_retry(attempt_timeout_s=TIMEOUT_S, stop=stop)
        assert link.state is LinkState.PROBING
        assert await link.query_actual(timeout_s=TIMEOUT_S) == 512 * MiB
    finally:
        await link.close()


async def test_sigstop_calls_time_out_and_sigcont_recovers(lab_guest: LabGuest) -> None:
    link = await _connected(lab_guest)
    try:
        lab_guest.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(LinkTimeoutError):  # ended by its timeout, not hanging
                await link.query_actual(timeout_s=1.0)
            assert link.state is LinkState.HUNG
        finally:
            lab_guest.send_signal(signal.SIGCONT)
        assert await link.query_actual(timeout_s=TIMEOUT_S) == 512 * MiB
        assert link.state is LinkState.PROBING
    finally:
        await link.close()


async def test_restarting_the_stats_timer_keeps_reports_coming(lab_guest: LabGuest) -> None:
    """QEMU ignores a set to the interval it has; a restart goes through 0, so the timer
    starts afresh (the guest reports at once) and reports keep coming every interval."""
    link = await _connected(lab_guest)
    try:
        await link.enable_stats(1, timeout_s=TIMEOUT_S)

        async def reported() -> int | None:
            stats = await link.read_stats(timeout_s=TIMEOUT_S)
            return stats.last_update if stats.valid else None

        first = await _until(reported, deadline_s=WAIT_S)
        assert first is not None, "no valid stats"
        await link.enable_stats(1, timeout_s=TIMEOUT_S, restart=True)
        interval = await link.execute(
            "qom-get",
            {"path": "/machine/peripheral/balloon0", "property": "guest-stats-polling-interval"},
            timeout_s=TIMEOUT_S,
        )
        assert interval == 1

        async def later() -> int | None:
            update = await reported()
            return update if update is not None and update >= first + 2 else None

        assert await _until(later, deadline_s=WAIT_S), "reports stopped after the restart"
    finally:
        await link.close()
