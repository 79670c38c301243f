"""Helpers for tests that run the daemon: in-process, or as its own ``balloond run``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from balloond.runtime.config import Config
from balloond.service.daemon import Daemon

#: How long a test waits for something a running daemon does. Generous: a busy two-core
#: machine running TCG guests is slow, and this is a deadline, not an expectation.
WAIT_S = 120.0


@contextlib.asynccontextmanager
async def running(config: Config, **kwargs: Any) -> AsyncIterator[Daemon]:
    """A daemon running in this event loop, past its first discovery; stopped on exit."""
    daemon = Daemon(config, **kwargs)
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(on_ready=ready.set), name="daemon")
    try:
        await asyncio.wait_for(ready.wait(), WAIT_S)
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, WAIT_S)


async def until(check: Callable[[], bool], *, timeout_s: float = WAIT_S) -> bool:
    """Poll ``check`` until it holds (True) or the time is up (False)."""
    end = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.05)
    return True


#: How long a test waits for something a ``balloond run`` subprocess does, seen through
#: balloonctl.
CTL_WAIT_S = 60.0

#: The venv's scripts (balloond, balloonctl).
SCRIPTS = Path(sys.executable).parent
#: What systemd would hand the daemon; a test sets these itself or not at all.
_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")


class Balloond:
    """One ``balloond run`` subprocess; its output goes to a log file in the test's dir."""

    def __init__(self, *, workdir: Path, config: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.config = config
        inherited = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
        self.env = {**inherited, **(env or {})}
        self.log_path = workdir / "balloond.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(SCRIPTS / "balloond"),
                "run",
                "--config",
                str(self.config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self) -> int:
        assert self.proc is not None
        async with asyncio.timeout(WAIT_S):
            return await self.proc.wait()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


# --- talking to a `balloond run` subprocess through balloonctl ---------------------------


async def balloonctl(sock: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPTS / "balloonctl"),
        "--socket",
        str(sock),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(CTL_WAIT_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def status_json(sock: Path, guest: str | None = None) -> dict[str, Any]:
    rc, out, err = await balloonctl(sock, "status", *([guest] if guest else []), "--json")
    assert rc == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


async def wait_until(
    what: str,
    probe: Callable[[], Awaitable[bool]],
    daemon: Balloond | None = None,
    timeout_s: float = CTL_WAIT_S,
) -> None:
    """Poll ``probe`` until it holds; AssertionError naming ``what`` (and the tail of the
    daemon's log) when the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.25)
    log = f"; balloond log:\n{daemon.log()[-4000:]}" if daemon is not None else ""
    raise AssertionError(f"gave up waiting for {what}{log}")


async def wait_serving(sock: Path, daemon: Balloond, guest: str) -> None:
    """Until balloonctl answers and the guest's link is active."""

    async def probe() -> bool:
        rc, out, _ = await balloonctl(sock, "status", guest, "--json")
        return rc == 0 and json.loads(out)["state"] == "active"

    await wait_until(f"{guest} to be active behind {sock}", probe, daemon)
