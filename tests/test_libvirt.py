"""libvirt-managed guests: a real libvirtd (started here, without systemd) running real TCG
domains booted from the lab's kernel, managed by a real ``balloond run``.

The control loop's acceptance, as for QEMU guests: idle reclaim to the floor (here the
floor a domain's own metadata sets), an OOM kill prevented under a memhog surge that kills
an unmanaged domain, dry-run leaving sizes alone, domains without a driver or a balloon
flagged, and libvirtd restarted mid-run with intents and holds kept. ``balloonctl status``
shows libvirt, shared-socket and own-socket guests side by side.

balloond runs as its own process: libvirt binds its event loop to the first asyncio loop
of a process for good, and each test here has a loop of its own.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import (
    CTL_WAIT_S,
    Balloond,
    balloonctl,
    status_json,
    wait_serving,
    wait_until,
)

from balloond.core.units import KiB, MiB
from testkit.lab import LabGuest, LabImage
from testkit.lab.libvirt import Libvirtd, LibvirtGuest

pytestmark = [pytest.mark.lab, pytest.mark.libvirt]

GuestFactory = Callable[..., Awaitable[LabGuest]]
DomainFactory = Callable[..., Awaitable[LibvirtGuest]]
METADATA = (
    '<balloond:guest xmlns:balloond="https://balloond.org/xmlns/libvirt/1">'
    "<balloond:policy>meta</balloond:policy><balloond:min>300MiB</balloond:min>"
    "</balloond:guest>"
)


@pytest.fixture(scope="session")
def libvirt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libvirtd's capability cache, shared by the tests' daemons (probing takes seconds)."""
    return tmp_path_factory.mktemp("libvirt-cache")


@pytest.fixture
async def libvirtd(libvirt_cache: Path) -> AsyncIterator[Libvirtd]:
    daemon = Libvirtd(cache=libvirt_cache)
    try:
        await daemon.start()
        yield daemon
    finally:
        await daemon.stop()


@pytest.fixture
async def make_domain(
    lab_image: LabImage, libvirtd: Libvirtd, tmp_path: Path
) -> AsyncIterator[DomainFactory]:
    domains: list[LibvirtGuest] = []

    async def make(name: str, *, boot: bool = True, **options: Any) -> LibvirtGuest:
        guest = LibvirtGuest(lab_image, libvirtd=libvirtd, workdir=tmp_path, name=name, **options)
        domains.append(guest)
        await guest.start()
        if boot:
            await guest.wait_booted(120)
        return guest

    try:
        yield make
    finally:
        for guest in reversed(domains):
            await guest.stop()


def _config(
    tmp_path: Path,
    run: Path,
    libvirtd: Libvirtd,
    *,
    domains: str = '["*"]',
    extra: str = "",
    dry_run: bool = False,
) -> Path:
    path = tmp_path / "balloond.toml"
    path.write_text(
        f"""
[daemon]
poll_interval_s = 1.0
state_dir = "{tmp_path / "state"}"
runtime_dir = "{run}"
log_format = "text"
dry_run = {str(dry_run).lower()}

[metrics]
enabled = false

[libvirt]
uris = ["{libvirtd.uri}"]
domains = {domains}

{extra}

[policies.meta]
reclaim = "idle"
"""
    )
    return path


async def dommem_actual(libvirtd: Libvirtd, name: str) -> int:
    """The domain's balloon size (``actual``) in bytes, as libvirt reports it."""
    out = await libvirtd.virsh("dommemstat", name)
    match = re.search(r"^actual (\d+)$", out, re.MULTILINE)
    assert match, out
    return int(match.group(1)) * KiB


async def start_daemon(
    tmp_path: Path, config: Path, daemons: list[Balloond], sock: Path, guest: str
) -> Balloond:
    daemon = Balloond(workdir=tmp_path, config=config)
    daemons.append(daemon)
    await daemon.start()
    await wait_serving(sock, daemon, guest)
    return daemon


