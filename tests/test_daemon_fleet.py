"""The daemon over simulated guests (real QMP over unix sockets, no QEMU): guests that come
and go, one hung guest among healthy ones, and memory that stays bounded."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import WAIT_S, running, until
from prometheus_client.parser import text_string_to_metric_families

from balloond.adapters.metrics import scrape, scrape_now
from balloond.adapters.qmp import EVENT_QUEUE_LEN, QmpLink
from balloond.adapters.systemd import status_line
from balloond.core.events import BalloonChange
from balloond.core.link import LinkState
from balloond.core.policy import Reason
from balloond.core.stats import HostSnapshot
from balloond.core.units import GiB
from balloond.runtime.config import Config, StaticGuest, parse_config
from balloond.service.commands import Commands
from balloond.service.guest import Mode
from testkit.sim.fleet import SimFleet
from testkit.sim.qmp_server import SimGuestSpec

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
            hung = daemon.guests["vm0"]
            assert await until(lambda: hung.link.state is LinkState.HUNG)
            others = [daemon.guests[name] for name in ("vm1", "vm2", "vm3")]
            polled = {c.name: c.history[-1].t_s for c in others}
            # While vm0 stays hung, each of the others is polled again and again.
            assert await until(
                lambda: all(sum(s.t_s > polled[c.name] for s in c.history) >= 3 for c in others)
            ), "a hung guest stalled the others"
            assert all(c.link.state is LinkState.ACTIVE for c in others)
            assert hung.link.state is LinkState.HUNG
        finally:
            fleet.guest("vm0").resume()
        assert await until(lambda: daemon.guests["vm0"].link.state is LinkState.ACTIVE)


async def test_event_memory_stays_bounded(tmp_path: Path) -> None:
    """qemu.qmp's own listeners keep every event forever; the link must not."""
    async with SimFleet(dir=tmp_path, guests=[SimGuestSpec("vm", GUEST_RAM)]) as fleet:
        link = QmpLink("vm", fleet.socket_path("vm"))
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


async def test_a_qemu_restarted_with_a_balloon_device_gets_stats_polling(tmp_path: Path) -> None:
    """A guest first seen without a device, then QEMU restarted on the same socket with
    one: the reconnect goes through the one post-connect path, so stats polling is on and
    the guest is seen, not left stale while its link says active."""
    sock_dir = tmp_path / "socks"
    sock_dir.mkdir()
    spec = SimGuestSpec("vm", GUEST_RAM, balloon=False)
    config = fleet_config(tmp_path, sock_dir, device_recheck_s=0.5)
    async with SimFleet(dir=sock_dir, guests=[spec]) as fleet, running(config) as daemon:
        ctrl = daemon.guests["vm"]
        assert await until(lambda: ctrl.link.state is LinkState.NO_DEVICE, timeout_s=WAIT_S)
        guest = fleet.guest("vm")
        await guest.restart(spec=replace(spec, balloon=True))
        assert await until(lambda: guest.model.polling_interval_s == 1, timeout_s=WAIT_S)
        assert await until(lambda: ctrl.link.state is LinkState.ACTIVE, timeout_s=WAIT_S)
        reports = {s.stats.last_update for s in ctrl.history if s.stats is not None}
        assert await until(
            lambda: len({s.stats.last_update for s in ctrl.history if s.stats}) >= len(reports) + 3,
            timeout_s=WAIT_S,
        ), "the guest's stats stopped flowing"
        assert ctrl.last_decision is not None
        assert ctrl.last_decision.reason is not Reason.STALE_STATS


