"""A real libvirtd for tests, and lab guests it runs as TCG domains.

:class:`Libvirtd` starts Debian's libvirtd and virtlogd (no systemd needed) in a mount
namespace of their own, where /etc/libvirt, /run/libvirt, /var/lib/libvirt,
/var/log/libvirt and /var/cache/libvirt are directories of the test's: the test's daemon
shares nothing with a libvirtd the machine may run, and its qemu.conf runs QEMU as root
(``../shared/LAB.md``: otherwise every define re-probes KVM for about 40 s). Clients reach
it at :attr:`Libvirtd.uri` (``qemu:///system?socket=...``). Everything it starts is
stopped by its pid: domains first (libvirtd leaves QEMU running when it stops), then
libvirtd and virtlogd.

:class:`LibvirtGuest` is a :class:`~testkit.lab.guest.LabGuest` booted as a transient
libvirt domain (``virsh create``) from the lab's kernel and initramfs, with the same
serial console and kernel log, so tests drive it the same way (memhog, meminfo, OOM kills).
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
from xml.sax.saxutils import escape

from balloond.core.errors import LabError
from testkit.lab.console import SerialConsole
from testkit.lab.guest import GuestState, LabGuest
from testkit.lab.image import LabImage
from testkit.lab.qemu import NODRIVER_WORD

log = logging.getLogger("testkit.lab.libvirt")

#: The directories libvirtd writes to, bound to the test's own in its namespace.
_BOUND = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


async def _kill(pid: int, *, timeout_s: float = _STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; return once ``pid`` is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            await asyncio.sleep(0.05)
    raise LabError(f"pid {pid} survived SIGKILL")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class Libvirtd:
    """One libvirtd (with its virtlogd) of a test's own; see the module docstring."""

    def __init__(self, root: Path | None = None, *, cache: Path | None = None) -> None:
        # Socket paths must fit in 108 bytes: a short directory under /tmp.
        self.root = root or Path(tempfile.mkdtemp(prefix="blv-", dir="/tmp"))
        self.dirs = {key: self.root / key for key in _BOUND}
        if cache is not None:
            # libvirtd probes QEMU's capabilities at its first start (seconds under TCG)
            # and caches them here: daemons that share a cache start at once.
            self.dirs["cache"] = cache
        self.log_path = self.root / "libvirtd.log"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.dirs['run']}/libvirt-sock"

    @property
    def pid(self) -> int | None:
        return _read_pid(self.root / "libvirtd.pid")

    def _prepare(self) -> None:
        for directory in self.dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        etc = self.dirs["etc"]
        if not (etc / "qemu.conf").exists():
            shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True, symlinks=True)
            with (etc / "qemu.conf").open("a") as conf:
                conf.write('\nuser = "root"\ngroup = "root"\n')
            with (etc / "libvirtd.conf").open("a") as conf:
                conf.write(f'\nlog_outputs = "3:file:{self.log_path}"\n')
        for target in _BOUND.values():
            Path(target).mkdir(parents=True, exist_ok=True)  # mount points

    async def start(self, *, with_virtlogd: bool = True) -> None:
        """Start virtlogd (unless it runs) and libvirtd; return once libvirtd answers."""
        if os.geteuid() != 0:
            raise LabError("a test libvirtd needs root (mount namespaces, QEMU as root)")
        for tool in ("unshare", "/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "virsh"):
            if shutil.which(tool) is None:
                raise LabError(f"{tool} is missing (make system installs libvirt)")
        self._prepare()
        binds = " && ".join(
            f"mount --bind {self.dirs[key]} {target}" for key, target in _BOUND.items()
        )
        virtlogd_pid = _read_pid(self.root / "virtlogd.pid")
        start_logd = with_virtlogd and (virtlogd_pid is None or not _alive(virtlogd_pid))
        logd = f"/usr/sbin/virtlogd -d -p {self.root}/virtlogd.pid && " if start_logd else ""
        script = f"{binds} && {logd}exec /usr/sbin/libvirtd -d -p {self.root}/libvirtd.pid"
        proc = await asyncio.create_subprocess_exec(
            "unshare", "--mount", "--propagation", "private", "sh", "-c", script,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise LabError(f"libvirtd did not start: {out.decode(errors='replace').strip()}")
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                await self.virsh("version", timeout_s=5.0)
                return
            except LabError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)

    async def stop_daemon(self) -> None:
        """Stop libvirtd alone (as a restart would); its domains keep running."""
        pid = self.pid
        if pid is not None and _alive(pid):
            await _kill(pid)
        (self.root / "libvirtd.pid").unlink(missing_ok=True)

    async def restart(self) -> None:
        """libvirtd stopped and started again, domains running on (a package upgrade)."""
        await self.stop_daemon()
        await self.start()

    def domain_pids(self) -> dict[str, int]:
        """Running domains' QEMU pids, by domain name."""
        pids = {}
        for path in (self.dirs["run"] / "qemu").glob("*.pid"):
            if path.stem == "driver":
                continue  # libvirtd's own
            pid = _read_pid(path)
            if pid is not None and _alive(pid):
                pids[path.stem] = pid
        return pids

    async def stop(self) -> None:
        """Stop every domain's QEMU, libvirtd and virtlogd, by pid; remove the files."""
        for pid in self.domain_pids().values():
            await _kill(pid)
        await self.stop_daemon()
        logd = _read_pid(self.root / "virtlogd.pid")
        if logd is not None and _alive(logd):
            await _kill(logd)
        shutil.rmtree(self.root, ignore_errors=True)

    async def virsh(self, *args: str, timeout_s: float = 60.0) -> str:
        """Run ``virsh -c URI ARGS``; its stdout, or LabError with its stderr."""
        proc = await asyncio.create_subprocess_exec(
            "virsh", "-q", "-c", self.uri, *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout_s):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise LabError(f"virsh {' '.join(args)}: no answer in {timeout_s:g} s") from None
        if proc.returncode != 0:
            raise LabError(f"virsh {' '.join(args)}: {err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")


def domain_xml(
    *,
    name: str,
    memory_mib: int,
    kernel: Path,
    initrd: Path,
    console_socket: Path,
    kernel_log: Path,
    balloon: bool = True,
    driver: bool = True,
    metadata: str = "",
) -> str:
    """A TCG domain booting the lab's kernel, its shell on a unix-socket serial port."""
    append = "console=ttyS1 quiet panic=-1" + ("" if driver else f" {NODRIVER_WORD}")
    memballoon = (
        "<memballoon model='virtio'><stats period='1'/></memballoon>"
        if balloon
        else "<memballoon model='none'/>"
    )
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <metadata>{metadata}</metadata>
  <memory unit='MiB'>{memory_mib}</memory>
  <currentMemory unit='MiB'>{memory_mib}</currentMemory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(kernel))}</kernel><initrd>{escape(str(initrd))}</initrd>
    <cmdline>{escape(append)}</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <serial type='unix'><source mode='bind' path='{escape(str(console_socket))}'/>
      <target port='0'/></serial>
    <serial type='file'><source path='{escape(str(kernel_log))}'/><target port='1'/></serial>
    {memballoon}
  </devices>
