"""A real QEMU guest for tests: boot it, run commands in it, squeeze its memory, kill it.

balloond's tests run against the real thing: QEMU with a virtio-balloon device and a Linux
guest running the real driver. A ``LabGuest`` owns one QEMU process, its QMP socket (for
the code under test) and its console (for the test to look inside the guest). Socket paths
live in a short directory under /tmp because a unix socket path must fit in 108 bytes and
pytest's tmp_path often does not; logs go to ``workdir``:

* ``NAME.console.log``: everything the guest's shell printed,
* ``NAME.kernel.log``: the guest kernel's console (boot messages, OOM reports),
* ``NAME.qemu.log``: QEMU's own stdout and stderr.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import enum
import logging
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from balloond.core.errors import LabError
from balloond.core.units import KiB
from testkit.lab.accel import INIT_READY_LINE, choose_accel
from testkit.lab.console import CommandResult, ConsoleTimeoutError, SerialConsole, shorten
from testkit.lab.image import LabImage
from testkit.lab.memhog import Memhog, memhog_command
from testkit.lab.qemu import QemuConfig, forget, qemu_argv, spawn_qemu

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_SOCKET_TIMEOUT_S = 10.0
_POLL_S = 0.02

# Socket directories of guests not yet stopped; removed at exit if a test never stopped one.
_SOCKET_DIRS: set[Path] = set()


@atexit.register
def _remove_socket_dirs() -> None:
    for directory in _SOCKET_DIRS:
        shutil.rmtree(directory, ignore_errors=True)
    _SOCKET_DIRS.clear()


class GuestState(enum.Enum):
    """Where a LabGuest is in its life; ``start()`` may follow EXITED to restart it."""

    NEW = "new"
    STARTING = "starting"  # QEMU launched, sockets not up yet
    RUNNING = "running"  # sockets up, guest still booting
    BOOTED = "booted"  # the console shell answers
    EXITED = "exited"  # QEMU is gone (killed, crashed, guest panicked)
    STOPPED = "stopped"  # stop() ran: process reaped, sockets removed


class LabGuest:
    """One lab guest. ``start()`` launches QEMU, ``wait_booted()`` waits for the guest.

    ``balloon_id=None`` gives a balloon device without an id (QOM path under
    /machine/peripheral-anon). ``driver=False`` boots without loading virtio_balloon.
    ``accel=None`` picks KVM or TCG (see ``testkit.lab.accel``). ``disk``: a raw image
    (:func:`testkit.lab.disk.make_file_set`) attached read-only as ``/dev/vda``; see
    :meth:`mount_disk`.
    """

    def __init__(
        self,
        image: LabImage,
        *,
        workdir: Path,
        name: str,
        memory_mib: int = 512,
        balloon: bool = True,
        balloon_id: str | None = "balloon0",
        deflate_on_oom: bool = False,
        free_page_reporting: bool = False,
        driver: bool = True,
        accel: str | None = None,
        disk: Path | None = None,
    ) -> None:
        if not _NAME_RE.match(name):
            raise LabError(f"guest name {name!r}: use up to 32 letters, digits, '.', '_', '-'")
        self.image = image
        self.workdir = Path(workdir)
        self.name = name
        self.memory_mib = memory_mib
        self.balloon = balloon
        self.balloon_id = balloon_id
        self.deflate_on_oom = deflate_on_oom
        self.free_page_reporting = free_page_reporting
        self.driver = driver
        self.accel = accel
        self.disk = disk
        self.console_log = self.workdir / f"{name}.console.log"
        self.kernel_log = self.workdir / f"{name}.kernel.log"
        self.qemu_log = self.workdir / f"{name}.qemu.log"
        self.state = GuestState.NEW
        self._log = logging.getLogger(f"testkit.lab.guest.{name}")
        self._socket_dir: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._console: SerialConsole | None = None
        self._memhogs = 0
        self._qemu_log_offset = 0  # where this start's QEMU output begins in qemu_log

    def __repr__(self) -> str:
        return f"<LabGuest {self.name} {self.state.value}>"

    # --- where to find it -------------------------------------------------------------

    @property
    def qmp_socket(self) -> Path:
        """QEMU's QMP socket; the same path across restarts until ``stop()``."""
        return self._sockets()[0]

    @property
    def console_socket(self) -> Path:
        return self._sockets()[1]

    @property
    def admin_socket(self) -> Path:
        """A second QMP monitor for the test (:meth:`monitor`), free while the code under
        test holds ``qmp_socket``."""
        assert self._socket_dir is not None, "not started"
        return self._socket_dir / "admin.sock"

    @property
    def pid(self) -> int:
        """The QEMU process id (of the latest start)."""
        if self._process is None:
            raise LabError(f"{self.name}: not started")
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether QEMU is alive (it may still be booting, or stopped with SIGSTOP)."""
        return self._process is not None and self._process.returncode is None

    # --- life cycle ---------------------------------------------------------------------

    async def start(self, *, timeout_s: float = _SOCKET_TIMEOUT_S) -> None:
        """Launch QEMU; return once its QMP socket exists and the console is connected.

        After the previous QEMU exited (``kill()``, a crash) this starts a new one on the
        same socket paths, so a client can reconnect to ``qmp_socket``.
        """
        if self.running:
            raise LabError(f"{self.name}: QEMU is already running (pid {self.pid})")
        await self._release_process()
        if self.accel is None:
            self.accel = await choose_accel(self.image)
        if self._socket_dir is None or not self._socket_dir.is_dir():
            self._socket_dir = Path(tempfile.mkdtemp(prefix="bl-", dir="/tmp"))
            _SOCKET_DIRS.add(self._socket_dir)
        qmp_socket, console_socket = self._sockets()
        for stale in (qmp_socket, console_socket, self.admin_socket):
            stale.unlink(missing_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = QemuConfig(
            name=self.name,
            kernel=self.image.kernel,
            initrd=self.image.initrd,
            accel=self.accel,
            memory_mib=self.memory_mib,
            qmp_socket=qmp_socket,
            console_socket=console_socket,
            admin_socket=self.admin_socket,
            kernel_log=self.kernel_log,
            balloon=self.balloon,
            balloon_id=self.balloon_id,
            deflate_on_oom=self.deflate_on_oom,
            free_page_reporting=self.free_page_reporting,
            driver=self.driver,
            disk=self.disk,
        )
        # A stale "shell on ttyS0" from the previous boot must not count for this one.
        self.kernel_log.unlink(missing_ok=True)
        self._qemu_log_offset = self.qemu_log.stat().st_size if self.qemu_log.exists() else 0
        self._set_state(GuestState.STARTING)
        try:
            self._process = await spawn_qemu(qemu_argv(config), log=self.qemu_log)
            self._log.debug("QEMU pid %d (%s)", self._process.pid, self.accel)
            await self._connect(timeout_s=timeout_s)
        except BaseException:
            # Also on cancellation: a QEMU whose start failed is nobody's to stop later.
            if self.running:
                self.kill(signal.SIGKILL)
            await self._release_process()
            self._set_state(GuestState.EXITED)
            raise
        self._set_state(GuestState.RUNNING)

    async def _connect(self, *, timeout_s: float) -> None:
        """Wait for QEMU's sockets, then connect the console."""
        deadline = time.monotonic() + timeout_s
        console = SerialConsole(name=self.name, log_path=self.console_log)
        while True:
            if not self.running:
                raise LabError(f"{self.name}: QEMU exited at start: {self._qemu_log_tail()}")
            if self._sockets_exist():
                with contextlib.suppress(LabError):  # not listening yet
                    await console.connect(self.console_socket)
                    self._console = console
                    return
            if time.monotonic() >= deadline:
                raise LabError(f"{self.name}: QEMU's sockets not up in {timeout_s:g} s")
            await asyncio.sleep(_POLL_S)

    async def wait_booted(self, timeout_s: float = 60.0) -> None:
        """Wait until the guest's console shell answers; LabError (with logs) if it does not."""
        if self.state is GuestState.BOOTED:
            return
        deadline = time.monotonic() + timeout_s
        # First the kernel console says init is starting the shell (cheap to poll) ...
        while not self._init_ready():
            self._check_alive_while_booting()
            if time.monotonic() >= deadline:
                raise LabError(
                    f"{self.name}: no init after {timeout_s:g} s; kernel log:\n"
                    + self._kernel_log_tail()
                )
            await asyncio.sleep(0.1)
        # ... then the shell itself must answer. A probe sent before the shell opened the
        # serial port is lost, so it is repeated with a growing timeout.
        probe_timeout_s = 0.5
        while True:
            self._check_alive_while_booting()
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise LabError(f"{self.name}: the console shell did not answer in {timeout_s:g} s")
            try:
                await self._console_or_fail().run(
                    "true", timeout_s=min(probe_timeout_s, remaining_s)
                )
                break
            except ConsoleTimeoutError:
                probe_timeout_s = min(probe_timeout_s * 2, 4.0)
        self._set_state(GuestState.BOOTED)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Quit QEMU (SIGTERM, then SIGKILL after ``timeout_s``), remove its sockets.

        Idempotent, and safe after ``kill()``. A SIGSTOPped QEMU is continued so it can quit.
        """
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)
                self._process.send_signal(signal.SIGCONT)
            try:
                async with asyncio.timeout(timeout_s):
                    await self._process.wait()
            except TimeoutError:
                self._log.warning("QEMU ignored SIGTERM for %g s: SIGKILL", timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    self._process.send_signal(signal.SIGKILL)
        await self._release_process()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            _SOCKET_DIRS.discard(self._socket_dir)
            self._socket_dir = None
        if self.state is not GuestState.NEW:
            self._set_state(GuestState.STOPPED)

    async def restart(self, *, boot_timeout_s: float = 60.0) -> None:
        """Kill QEMU the hard way (as a crash would), start it again and wait for the boot."""
        if self.running:
            self.kill(signal.SIGKILL)
            await self.wait_exited()  # reaped, or start() would find it still running
        await self.start()
        await self.wait_booted(boot_timeout_s)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to QEMU (SIGSTOP to freeze it, SIGCONT to thaw, ...)."""
        if self._process is None or self._process.returncode is not None:
            raise LabError(f"{self.name}: QEMU is not running")
        self._process.send_signal(sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill QEMU without ceremony; ``start()`` brings it back on the same sockets."""
        self.send_signal(sig)

    async def wait_exited(self, timeout_s: float = 10.0) -> int:
        """Wait for QEMU to exit; its return code (negative: killed by that signal)."""
        if self._process is None:
            raise LabError(f"{self.name}: not started")
        async with asyncio.timeout(timeout_s):
            code = await self._process.wait()
        forget(self._process)
        self._set_state(GuestState.EXITED)
        return code

    async def __aenter__(self) -> LabGuest:
        """Start and wait for the boot; ``__aexit__`` stops the guest whatever happened."""
        try:
            await self.start()
            await self.wait_booted()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- inside the guest ---------------------------------------------------------------

    async def execute(self, command: str, *, timeout_s: float = 10.0) -> CommandResult:
        """Run a shell command in the guest; its exit status, stdout and stderr."""
        return await self._console_or_fail().run(command, timeout_s=timeout_s)

    async def run(self, command: str, *, timeout_s: float = 10.0, check: bool = True) -> str:
        """Run a shell command in the guest and return its stdout.

        With ``check`` (the default) a non-zero exit status raises LabError with stderr.
        """
        result = await self.execute(command, timeout_s=timeout_s)
        if check and result.status != 0:
            raise LabError(
                f"{self.name}: `{shorten(command)}` exited {result.status}: {result.stderr.strip()}"
            )
        return result.stdout

    async def monitor(
        self, command: str, args: dict[str, object] | None = None, *, timeout_s: float = 10.0
    ) -> Any:
        """Run one QMP command on the admin monitor (device_add, stop, cont, ...)."""
        from balloond.adapters.qmp import QmpLink
        from balloond.core.errors import DisconnectedError

        link = QmpLink(f"{self.name}-admin", self.admin_socket)
        try:
            await link.connect(timeout_s=timeout_s)
        except DisconnectedError:
            # Seen once on a loaded machine: QEMU answered the capabilities negotiation
            # of a fresh admin connection with something else. The monitor is the test's
            # tool, not the code under test: try once more.
            await asyncio.sleep(0.5)
            link = QmpLink(f"{self.name}-admin", self.admin_socket)
            await link.connect(timeout_s=timeout_s)
        try:
            return await link.execute(command, args, timeout_s=timeout_s)
        finally:
            await link.close()

    async def start_memhog(self, *, mib: int, rate_mib_s: int) -> Memhog:
        """Start memhog in the guest's background: ``mib`` MiB at ``rate_mib_s`` MiB/s."""
        self._memhogs += 1
        index = self._memhogs
        await self.run(memhog_command(index=index, mib=mib, rate_mib_s=rate_mib_s))
        return Memhog(self, index=index, mib=mib, rate_mib_s=rate_mib_s)

    async def oom_kills(self, *, timeout_s: float = 10.0) -> int:
        """How many processes the guest's OOM killer has killed since boot."""
        vmstat = await self.run("cat /proc/vmstat", timeout_s=timeout_s)
        for line in vmstat.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise LabError(f"{self.name}: no oom_kill in /proc/vmstat")

    async def meminfo(self, *, timeout_s: float = 10.0) -> dict[str, int]:
        """/proc/meminfo as bytes (``{"MemTotal": ..., "MemAvailable": ...}``)."""
        text = await self.run("cat /proc/meminfo", timeout_s=timeout_s)
        values: dict[str, int] = {}
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                scale = KiB if fields[-1] == "kB" else 1
                values[key.strip()] = int(fields[0]) * scale
        return values

    async def dmesg(self, *, timeout_s: float = 10.0) -> str:
        """The guest kernel's ring buffer."""
        return await self.run("dmesg", timeout_s=timeout_s)

    # --- internals -----------------------------------------------------------------------

    def _set_state(self, state: GuestState) -> None:
        if state is not self.state:
            self._log.debug("%s -> %s", self.state.value, state.value)
            self.state = state

    def _sockets(self) -> tuple[Path, Path]:
        if self._socket_dir is None:
            raise LabError(f"{self.name}: not started, so no sockets yet")
        return self._socket_dir / "qmp.sock", self._socket_dir / "con.sock"

    def _sockets_exist(self) -> bool:
        return all(path.exists() for path in self._sockets())

    def _console_or_fail(self) -> SerialConsole:
        if self._console is None or self._console.closed:
            raise LabError(f"{self.name}: no console (state {self.state.value})")
        return self._console

    def _init_ready(self) -> bool:
        try:
            return INIT_READY_LINE in self.kernel_log.read_bytes()
        except OSError:
            return False

    def _check_alive_while_booting(self) -> None:
        if not self.running:
            self._set_state(GuestState.EXITED)
            raise LabError(
                f"{self.name}: QEMU exited while booting; kernel log:\n{self._kernel_log_tail()}"
                f"\nQEMU: {self._qemu_log_tail()}"
            )

    async def _release_process(self) -> None:
        """Close the console and reap an exited QEMU (the registry forgets it)."""
        if self._console is not None:
            await self._console.close()
            self._console = None
        if self._process is not None:
            await self._process.wait()
            forget(self._process)
            self._process = None

    def _kernel_log_tail(self) -> str:
        return _tail(self.kernel_log)

    def _qemu_log_tail(self) -> str:
        return _tail(self.qemu_log, offset=self._qemu_log_offset).strip() or "(no output)"


def _tail(path: Path, *, offset: int = 0, n_bytes: int = 3000) -> str:
    try:
        data = path.read_bytes()[offset:]
    except OSError:
        return "(no log)"
    return data[-n_bytes:].decode(errors="replace")
