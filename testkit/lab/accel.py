"""Choosing KVM or TCG for lab guests: KVM only where a guest really boots under it.

``/dev/kvm`` existing proves little: on the nested-virtualisation hosts the project builds
on, a stock Debian kernel hangs early in boot under KVM. So KVM is used only after a probe
guest reached its init within a timeout; otherwise TCG, which always works (a guest boots
in about 4 s). The verdict is cached per image and per host boot (the kernel's random
boot_id), so the probe runs once after each reboot. ``BALLOOND_LAB_ACCEL=kvm|tcg`` forces
a choice and skips the probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from balloond.core.errors import LabError
from testkit.lab.cache import host_boot_id
from testkit.lab.image import LabImage
from testkit.lab.qemu import ACCELS, QemuConfig, forget, qemu_argv, spawn_qemu

ACCEL_ENV = "BALLOOND_LAB_ACCEL"
#: A guest that boots under KVM reaches init in one or two seconds; TCG needs about 4 s.
PROBE_TIMEOUT_S = 10.0
#: What init.sh prints on the kernel console just before it starts the shell.
INIT_READY_LINE = b"lab-init: shell on ttyS0"

_log = logging.getLogger("testkit.lab.accel")
_chosen: dict[Path, str] = {}  # image root -> accelerator, for this process


async def choose_accel(image: LabImage, *, probe_timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """``"kvm"`` or ``"tcg"`` for guests of ``image`` on this host."""
    forced = os.environ.get(ACCEL_ENV, "").strip().lower()
    if forced:
        if forced not in ACCELS:
            raise LabError(f"{ACCEL_ENV}={forced!r}: use one of {', '.join(ACCELS)}")
        return forced
    if image.root in _chosen:
        return _chosen[image.root]
    verdict_file = image.root / f"accel-{host_boot_id()}"
    try:
        accel = verdict_file.read_text(encoding="ascii").strip()
    except OSError:
        accel = ""
    if accel not in ACCELS:
        accel = "tcg"
        if _kvm_usable():
            if await probe_kvm(image, timeout_s=probe_timeout_s):
                accel = "kvm"
            else:
                _log.info("a guest did not boot under KVM in %.0f s: using TCG", probe_timeout_s)
        _write_atomically(verdict_file, accel)
    _chosen[image.root] = accel
    return accel


async def probe_kvm(image: LabImage, *, timeout_s: float) -> bool:
    """Whether a small guest of ``image`` reaches its init under KVM within ``timeout_s``."""
    scratch = Path(tempfile.mkdtemp(prefix="bl-probe-", dir="/tmp"))
    kernel_log = scratch / "kernel.log"
    config = QemuConfig(
        name="kvm-probe",
        kernel=image.kernel,
        initrd=image.initrd,
        accel="kvm",
        memory_mib=128,
        qmp_socket=scratch / "qmp.sock",
        console_socket=scratch / "con.sock",
        kernel_log=kernel_log,
        balloon=False,
    )
    process = await spawn_qemu(qemu_argv(config), log=scratch / "qemu.log")
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.returncode is None:
            with contextlib.suppress(OSError):
                if INIT_READY_LINE in kernel_log.read_bytes():
                    return True
            await asyncio.sleep(0.1)
        return False
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
        forget(process)
        shutil.rmtree(scratch, ignore_errors=True)


def _kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _write_atomically(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(f"{text}\n", encoding="ascii")
    scratch.replace(path)