async def test_libvirt_domains_beside_qmp_guests(  # noqa: PLR0917 (fixtures)
    make_domain: DomainFactory,
    make_guest: GuestFactory,
    libvirtd: Libvirtd,
    tmp_path: Path,
    short_dir: Path,
    daemons: list[Balloond],
) -> None:
    await asyncio.gather(
        make_domain("lv-idle", metadata=METADATA),
        make_domain("lv-nodrv", driver=False),
        make_domain("lv-nodev", balloon=False),
    )
    own, shared = await asyncio.gather(make_guest("own"), make_guest("shared"))
    sock = short_dir / "run" / "control.sock"
    extra = f"""
[[guests]]
name = "own"
qmp = "{own.qmp_socket}"

[[guests]]
name = "shared"
qmp = "{shared.qmp_socket}"
shared = true
"""
    config = _config(tmp_path, short_dir / "run", libvirtd, extra=extra)
    daemon = await start_daemon(tmp_path, config, daemons, sock, "lv-idle")

    async def settled() -> bool:
        guests = {g["name"]: g for g in (await status_json(sock))["guests"]}
        return (
            guests["lv-idle"]["actual_bytes"] == 300 * MiB
            and guests["lv-nodrv"]["state"] == "no-driver"
            and guests["lv-nodev"]["state"] == "no-device"
            and guests["own"]["state"] == "active"
            and guests["shared"]["state"] == "active"
        )

    await wait_until("lv-idle at its metadata floor, the others flagged", settled, daemon)
    idle = await status_json(sock, "lv-idle")
    assert idle["policy"] == "meta"
    assert idle["way"] == "libvirt"
    assert await dommem_actual(libvirtd, "lv-idle") == 300 * MiB
    rc, out, err = await balloonctl(sock, "status")
    assert rc == 0, err
    via = {
        line.split()[0]: line.split()[2]
        for line in out.splitlines()
        if line.split() and line.split()[0] in ("lv-idle", "lv-nodrv", "lv-nodev", "own", "shared")
    }
    assert via == {
        "lv-idle": "libvirt",
        "lv-nodrv": "libvirt",
        "lv-nodev": "libvirt",
        "own": "qmp",
        "shared": "qmp-shared",
    }, out
    # The domains without a driver or a balloon were left alone.
    assert await dommem_actual(libvirtd, "lv-nodrv") == 512 * MiB
    # A domain started while balloond runs joins (through libvirt's lifecycle event) ...
    await make_domain("lv-late", boot=False)

    async def joined() -> bool:
        return "lv-late" in {g["name"] for g in (await status_json(sock))["guests"]}

    await wait_until("lv-late to join once started", joined, daemon)
    # ... and one that stops leaves the list.
    await libvirtd.virsh("destroy", "lv-nodev")

    async def gone() -> bool:
        return "lv-nodev" not in {g["name"] for g in (await status_json(sock))["guests"]}

    await wait_until("lv-nodev to leave the list once stopped", gone, daemon)


async def test_libvirt_surge_is_answered_and_kills_without_balloond(
    make_domain: DomainFactory,
    libvirtd: Libvirtd,
    tmp_path: Path,
    short_dir: Path,
    daemons: list[Balloond],
) -> None:
    """Ballooned to 256 MiB, memhog 320 MiB at 100 MiB/s: the managed domain completes,
    the same domain without balloond gets an OOM kill."""
    managed, alone = await asyncio.gather(make_domain("lv-m"), make_domain("lv-alone"))
    for name in ("lv-m", "lv-alone"):
        await libvirtd.virsh("setmem", name, "256M", "--live")
    for name in ("lv-m", "lv-alone"):

        async def shrunk(name: str = name) -> bool:
            return abs(await dommem_actual(libvirtd, name) - 256 * MiB) <= MiB

        await wait_until(f"{name} at 256 MiB", shrunk)
    sock = short_dir / "run" / "control.sock"
    config = _config(tmp_path, short_dir / "run", libvirtd, domains='["lv-m"]')
    daemon = await start_daemon(tmp_path, config, daemons, sock, "lv-m")
    assert [g["name"] for g in (await status_json(sock))["guests"]] == ["lv-m"]
    await asyncio.sleep(3)  # a few polls at 256 MiB before the load
    # One surge at a time: a second TCG guest busy with its own memhog would take CPU from
    # this guest's balloon driver as it deflates.
    hog = await managed.start_memhog(mib=320, rate_mib_s=100)
    assert await hog.wait_allocated(timeout_s=CTL_WAIT_S * 2), (
        f"memhog was killed with balloond running; its log:\n{daemon.log()[-3000:]}"
    )
    await hog.stop()
    assert await managed.oom_kills() == 0
    unmanaged = await alone.start_memhog(mib=320, rate_mib_s=100)
    assert not await unmanaged.wait_allocated(timeout_s=CTL_WAIT_S * 2), "no OOM kill without"
    assert await alone.oom_kills() >= 1
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "state" / "audit.jsonl").open()]
    assert any(r in ("pressure", "oom-risk") for r in reasons), reasons


