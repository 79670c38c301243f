"""QMP on a shared socket, and the Proxmox VE source, on real lab guests.

balloond holds a shared socket only for each cycle's calls, so another client (Proxmox's
pvestatd polls each VM's QMP socket about once a second) must get every answer while
balloond manages the guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from daemon_helpers import running, until

from balloond.adapters.qmp import QmpLink
from balloond.core.errors import LinkError
from balloond.core.link import LinkState
from balloond.core.units import MiB
from balloond.runtime.config import parse_config
from testkit.lab import LabGuest

pytestmark = pytest.mark.lab

GuestFactory = Callable[..., Awaitable[LabGuest]]
#: The other client's limit on connect + one command: Proxmox's own QMP client gives a
#: query a few seconds; a wait this long would mean balloond held the socket.
OTHER_CLIENT_TIMEOUT_S = 5.0


class OtherClient:
    """Connects to a QMP socket once a second, asks query-balloon, disconnects."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.answers = 0
        self.failures: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"other-client {self.socket}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            link = QmpLink("other-client", self.socket)
            try:
                async with asyncio.timeout(OTHER_CLIENT_TIMEOUT_S):
                    await link.connect(timeout_s=OTHER_CLIENT_TIMEOUT_S)
                    reply = await link.execute("query-balloon", timeout_s=OTHER_CLIENT_TIMEOUT_S)
                if not isinstance(reply, dict) or not reply.get("actual"):
                    raise ValueError(f"odd query-balloon reply {reply!r}")
                self.answers += 1
            except (TimeoutError, LinkError, ValueError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                await link.close()
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


async def test_another_client_gets_every_answer_while_balloond_manages_the_guest(
    make_guest: GuestFactory, tmp_path: Path
) -> None:
    guest = await make_guest("shared", memory_mib=512)
    config = parse_config(
        {
            "daemon": {
                "poll_interval_s": 1.0,
                "state_dir": str(tmp_path / "state"),
                "runtime_dir": str(tmp_path / "run"),
            },
            "guests": [{"name": "shared", "qmp": str(guest.qmp_socket), "shared": True}],
        }
    )
    other = OtherClient(guest.qmp_socket)
    other.start()
    try:
        async with running(config) as daemon:
            ctrl = daemon.guests["shared"]
            assert ctrl.link.way == "qmp-shared"

            def at_floor() -> bool:
                d = ctrl.last_decision
                return (
                    bool(ctrl.history)
                    and d is not None
                    and d.floor_bytes is not None
                    and ctrl.history[-1].actual_bytes <= d.floor_bytes + MiB
                )

            assert await until(at_floor), f"never reached its floor: {ctrl.status()}"
            # ... and keeps managing it while the other client polls on.
            polls = sum(ctrl.decisions.values())
            assert await until(
                lambda: other.answers >= 30 and sum(ctrl.decisions.values()) >= polls + 10
            )
            assert ctrl.link.state is LinkState.ACTIVE
            assert ctrl.history[-1].actual_bytes < 512 * MiB
    finally:
        await other.stop()
    assert other.failures == [], other.failures
    assert other.answers >= 30


async def test_the_proxmox_source_manages_its_vms_on_their_own_sockets(
    make_guest: GuestFactory, tmp_path: Path
) -> None:
    web, off = await asyncio.gather(
        make_guest("pve-web", memory_mib=512), make_guest("pve-off", memory_mib=512)
    )
    config_dir, run_dir = tmp_path / "pve" / "qemu-server", tmp_path / "run" / "qemu-server"
    config_dir.mkdir(parents=True)
    run_dir.mkdir(parents=True)
    (config_dir / "101.conf").write_text("name: web\nmemory: 512\nballoon: 400\nagent: 1\n")
    (config_dir / "102.conf").write_text("name: off\nmemory: 512\nballoon: 0\n")
    (run_dir / "101.qmp").symlink_to(web.qmp_socket)
    (run_dir / "102.qmp").symlink_to(off.qmp_socket)
    config = parse_config(
        {
            "daemon": {
                "poll_interval_s": 1.0,
                "state_dir": str(tmp_path / "state"),
                "runtime_dir": str(tmp_path / "rt"),
            },
            "proxmox": {
                "enabled": True,
                "config_dir": str(config_dir),
                "run_dir": str(run_dir),
            },
        }
    )
    other = OtherClient(run_dir / "101.qmp")  # as pvestatd would
    other.start()
    try:
        async with running(config) as daemon:
            assert set(daemon.guests) == {"web"}  # 102 has ballooning off
            ctrl = daemon.guests["web"]
            assert ctrl.status()["way"] == "qmp-shared"
            assert await until(
                lambda: bool(ctrl.history) and ctrl.history[-1].actual_bytes == 400 * MiB
            ), f"web did not come down to its balloon: minimum: {ctrl.status()}"
            assert ctrl.policy is not None
            assert (ctrl.policy.min_bytes, ctrl.policy.max_bytes) == (400 * MiB, 512 * MiB)
            decided = sum(ctrl.decisions.values())
            assert await until(lambda: sum(ctrl.decisions.values()) >= decided + 5)
            assert min(s.actual_bytes for s in ctrl.history) >= 400 * MiB - MiB
    finally:
        await other.stop()
    assert other.failures == [], other.failures
    # The VM with ballooning off was never touched.
    link = QmpLink("check", off.qmp_socket)
    await link.connect(timeout_s=10.0)
    try:
        assert await link.query_actual(timeout_s=10.0) == 512 * MiB
    finally:
        await link.close()