class FlakyHost:
    """A host reader that fails ``failures`` times with an unexpected error, then works."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> HostSnapshot:
        self.calls += 1
        if self.calls <= self.failures:
            raise KeyError("MemAvailable")
        return HostSnapshot(total_bytes=64 * GiB, available_bytes=48 * GiB)


async def test_a_failing_daemon_loop_is_logged_restarted_and_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sock_dir = tmp_path / "socks"
    sock_dir.mkdir()
    host = FlakyHost(failures=2)
    async with running(fleet_config(tmp_path, sock_dir), host_reader=host) as daemon:
        assert await until(lambda: daemon.cycles >= 1, timeout_s=WAIT_S), "planner not restarted"
        failure = daemon.status()["task_failures"]
        assert [f["task"] for f in failure] == ["host-planner"]
        assert failure[0]["failures"] == 2
        assert failure[0]["last_error"] == "KeyError: 'MemAvailable'"
        assert "2 task failure(s), latest host-planner: KeyError" in status_line(daemon)
        text = scrape_now(daemon).decode()
        assert 'balloond_task_failures_total{task="host-planner"} 2.0' in text
    tracebacks = [r for r in caplog.records if "host-planner failed" in r.getMessage()]
    assert len(tracebacks) == 2
    assert all("Traceback" in r.getMessage() for r in tracebacks)


async def test_a_guest_moved_to_another_socket_leaves_no_old_task(tmp_path: Path) -> None:
    """The old socket is gone (its controller keeps retrying the connect): when the
    config names a new path, the old task ends and only the new one runs."""
    sock_dir = tmp_path / "socks"
    sock_dir.mkdir()
    gone = tmp_path / "gone.sock"

    def config(qmp: Path) -> Config:
        cfg = fleet_config(tmp_path, sock_dir)
        return cfg.model_copy(update={"guests": (StaticGuest(name="vm", qmp=qmp),)})

    async with (
        SimFleet(dir=sock_dir / "new", guests=[SimGuestSpec("vm", GUEST_RAM)]) as fleet,
        running(config(gone)) as daemon,
    ):
        old = daemon.guests["vm"]
        assert await until(lambda: old.link.state is LinkState.DISCONNECTED, timeout_s=WAIT_S)
        daemon.apply_config(config(fleet.socket_path("vm")))
        new = daemon.guests["vm"]
        assert new is not old
        assert await until(lambda: old.link.state is LinkState.CLOSED, timeout_s=WAIT_S)
        assert await until(lambda: new.link.state is LinkState.ACTIVE, timeout_s=WAIT_S)
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == "guest:vm" and not t.done()]
        assert len(tasks) == 1


async def test_an_expired_hold_is_saved_and_not_published(tmp_path: Path) -> None:
    """When a hold runs out the guest goes back to automatic, the saved state forgets the
    hold (a restart must not bring it back), and listeners (MQTT's events topic) hear only
    balloon changes, never the daemon's own bookkeeping."""
    sock_dir = tmp_path / "socks"
    sock_dir.mkdir()
    heard: list[object] = []
    async with (
        SimFleet(dir=sock_dir, guests=[SimGuestSpec("vm", GUEST_RAM)]),
        running(fleet_config(tmp_path, sock_dir)) as daemon,
    ):
        daemon.subscribe(lambda _guest, change: heard.append(change))
        ctrl = daemon.guests["vm"]
        assert await until(lambda: ctrl.link.state is LinkState.ACTIVE)
        reply = await Commands(daemon).handle(
            {"op": "set", "guest": "vm", "size": "700MiB", "hold": 1}
        )
        assert reply["ok"], reply
        saved = tmp_path / "state" / "intents.json"
        assert "vm" in json.loads(saved.read_text())["guests"]
        assert await until(lambda: ctrl.intent.mode is Mode.AUTO), "the hold never ran out"
        assert await until(lambda: "vm" not in json.loads(saved.read_text())["guests"])
    assert heard, "no balloon change was heard"
    assert all(isinstance(change, BalloonChange) for change in heard)
    assert any(change.record["reason"] == "manual" for change in heard)  # type: ignore[attr-defined]


async def test_balloon_features_show_in_status_and_metrics_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="balloond")
    sock_dir = tmp_path / "socks"
    sock_dir.mkdir()
    specs = [
        SimGuestSpec("exposed", GUEST_RAM),
        SimGuestSpec("safe", GUEST_RAM, deflate_on_oom=True, free_page_reporting=True),
    ]
    async with (
        SimFleet(dir=sock_dir, guests=specs) as fleet,
        running(fleet_config(tmp_path, sock_dir)) as daemon,
    ):
        exposed, safe = daemon.guests["exposed"], daemon.guests["safe"]
        assert await until(lambda: exposed.link.state is LinkState.ACTIVE)
        assert await until(lambda: safe.link.state is LinkState.ACTIVE)

        # A reconnect (QEMU restarted) reads the features again but does not warn again.
        def connects() -> int:
            return sum(
                1
                for r in caplog.records
                if r.name == "balloond.guest.exposed" and "-> probing" in r.getMessage()
            )

        assert connects() == 1
        await fleet.guest("exposed").kill(sig="SIGKILL")  # the socket file stays: same guest
        await fleet.guest("exposed").start()
        assert await until(lambda: connects() == 2), "no reconnect"
        assert await until(lambda: exposed.link.state is LinkState.ACTIVE)
        assert daemon.guests["exposed"] is exposed
        status = {g["name"]: g for g in daemon.status()["guests"]}
        assert (status["exposed"]["deflate_on_oom"], status["exposed"]["free_page_reporting"]) == (
            False,
            False,
        )
        assert (status["safe"]["deflate_on_oom"], status["safe"]["free_page_reporting"]) == (
            True,
            True,
        )
        text = scrape_now(daemon).decode()
        assert (
            'balloond_guest_balloon_feature{feature="deflate-on-oom",guest="exposed"} 0.0' in text
        )
        assert 'balloond_guest_balloon_feature{feature="deflate-on-oom",guest="safe"} 1.0' in text
    warnings = [r for r in caplog.records if "deflate-on-oom is off" in r.getMessage()]
    assert [r.name for r in warnings] == ["balloond.guest.exposed"]


async def test_a_scrape_writes_the_fleet_in_steps(tmp_path: Path) -> None:
    """The endpoint writes a few guests per turn of the loop (other tasks run in between),
    and its text is what one go over the whole fleet writes; Prometheus can parse it."""
    sock_dir = tmp_path / "socks"
    sock_dir.mkdir()
    specs = [SimGuestSpec(f"vm{i:02d}", GUEST_RAM) for i in range(12)]
    async with (
        SimFleet(dir=sock_dir, guests=specs),
        running(fleet_config(tmp_path, sock_dir)) as daemon,
    ):
        assert await until(
            lambda: all(c.link.state is LinkState.ACTIVE for c in daemon.guests.values())
        )
        turns = 0

        async def count_turns() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        counter = asyncio.create_task(count_turns())
        try:
            body, held = await scrape(daemon, chunk=5)
        finally:
            counter.cancel()
            await asyncio.gather(counter, return_exceptions=True)
        assert turns >= 3, "the scrape never let the loop turn"  # 12 guests, 5 at a time
        assert held >= 0
        text = body.decode()
        direct = scrape_now(daemon).decode()

        def series(body: str) -> set[str]:
            return {
                line.split(" ")[0]
                for line in body.splitlines()
                if line.startswith(("balloond_guest_info", "balloond_guests{"))
            }

        assert series(text) == series(direct)
        assert 'balloond_guests{state="active"} 12.0' in text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        info = families["balloond_guest_info"]
        assert sorted(s.labels["guest"] for s in info.samples) == sorted(daemon.guests)
        assert {s.labels["state"] for s in info.samples} == {"active"}
        assert len(families["balloond_guest_actual_bytes"].samples) == 12
        assert families["balloond_guest_decisions"].type == "counter"
