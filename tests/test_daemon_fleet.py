"""The daemon over simulated guests (real QMP over unix sockets, no QEMU): guests that come
and go, one hung guest among healthy ones, and memory that stays bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from daemon_helpers import running, until

from balloond.config import Config, parse_config
from balloond.link import EVENT_QUEUE_LEN, GuestLink, LinkState
from balloond.sim.fleet import SimFleet
from balloond.sim.qmp_server import SimGuestSpec
from balloond.units import GiB

GUEST_RAM = 1 * GiB


def fleet_config(tmp_path: Path, sock_dir: Path, **daemon: Any) -> Config:
    return parse_config(
        {
            "daemon": {
                "poll_interval_s": 1.0,
                "qmp_timeout_s": 1.0,
                "state_dir": str(tmp_path / "state"),
                "runtime_dir": str(tmp_path / "run"),
                **daemon,
            },
            "discovery": {"globs": [f"{sock_dir}/*.sock"], "rescan_interval_s": 0.5},
            "metrics": {"enabled": False},
        }
    )


async def test_guests_appear_and_disappear_while_it_runs(tmp_path: Path) -> None:
    sock_dir = tmp_path / "socks"
    sock_dir.mkdir()
    specs = [SimGuestSpec(f"vm{i}", GUEST_RAM) for i in range(3)]
    async with (
        SimFleet(dir=sock_dir, guests=specs) as fleet,
        running(fleet_config(tmp_path, sock_dir)) as daemon,
    ):
        assert sorted(daemon.guests) == ["vm0", "vm1", "vm2"]
        assert await until(
            lambda: all(c.link.state is LinkState.ACTIVE for c in daemon.guests.values())
        )
        await fleet.add(SimGuestSpec("vm3", GUEST_RAM))
        assert await until(lambda: "vm3" in daemon.guests)
        assert await until(lambda: daemon.guests["vm3"].link.state is LinkState.ACTIVE)
        # A clean QEMU exit removes its socket: the guest goes away.
        await fleet.guest("vm1").kill(sig="SIGTERM")
        assert await until(lambda: "vm1" not in daemon.guests)
        assert sorted(daemon.guests) == ["vm0", "vm2", "vm3"]


async def test_one_hung_guest_never_stalls_the_others(tmp_path: Path) -> None:
    sock_dir = tmp_path / "socks"
    sock_dir.mkdir()
    specs = [SimGuestSpec(f"vm{i}", GUEST_RAM) for i in range(4)]
    async with (
        SimFleet(dir=sock_dir, guests=specs) as fleet,
        running(fleet_config(tmp_path, sock_dir)) as daemon,
    ):
        assert await until(
            lambda: all(c.link.state is LinkState.ACTIVE for c in daemon.guests.values())
        )
        fleet.guest("vm0").pause()  # answers nothing, like a SIGSTOPped QEMU
        try:
            assert await until(lambda: daemon.guests["vm0"].link.state is LinkState.HUNG)
            before = {n: len(c.history) and c.history[-1].t_s for n, c in daemon.guests.items()}
            await asyncio.sleep(3)
            for name in ("vm1", "vm2", "vm3"):
                ctrl = daemon.guests[name]
                assert ctrl.history[-1].t_s > before[name] + 1.5, f"{name} stopped being polled"
                assert ctrl.link.state is LinkState.ACTIVE
        finally:
            fleet.guest("vm0").resume()
        assert await until(lambda: daemon.guests["vm0"].link.state is LinkState.ACTIVE)


async def test_event_memory_stays_bounded(tmp_path: Path) -> None:
    """qemu.qmp's own listeners keep every event forever; the link must not."""
    async with SimFleet(dir=tmp_path, guests=[SimGuestSpec("vm", GUEST_RAM)]) as fleet:
        link = GuestLink("vm", fleet.socket_path("vm"))
        await link.connect(timeout_s=2)
        try:
            guest = fleet.guest("vm")
            for _ in range(3 * EVENT_QUEUE_LEN):
                guest.stop_vm()
                guest.cont_vm()
            await link.query_actual(timeout_s=2)  # everything sent before is read by now
            received = link.pending_events()
            assert 0 < len(received) <= EVENT_QUEUE_LEN
            assert received[-1].name == "RESUME"  # the newest are kept
            client = link._client
            assert client is not None
            assert len(client.events.history) == 0
            assert client.events.empty()
        finally:
            await link.close()
