"""The control loop on real lab guests: reclaim idle memory, deflate before an OOM kill,
dry-run, changes balloond did not make, and the `config check` command."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import WAIT_S, running, until

from balloond.adapters.qmp import QmpLink
from balloond.core.link import LinkState
from balloond.core.policy import Reason
from balloond.core.units import MiB
from balloond.runtime.config import Config, parse_config
from balloond.service.commands import Commands
from testkit.lab import LabGuest

GuestFactory = Callable[..., Awaitable[LabGuest]]
QMP_TIMEOUT_S = 5.0


def make_config(tmp_path: Path, guests: list[LabGuest], **daemon: Any) -> Config:
    return parse_config(
        {
            "daemon": {
                "poll_interval_s": 1.0,
                "state_dir": str(tmp_path / "state"),
                "runtime_dir": str(tmp_path / "run"),
                **daemon,
            },
            "guests": [{"name": g.name, "qmp": str(g.qmp_socket)} for g in guests],
            "policies": {"default": {"reclaim": "idle"}},
        }
    )


async def actual_of(guest: LabGuest) -> int:
    link = QmpLink(guest.name, guest.qmp_socket)
    await link.connect(timeout_s=QMP_TIMEOUT_S)
    try:
        return await link.query_actual(timeout_s=QMP_TIMEOUT_S)
    finally:
        await link.close()


async def set_size(guest: LabGuest, size: int) -> None:
    link = QmpLink(guest.name, guest.qmp_socket)
    await link.connect(timeout_s=QMP_TIMEOUT_S)
    try:
        await link.set_target(size, timeout_s=QMP_TIMEOUT_S)
        for _ in range(100):
            if abs(await link.query_actual(timeout_s=QMP_TIMEOUT_S) - size) <= MiB:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{guest.name} did not reach {size >> 20} MiB")
    finally:
        await link.close()


async def boot(make_guest: GuestFactory, names: list[str], **options: Any) -> list[LabGuest]:
    return list(await asyncio.gather(*(make_guest(n, **options) for n in names)))


@pytest.mark.lab
async def test_idle_guests_come_down_to_their_floor(
    make_guest: GuestFactory, tmp_path: Path
) -> None:
    guests = await boot(make_guest, ["a", "b", "c"], memory_mib=512)
    config = make_config(tmp_path, guests)
    async with running(config) as daemon:
        floors: dict[str, int] = {}

        def all_at_floor() -> bool:
            for name, ctrl in daemon.guests.items():
                decision = ctrl.last_decision
                if ctrl.history and decision is not None and decision.floor_bytes is not None:
                    floor = decision.floor_bytes
                    if ctrl.history[-1].actual_bytes <= floor + MiB:
                        floors[name] = floor
            return len(floors) == 3

        assert await until(all_at_floor), f"not all at their floor: {floors}"
        for name, floor in floors.items():
            assert floor < 512 * MiB, name
            assert daemon.guests[name].history[-1].actual_bytes >= floor - MiB
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").open()]
    assert {r["guest"] for r in audit} == {"a", "b", "c"}
    assert all(r["reason"] == "idle" and r["new_bytes"] < r["old_bytes"] for r in audit)
    assert all(r["stats"]["available_bytes"] > 0 for r in audit)


@pytest.mark.lab
async def test_daemon_prevents_the_oom_kill_that_happens_without_it(
    make_guest: GuestFactory, tmp_path: Path
) -> None:
    """Acceptance: ballooned to 256 MiB, memhog 320 MiB at 100 MiB/s. With the daemon it
    completes and nothing is killed; the same guest without the daemon gets an OOM kill."""
    managed, alone = await boot(make_guest, ["managed", "alone"], memory_mib=512)
    await asyncio.gather(set_size(managed, 256 * MiB), set_size(alone, 256 * MiB))
    config = make_config(tmp_path, [managed])
    async with running(config) as daemon:
        # Let the daemon see the guest at 256 MiB for a few polls before the load starts.
        ctrl = daemon.guests["managed"]
        assert await until(lambda: ctrl.polls >= 3)
        # One surge at a time: on two cores, a second TCG guest busy with its own memhog
        # would take CPU from this guest's balloon driver as it deflates.
        hog = await managed.start_memhog(mib=320, rate_mib_s=100)
        assert await hog.wait_allocated(timeout_s=WAIT_S), "memhog was killed with balloond"
        await hog.stop()
    assert await managed.oom_kills() == 0
    unmanaged = await alone.start_memhog(mib=320, rate_mib_s=100)
    assert not await unmanaged.wait_allocated(timeout_s=WAIT_S), "no OOM kill without balloond"
    assert await alone.oom_kills() >= 1
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "state" / "audit.jsonl").open()]
    assert any(r in ("pressure", "oom-risk") for r in reasons), reasons


@pytest.mark.lab
async def test_dry_run_changes_nothing(make_guest: GuestFactory, tmp_path: Path) -> None:
    (guest,) = await boot(make_guest, ["dry"], memory_mib=512)
    config = make_config(tmp_path, [guest], dry_run=True)
    async with running(config) as daemon:
        ctrl = daemon.guests["dry"]
        assert await until(
            lambda: ctrl.last_decision is not None and ctrl.last_decision.target_bytes is not None
        )
        assert ctrl.last_decision is not None
        assert ctrl.last_decision.target_bytes is not None, "it should want to reclaim"
        await asyncio.sleep(2)
        # QEMU serves one QMP client at a time (the daemon), so ask the guest: without
        # deflate-on-oom, ballooned pages leave MemTotal.
        mem_total = (await guest.meminfo())["MemTotal"]
        assert mem_total > 450 * MiB
        assert all(s.actual_bytes == 512 * MiB for s in ctrl.history)
    records = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").open()]
    assert records
    assert all(r["dry_run"] for r in records)
    assert await actual_of(guest) == 512 * MiB


@pytest.mark.lab
async def test_a_change_balloond_did_not_make_is_respected(
    make_guest: GuestFactory, tmp_path: Path
) -> None:
    (guest,) = await boot(make_guest, ["ext"], memory_mib=512)
    config = make_config(tmp_path, [guest])
    async with running(config) as daemon:
        ctrl = daemon.guests["ext"]

        def settled() -> bool:
            # Reclaimed and resting: the balloon reached the target and the engine wants no
            # further step, so no command of balloond's own can land on top of the
            # operator's below (an idle reclaim goes in steps; between two the balloon is
            # at the target too).
            decision = ctrl.last_decision
            return (
                ctrl.target_bytes is not None
                and ctrl.history[-1].actual_bytes == ctrl.target_bytes
                and decision is not None
                and decision.target_bytes is None
                and str(decision.reason) in ("at-floor", "in-band", "min-change")
            )

        assert await until(settled)
        reclaimed_to = ctrl.target_bytes
        assert reclaimed_to is not None
        assert reclaimed_to < 512 * MiB
        # Another QMP client (an operator's monitor) gives the guest all its memory back.
        # QEMU serves one client per QMP socket, so send it through the daemon's own
        # connection, underneath the controller, which is all QEMU would see either way.
        await ctrl.link.execute("balloon", {"value": 512 * MiB}, timeout_s=QMP_TIMEOUT_S)
        assert await until(lambda: ctrl.external_change_s is not None)
        decided = sum(ctrl.decisions.values())
        assert await until(lambda: sum(ctrl.decisions.values()) >= decided + 3)  # 3 more polls
        # It backs off instead of taking the memory straight back.
        assert ctrl.history[-1].actual_bytes == 512 * MiB
        assert ctrl.last_decision is not None
        # A move upwards also counts as a deflate, so the cooldown may be what holds it.
        assert str(ctrl.last_decision.reason) in ("external-backoff", "cooldown")


@pytest.mark.lab
async def test_guest_without_driver_is_listed_and_left_alone(
    make_guest: GuestFactory, tmp_path: Path
) -> None:
    (guest,) = await boot(make_guest, ["nodrv"], driver=False)
    config = make_config(tmp_path, [guest])
    async with running(config) as daemon:
        daemon.guests["nodrv"].link.driver_grace_s = 2.0
        assert await until(lambda: daemon.status()["guests"][0]["state"] == "no-driver")
        assert daemon.guests["nodrv"].target_bytes is None
    assert await actual_of(guest) == 512 * MiB


def _balloond(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "balloond", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_check_accepts_the_reference_file() -> None:
    result = _balloond("config", "check", "config/balloond.toml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_config_check_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[policies.web]\nfree_low = "lots"\ncolour = "blue"\n')
    result = _balloond("config", "check", str(bad))
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{bad}: policies.web.free_low: ") for line in lines), lines
    assert any(line.startswith(f"{bad}: policies.web.colour: ") for line in lines), lines


def test_config_schema_is_json_schema() -> None:
    result = _balloond("config", "schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert "daemon" in schema["properties"]
    assert "policies" in schema["properties"]


def test_run_with_a_bad_config_exits_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\npoll_interval_s = -1\n")
    result = _balloond("run", "--config", str(bad))
    assert result.returncode == 78
    assert "daemon.poll_interval_s" in result.stderr


def test_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path}/state"\nruntime_dir = "{tmp_path}/run"\n'
        "[metrics]\nenabled = false\n"
        f'[[guests]]\nname = "ghost"\nqmp = "{tmp_path}/ghost.qmp"\n'
    )
    log = tmp_path / "balloond.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "balloond", "run", "--config", str(config)], stderr=out
        )
    try:
        # SIGTERM once it says it is starting: its signal handlers are in place by then.
        deadline = time.monotonic() + WAIT_S
        while "starting" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "balloond never said it was starting"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "stopped" in err


async def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "state" / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _audited(tmp_path: Path, reason: str) -> list[dict[str, Any]]:
    """The audit records with ``reason``, once there is one (records reach the file from
    the daemon's I/O thread a moment after the change)."""
    deadline = time.monotonic() + WAIT_S
    while not (found := [r for r in await _audit(tmp_path) if r["reason"] == reason]):
        assert time.monotonic() < deadline, f"no {reason!r} record in the audit log"
        await asyncio.sleep(0.1)
    return found


@pytest.mark.lab
async def test_a_hot_plugged_balloon_device_is_polled_and_managed(
    make_guest: GuestFactory, tmp_path: Path
) -> None:
    """QEMU starts without a balloon device; an operator adds one with device_add. The
    guest is then managed like any other: stats polling on, stats flowing, decisions made
    on fresh stats (not a shrink on the driver's first report and then stale-stats)."""
    (guest,) = await boot(make_guest, ["hot"], memory_mib=512, balloon=False)
    config = make_config(tmp_path, [guest], device_recheck_s=1.0)
    async with running(config) as daemon:
        ctrl = daemon.guests["hot"]
        assert await until(lambda: ctrl.link.state is LinkState.NO_DEVICE)
        await guest.monitor("device_add", {"driver": "virtio-balloon-pci", "id": "balloon0"})
        assert await until(lambda: ctrl.link.state is LinkState.ACTIVE)

        def reports() -> int:
            return len({s.stats.last_update for s in ctrl.history if s.stats and s.stats.valid})

        assert await until(lambda: reports() >= 5), "the guest's stats stopped flowing"
        interval = await guest.monitor(
            "qom-get",
            {"path": "/machine/peripheral/balloon0", "property": "guest-stats-polling-interval"},
        )
        assert interval == 1
        assert await until(lambda: ctrl.target_bytes is not None), "nothing reclaimed"
        assert ctrl.last_decision is not None
        assert ctrl.last_decision.reason is not Reason.STALE_STATS


@pytest.mark.lab
async def test_dry_run_leaves_an_operators_target_alone_too(
    make_guest: GuestFactory, tmp_path: Path
) -> None:
    (guest,) = await boot(make_guest, ["dryset"], memory_mib=512)
    config = make_config(tmp_path, [guest], dry_run=True)
    async with running(config) as daemon:
        ctrl = daemon.guests["dryset"]
        assert await until(lambda: ctrl.link.state is LinkState.ACTIVE)
        reply = await Commands(daemon).handle({"op": "set", "guest": "dryset", "size": "300MiB"})
        assert reply["ok"], reply
        assert reply["result"]["mode"] == "manual"

        async def noted() -> bool:
            return any(r["reason"] == "manual" for r in await _audit(tmp_path))

        deadline = time.monotonic() + WAIT_S
        while not await noted():
            assert time.monotonic() < deadline, "the dry-run set was never recorded"
            await asyncio.sleep(0.2)
        polled = ctrl.polls
        assert await until(lambda: ctrl.polls >= polled + 3)  # a few more cycles
        assert all(s.actual_bytes == 512 * MiB for s in ctrl.history)
        assert ctrl.target_bytes is None
    manual = [r for r in await _audit(tmp_path) if r["reason"] == "manual"]
    assert len(manual) == 1, "recorded once, not every cycle"
    assert manual[0]["dry_run"] is True
    assert manual[0]["new_bytes"] == 300 * MiB
    assert "left alone" in manual[0]["explanation"]
    assert await actual_of(guest) == 512 * MiB


@pytest.mark.lab
async def test_a_guest_gone_blind_gets_its_memory_back_until_stats_flow(
    make_guest: GuestFactory, tmp_path: Path
) -> None:
    """Fail-safe: balloond shrank the guest, then the guest stops (QMP `stop`: its stats
    freeze, like a hung guest). After stale_release_s balloond hands the memory back, says
    why, and takes memory again only once the guest reports again."""
    (guest,) = await boot(make_guest, ["blind"], memory_mib=512)
    config = make_config(tmp_path, [guest])
    config = config.model_copy(
        update={
            "policies": {
                # A short cooldown too: the reclaim after the guest runs again waits for it.
                "default": config.policies["default"].model_copy(
                    update={"stale_release_s": 5.0, "cooldown_s": 5.0}
                )
            }
        }
    )
    async with running(config) as daemon:
        ctrl = daemon.guests["blind"]
        assert await until(
            lambda: ctrl.target_bytes is not None and ctrl.target_bytes < 400 * MiB
        ), "never reclaimed"
        await guest.monitor("stop")
        try:
            assert await until(lambda: ctrl.target_bytes == 512 * MiB), "not handed back"
            status = ctrl.status()
            assert status["stats_stale_s"] is not None
            assert status["last_action"]["reason"] == "stats-lost"
            record = await _audited(tmp_path, "stats-lost")
            assert len(record) == 1
            assert "cannot see this guest run short" in record[0]["explanation"]
            # Still blind: nothing more is taken.
            polled = ctrl.polls
            assert await until(lambda: ctrl.polls >= polled + 3)
            assert ctrl.target_bytes == 512 * MiB
        finally:
            await guest.monitor("cont")
        # The guest runs again: the deflate it was asked for happens, stats flow, and
        # balloond reclaims again once its cooldown is over.
        assert await until(lambda: ctrl.status()["stats_stale_s"] is None)
        assert await until(
            lambda: ctrl.target_bytes is not None and ctrl.target_bytes < 512 * MiB
        ), "never reclaimed again"
    assert await guest.oom_kills() == 0
