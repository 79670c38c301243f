"""The lab itself: guests boot, the driver is (or is not) there, memhog and OOM kills work.

Later tests build on these behaviours, the balloon-squeeze OOM kill above all: it is the
failure balloond exists to prevent, so the lab must be able to produce it on demand.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from balloond.core.units import MiB
from testkit.lab import LabGuest, LabImage
from testkit.lab.qemu import QemuConfig, qemu_argv

GuestFactory = Callable[..., Awaitable[LabGuest]]  # the make_guest fixture


@asynccontextmanager
async def qmp(socket: Path) -> AsyncIterator[QMPClient]:
    client = QMPClient("test-lab")
    await asyncio.wait_for(client.connect(str(socket)), timeout=10)
    try:
        yield client
    finally:
        await client.disconnect()


async def execute(client: QMPClient, command: str, arguments: dict[str, Any] | None = None) -> Any:
    return await asyncio.wait_for(client.execute(command, arguments), timeout=10)


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_qemu_command_line() -> None:
    config = QemuConfig(
        name="g",
        kernel=Path("k"),
        initrd=Path("i"),
        accel="tcg",
        memory_mib=384,
        qmp_socket=Path("q.sock"),
        console_socket=Path("c.sock"),
        kernel_log=Path("k.log"),
        balloon_id=None,
        deflate_on_oom=True,
        free_page_reporting=True,
        driver=False,
    )
    argv = qemu_argv(config)
    assert argv[argv.index("-device") + 1] == (
        "virtio-balloon-pci,deflate-on-oom=on,free-page-reporting=on"
    )
    assert "balloond.nodriver=1" in argv[argv.index("-append") + 1]
    assert argv[argv.index("-m") + 1] == "384"
    assert "-cpu" not in argv


@pytest.mark.lab
async def test_guest_boots_with_the_balloon_driver(lab_guest: LabGuest) -> None:
    assert await lab_guest.run("echo hi") == "hi\n"
    # Commands reach the shell byte for byte, past busybox's line editor and its limits.
    assert await lab_guest.run("echo 'a\tb'") == "a\tb\n"
    assert await lab_guest.run("echo " + "x" * 3000 + " | wc -c") == "3001\n"
    mem_total = (await lab_guest.meminfo())["MemTotal"]
    assert 400 * MiB < mem_total <= 512 * MiB
    assert "virtio_balloon" in await lab_guest.run("lsmod")
    assert await lab_guest.run("ls /sys/bus/virtio/drivers/virtio_balloon/", check=True)
    assert await lab_guest.oom_kills() == 0

    hog = await lab_guest.start_memhog(mib=64, rate_mib_s=200)
    assert await hog.wait_allocated(timeout_s=60)
    assert await hog.stop() == 0
    assert await lab_guest.oom_kills() == 0


@pytest.mark.lab
async def test_guest_without_the_driver(lab_image: LabImage, tmp_path: Path) -> None:
    async with LabGuest(
        lab_image, workdir=tmp_path, name="nodriver", balloon_id=None, driver=False
    ) as guest:
        devices = await guest.run("cat /sys/bus/virtio/devices/*/device")
        assert "0x0005" in devices.split()  # the balloon device is there ...
        assert "virtio_balloon" not in await guest.run("lsmod")  # ... but not its driver
        result = await guest.execute("ls /sys/bus/virtio/drivers/virtio_balloon")
        assert result.status != 0
        pid = guest.pid
    assert not process_exists(pid)


@pytest.mark.lab
async def test_squeezed_guest_oom_kills_memhog(lab_guest: LabGuest) -> None:
    async with qmp(lab_guest.qmp_socket) as client:
        await execute(client, "balloon", {"value": 256 * MiB})
        deadline = time.monotonic() + 30
        while (await execute(client, "query-balloon"))["actual"] > 256 * MiB:
            assert time.monotonic() < deadline, "the balloon did not inflate"
            await asyncio.sleep(0.2)

    hog = await lab_guest.start_memhog(mib=320, rate_mib_s=100)
    assert not await hog.wait_allocated(timeout_s=60)
    assert await lab_guest.oom_kills() == 1
    assert await hog.stop() == 128 + signal.SIGKILL
    assert "Out of memory: Killed process" in await lab_guest.dmesg()


@pytest.mark.lab
async def test_restart_on_the_same_socket_then_stop_leaves_nothing(
    make_guest: GuestFactory,
) -> None:
    guest = await make_guest("crashy", boot=False)
    socket, first_pid = guest.qmp_socket, guest.pid
    guest.kill(signal.SIGKILL)
    assert await guest.wait_exited() == -signal.SIGKILL

    await guest.start()
    assert guest.qmp_socket == socket
    assert guest.pid != first_pid
    async with qmp(socket) as client:
        assert (await execute(client, "query-status"))["status"] == "running"
    await guest.wait_booted()
    assert await guest.run("echo back") == "back\n"

    second_pid = guest.pid
    await guest.stop()
    await guest.stop()  # idempotent
    for pid in (first_pid, second_pid):
        assert not process_exists(pid)
    assert not socket.exists()
