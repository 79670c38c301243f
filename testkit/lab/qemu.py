"""Starting a lab guest's QEMU: its command line, and making sure the process never outlives us.

Every QEMU the lab starts is recorded in a registry until it has been reaped. Three layers
keep a failed or interrupted test run from leaving guests behind: ``LabGuest.stop()``
(normal path), an ``atexit`` hook that kills whatever is still registered (an exception
escaped, the event loop was torn down), and ``PR_SET_PDEATHSIG`` in the child, so the
kernel kills QEMU even when the test runner itself is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from balloond.core.errors import LabError

QEMU_BINARY = "qemu-system-x86_64"
#: Word on the guest kernel command line that makes init skip virtio_balloon.
NODRIVER_WORD = "balloond.nodriver=1"
ACCELS = ("kvm", "tcg")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True)

# Every QEMU started here and not yet known to be reaped, by pid.
_LIVE: dict[int, asyncio.subprocess.Process] = {}


@dataclass(frozen=True, slots=True)
class QemuConfig:
    """Everything that decides a lab guest's QEMU command line."""

    name: str
    kernel: Path
    initrd: Path
    accel: str
    memory_mib: int
    qmp_socket: Path
    console_socket: Path
    kernel_log: Path
    #: A second QMP monitor, for a test or operator while balloond holds the first one
    #: (QEMU serves one client per monitor).
    admin_socket: Path | None = None
    balloon: bool = True
    balloon_id: str | None = "balloon0"
    deflate_on_oom: bool = False
    free_page_reporting: bool = False
    driver: bool = True
    #: A raw disk image, attached read-only as a virtio-blk disk (the guest's /dev/vda).
    disk: Path | None = None


def qemu_argv(config: QemuConfig) -> list[str]:
    """The QEMU command line for ``config``.

    The first serial port (ttyS0) is the guest's shell, on a unix socket the lab connects
    to. The kernel logs to the second (ttyS1), which QEMU writes to ``kernel_log``: kernel
    messages such as an OOM report would otherwise interleave with command output.
    Never ``-cpu host``: under the nested KVM of the build machines it aborts QEMU.
    """
    if config.accel not in ACCELS:
        raise LabError(f"unknown accelerator {config.accel!r} (use one of {', '.join(ACCELS)})")
    append = "console=ttyS1 quiet panic=-1"
    if not config.driver:
        append += f" {NODRIVER_WORD}"
    argv = [
        QEMU_BINARY,
        "-name", config.name,
        "-accel", config.accel,
        "-m", str(config.memory_mib),
        "-smp", "1",
        "-nodefaults",
        "-no-reboot",
        "-display", "none",
        "-kernel", str(config.kernel),
        "-initrd", str(config.initrd),
        "-append", append,
        "-chardev", f"socket,id=con,path={config.console_socket},server=on,wait=off",
        "-serial", "chardev:con",
        "-chardev", f"file,id=klog,path={config.kernel_log}",
        "-serial", "chardev:klog",
        "-qmp", f"unix:{config.qmp_socket},server=on,wait=off",
        "-monitor", "none",
    ]  # fmt: skip
    if config.admin_socket is not None:
        argv += ["-qmp", f"unix:{config.admin_socket},server=on,wait=off"]
    if config.disk is not None:
        argv += [
            "-drive", f"file={config.disk},format=raw,if=none,id=disk0,readonly=on",
            "-device", "virtio-blk-pci,drive=disk0,id=vda",
        ]  # fmt: skip
    if config.balloon:
        device = "virtio-balloon-pci"
        if config.balloon_id is not None:
            device += f",id={config.balloon_id}"
        if config.deflate_on_oom:
            device += ",deflate-on-oom=on"
        if config.free_page_reporting:
            device += ",free-page-reporting=on"
        argv += ["-device", device]
    return argv


async def spawn_qemu(argv: list[str], *, log: Path) -> asyncio.subprocess.Process:
    """Start QEMU with stdout and stderr appended to ``log``; it dies with this process."""
    try:
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(os.getpid()),
            )
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} is not installed (Debian: qemu-system-x86)") from exc
    _LIVE[process.pid] = process
    return process


def forget(process: asyncio.subprocess.Process) -> None:
    """Drop a reaped process from the registry."""
    if process.returncode is not None:
        _LIVE.pop(process.pid, None)


def live_pids() -> frozenset[int]:
    """QEMU processes this Python process started and has not yet reaped."""
    return frozenset(_LIVE)


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: ask the kernel to SIGKILL the child when its parent goes away.

    It makes two system calls and takes no locks and imports nothing, which keeps a
    preexec_fn safe although the event loop's child watcher runs threads.
    """

    def arm() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


@atexit.register
def _kill_leftovers() -> None:
    """Last resort at interpreter exit: SIGKILL and reap every QEMU still registered.

    A pid is only signalled while it is still our child: once reaped, the number may
    belong to an unrelated process.
    """
    for pid, process in sorted(_LIVE.items()):
        if process.returncode is None and _is_our_child(pid):
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    _LIVE.clear()


def _is_our_child(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return int(stat[stat.rindex(")") + 2 :].split()[1]) == os.getpid()