async def test_libvirt_dry_run_changes_nothing(
    make_domain: DomainFactory,
    libvirtd: Libvirtd,
    tmp_path: Path,
    short_dir: Path,
    daemons: list[Balloond],
) -> None:
    await make_domain("lv-dry")
    sock = short_dir / "run" / "control.sock"
    config = _config(tmp_path, short_dir / "run", libvirtd, dry_run=True)
    daemon = await start_daemon(tmp_path, config, daemons, sock, "lv-dry")
    audit = tmp_path / "state" / "audit.jsonl"

    async def would_reclaim() -> bool:
        return audit.exists() and any(json.loads(line)["dry_run"] for line in audit.open())

    await wait_until("a dry-run decision in the audit log", would_reclaim, daemon)
    records = [json.loads(line) for line in audit.open()]
    assert all(r["dry_run"] for r in records)
    assert records[0]["new_bytes"] < 512 * MiB
    assert await dommem_actual(libvirtd, "lv-dry") == 512 * MiB


async def test_libvirtd_restarted_mid_run_keeps_guests_and_holds(
    make_domain: DomainFactory,
    libvirtd: Libvirtd,
    tmp_path: Path,
    short_dir: Path,
    daemons: list[Balloond],
) -> None:
    await make_domain("lv-r")
    sock = short_dir / "run" / "control.sock"
    config = _config(tmp_path, short_dir / "run", libvirtd)
    daemon = await start_daemon(tmp_path, config, daemons, sock, "lv-r")
    rc, _, err = await balloonctl(sock, "set", "lv-r", "300MiB", "--for", "1h")
    assert rc == 0, err

    async def at(size: int) -> bool:
        return abs(await dommem_actual(libvirtd, "lv-r") - size) <= MiB

    await wait_until("lv-r held at 300 MiB", lambda: at(300 * MiB), daemon)
    held = await status_json(sock, "lv-r")
    old_pid = libvirtd.pid

    await libvirtd.restart()
    assert libvirtd.pid != old_pid
    assert "lv-r" in libvirtd.domain_pids(), "the domain runs on through the restart"

    async def reconnected() -> bool:
        return "connection to libvirt lost" in daemon.log() and (
            (await status_json(sock, "lv-r"))["state"] == "active"
        )

    await wait_until("balloond to find lv-r again", reconnected, daemon)
    after = await status_json(sock, "lv-r")
    assert after["mode"] == "manual"
    assert after["manual_target_bytes"] == 300 * MiB
    assert after["hold_until"] == pytest.approx(held["hold_until"])
    assert await dommem_actual(libvirtd, "lv-r") == pytest.approx(300 * MiB, abs=MiB)
    # ... and balloond moves the balloon through the new connection.
    rc, _, err = await balloonctl(sock, "set", "lv-r", "350MiB", "--for", "1h")
    assert rc == 0, err
    await wait_until("lv-r at 350 MiB after the restart", lambda: at(350 * MiB), daemon)
