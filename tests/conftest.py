"""Fixtures for tests that boot lab guests, and leak checks every test runs under.

* ``lab_image``: the guest image, built (or found in the cache) once per session.
* ``make_guest``: a factory that boots guests in the test's tmp dir and always stops them.
* ``lab_guest``: one booted 512 MiB guest with a balloon device and the driver loaded.
* ``broker``: a real Mosquitto on a free port (tests/mqtt_helpers.py), stopped at the end.
* ``daemons``: ``balloond run`` subprocesses a test starts, killed at the end;
  ``short_dir``: a short directory for unix sockets.

A test fails if it leaves a QEMU child process running or an asyncio task unfinished:
leaks make later tests flaky and slow, so they are caught where they happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Balloond
from mqtt_helpers import Broker

from testkit.lab import LabGuest, LabImage, build_image

GuestFactory = Callable[..., Awaitable[LabGuest]]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("balloond")
    group.addoption(
        "--soak-minutes", type=float, default=10.0, help="how long the soak runs (make soak)"
    )
    group.addoption("--soak-seed", type=int, default=1, help="the soak's fault schedule seed")


@pytest.fixture(scope="session")
def lab_image() -> LabImage:
    """The lab's guest image; `make image` builds it ahead, otherwise the first use does."""
    return build_image()


@pytest.fixture
async def make_guest(lab_image: LabImage, tmp_path: Path) -> AsyncIterator[GuestFactory]:
    """``await make_guest("g1", memory_mib=1024, driver=False, boot=True)`` -> LabGuest.

    Keyword options go to LabGuest. With ``boot=False`` it returns once QEMU is up and its
    QMP socket exists, without waiting for the guest to boot. Logs land in tmp_path.
    """
    guests: list[LabGuest] = []

    async def make(name: str | None = None, *, boot: bool = True, **options: Any) -> LabGuest:
        guest = LabGuest(lab_image, workdir=tmp_path, name=name or f"g{len(guests) + 1}", **options)
        guests.append(guest)
        await guest.start()
        if boot:
            await guest.wait_booted()
        return guest

    try:
        yield make
    finally:
        for guest in reversed(guests):
            await guest.stop()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (make system)")
    b = Broker(tmp_path)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
async def daemons(tmp_path: Path) -> AsyncIterator[list[Balloond]]:
    """Every Balloond a test starts goes in here and is killed at the end, whatever happened."""
    started: list[Balloond] = []
    try:
        yield started
    finally:
        for d in started:
            await d.kill()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A runtime dir with a short path: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="bd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def lab_guest(make_guest: GuestFactory) -> LabGuest:
    """One booted guest: 512 MiB, balloon device ``balloon0``, virtio_balloon loaded."""
    return await make_guest("guest")


# --- leak checks -----------------------------------------------------------------------


def _qemu_children() -> dict[int, str]:
    """Running (not zombie) qemu-system processes whose parent is this process."""
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # exited while we looked
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if comm.startswith("qemu-system") and int(ppid) == me and state != "Z":
            with contextlib.suppress(OSError):
                comm = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            found[int(entry.name)] = comm
    return found


@pytest.fixture(autouse=True)
def _no_leftover_qemu() -> Iterator[None]:
    """Fail the test if it leaves a QEMU child running (after killing it)."""
    yield
    leftovers = _qemu_children()
    if leftovers:
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        listing = "\n".join(f"  pid {pid}: {cmd[:200]}" for pid, cmd in leftovers.items())
        pytest.fail(f"the test left QEMU processes running (now killed):\n{listing}")


@pytest.fixture(autouse=True)
async def _no_leftover_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks unfinished (after cancelling them).

    It runs in the test's event loop (for a sync test, an idle one: a cheap no-op).
    """
    yield
    me = asyncio.current_task()
    for _ in range(3):  # tasks cancelled during teardown need a few loop turns to finish
        await asyncio.sleep(0)
    leftovers = [task for task in asyncio.all_tasks() if task is not me and not task.done()]
    if leftovers:
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        names = ", ".join(sorted(task.get_name() for task in leftovers))
        pytest.fail(f"the test left asyncio tasks running (now cancelled): {names}")
