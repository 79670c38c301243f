"""Driving memhog, the in-guest memory hog (memhog.c), from a test.

Tests create memory pressure with it and read the outcome: it allocated everything, or
the guest's OOM killer got it first. memhog runs in the background of the console shell;
its output, pid and exit status go to files in the guest's /tmp, which these methods read
over the console, so nothing it prints can mix with other commands' output.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from balloond.core.errors import LabError
from testkit.lab.console import CommandResult

_POLL_S = 0.25


class CommandRunner(Protocol):
    """Anything that runs a shell command in the guest (a LabGuest)."""

    async def execute(self, command: str, *, timeout_s: float = ...) -> CommandResult: ...


def memhog_command(*, index: int, mib: int, rate_mib_s: int) -> str:
    """The shell line that starts memhog number ``index`` in the background."""
    base = f"/tmp/memhog{index}"
    inner = f"echo $$ >{base}.pid; exec memhog {mib} {rate_mib_s}"
    return (
        f"( sh -c '{inner}' >{base}.log 2>&1; echo $? >{base}.status ) </dev/null >/dev/null 2>&1 &"
    )


class Memhog:
    """One memhog process inside a guest; create it with ``LabGuest.start_memhog``."""

    def __init__(self, guest: CommandRunner, *, index: int, mib: int, rate_mib_s: int) -> None:
        self.mib = mib
        self.rate_mib_s = rate_mib_s
        self._guest = guest
        self._base = f"/tmp/memhog{index}"

    def __repr__(self) -> str:
        return f"<Memhog {self._base} {self.mib} MiB at {self.rate_mib_s} MiB/s>"

    async def state(self, *, timeout_s: float = 10.0) -> str:
        """``"allocated"``, ``"running"`` (still allocating) or ``"exited N"``."""
        base = self._base
        result = await self._guest.execute(
            f"if grep -q 'memhog: allocated' {base}.log 2>/dev/null; then echo allocated;"
            f" elif [ -s {base}.status ]; then echo exited $(cat {base}.status);"
            " else echo running; fi",
            timeout_s=timeout_s,
        )
        return result.stdout.strip()

    async def wait_allocated(self, *, timeout_s: float = 60.0) -> bool:
        """True once memhog has allocated everything; False if it died first (OOM-killed).

        Raises LabError if it is still allocating after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            state = await self.state()
            if state == "allocated":
                return True
            if state.startswith("exited"):
                return False
            if time.monotonic() >= deadline:
                raise LabError(f"{self!r} still allocating after {timeout_s:g} s")
            await asyncio.sleep(_POLL_S)

    async def output(self, *, timeout_s: float = 10.0) -> str:
        """What memhog printed so far."""
        result = await self._guest.execute(f"cat {self._base}.log", timeout_s=timeout_s)
        return result.stdout

    async def stop(self, *, timeout_s: float = 10.0) -> int:
        """Ask memhog to free its memory and exit (SIGTERM); its exit status.

        0 after a clean stop; 137 (128 + SIGKILL) if the OOM killer had already killed it.
        """
        base = self._base
        result = await self._guest.execute(
            f"if [ ! -s {base}.status ]; then"
            f" while [ ! -s {base}.pid ]; do sleep 0.05; done;"
            f" kill -TERM $(cat {base}.pid) 2>/dev/null;"
            f" while [ ! -s {base}.status ]; do sleep 0.05; done; fi; cat {base}.status",
            timeout_s=timeout_s,
        )
        try:
            return int(result.stdout.strip())
        except ValueError as exc:
            raise LabError(f"{self!r}: no exit status ({result.stderr.strip()})") from exc