</domain>
"""


class LibvirtGuest(LabGuest):
    """A lab guest run by a :class:`Libvirtd` as a transient domain of the same name.

    ``metadata``: XML put in the domain's ``<metadata>`` (balloond's settings).
    """

    def __init__(
        self,
        image: LabImage,
        *,
        libvirtd: Libvirtd,
        workdir: Path,
        name: str,
        memory_mib: int = 512,
        balloon: bool = True,
        driver: bool = True,
        metadata: str = "",
    ) -> None:
        super().__init__(
            image, workdir=workdir, name=name, memory_mib=memory_mib, balloon=balloon,
            driver=driver, accel="tcg",
        )  # fmt: skip
        self.libvirtd = libvirtd
        self.metadata = metadata
        self._domain_pid: int | None = None

    def __repr__(self) -> str:
        return f"<LibvirtGuest {self.name} {self.state.value}>"

    @property
    def pid(self) -> int:
        if self._domain_pid is None:
            raise LabError(f"{self.name}: not started")
        return self._domain_pid

    @property
    def running(self) -> bool:
        return self._domain_pid is not None and _alive(self._domain_pid)

    async def start(self, *, timeout_s: float = 60.0) -> None:
        """Create the domain; return once its console is connected."""
        if self.running:
            raise LabError(f"{self.name}: the domain is already running (pid {self.pid})")
        if self._socket_dir is None or not self._socket_dir.is_dir():
            self._socket_dir = Path(tempfile.mkdtemp(prefix="blg-", dir="/tmp"))
        # libvirt chowns a domain's kernel and initrd: each domain gets its own copies.
        kernel = shutil.copy(self.image.kernel, self._socket_dir / "kernel")
        initrd = shutil.copy(self.image.initrd, self._socket_dir / "initrd")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kernel_log.unlink(missing_ok=True)
        xml_path = self.workdir / f"{self.name}.xml"
        xml_path.write_text(
            domain_xml(
                name=self.name,
                memory_mib=self.memory_mib,
                kernel=Path(kernel),
                initrd=Path(initrd),
                console_socket=self.console_socket,
                kernel_log=self.kernel_log,
                balloon=self.balloon,
                driver=self.driver,
                metadata=self.metadata,
            )
        )
        self._set_state(GuestState.STARTING)
        try:
            await self.libvirtd.virsh("create", str(xml_path))
            self._domain_pid = self.libvirtd.domain_pids().get(self.name)
            if self._domain_pid is None:
                raise LabError(f"{self.name}: created, but no QEMU pid")
            deadline = time.monotonic() + timeout_s
            console = SerialConsole(name=self.name, log_path=self.console_log)
            while True:
                if not self.running:
                    raise LabError(f"{self.name}: the domain's QEMU exited at start")
                if self.console_socket.exists():
                    with contextlib.suppress(LabError):
                        await console.connect(self.console_socket)
                        self._console = console
                        break
                if time.monotonic() >= deadline:
                    raise LabError(f"{self.name}: console not up in {timeout_s:g} s")
                await asyncio.sleep(0.05)
        except BaseException:
            await self.stop()
            raise
        self._set_state(GuestState.RUNNING)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Destroy the domain (by pid if libvirt does not), remove its files."""
        if self._console is not None:
            await self._console.close()
            self._console = None
        if self.running:
            with contextlib.suppress(LabError):
                await self.libvirtd.virsh("destroy", self.name, timeout_s=timeout_s)
            if self._domain_pid is not None and _alive(self._domain_pid):
                await _kill(self._domain_pid)
        self._domain_pid = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self.state is not GuestState.NEW:
            self._set_state(GuestState.STOPPED)
