"""`balloonctl top` in a real terminal: tmux at 80x24, driven with send-keys and read with
capture-pane, against a running daemon's control socket."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from daemon_helpers import SCRIPTS, WAIT_S, running, until

from balloond.adapters.control_socket import ControlAdapter
from balloond.core.link import LinkState
from balloond.core.units import GiB
from balloond.programs.top import last_action, memory_bar, sparkline
from balloond.runtime.config import parse_config
from testkit.sim import SimFleet, SimGuestSpec

TMUX = shutil.which("tmux")


def test_sparkline_and_bar() -> None:
    assert sparkline([]) == ""
    assert sparkline([5, 5, 5]) == "▄▄▄"
    assert sparkline([0, 10]) == "▁█"
    assert len(sparkline(list(range(100)))) == 10
    guest = {
        "boot_bytes": 1024,
        "actual_bytes": 768,
        "available_bytes": 512,
        "cache_bytes": 256,
    }
    bar = memory_bar(guest, cells=8)
    assert bar.plain == "██████░░"  # used 2, cache 2, free 2 of 8; 2 ballooned
    assert memory_bar({"boot_bytes": 1024}, cells=4).plain == "????"
    action = {"time": "2026-11-30T10:00:00.000+00:00", "reason": "idle"}
    now = dt.datetime(2026, 11, 30, 10, 0, 42, tzinfo=dt.UTC).timestamp()
    assert last_action({"last_action": action}, now) == "idle 42s"
    assert last_action({"last_action": None}, now) == "-"


class Tmux:
    """A private tmux server (its own socket) running one command in an 80x24 window."""

    def __init__(self, name: str) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-L", name]

    def run(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=30, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"tmux {args}: {result.stderr}")
        return result.stdout

    def alive(self) -> bool:
        return subprocess.run([*self.base, "has-session", "-t", "top"], capture_output=True,
                              timeout=30, check=False).returncode == 0  # fmt: skip

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top", check=False)


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (make system installs it)")
async def test_top_shows_the_guests_and_quits_on_q(tmp_path: Path) -> None:
    sock_dir = tmp_path / "qmp"
    sock_dir.mkdir()
    specs = [SimGuestSpec(f"vm-{n}", GiB) for n in ("alpha", "beta", "gamma")]
    config = parse_config(
        {
            "daemon": {
                "poll_interval_s": 1.0,
                "state_dir": str(tmp_path / "state"),
                "runtime_dir": str(tmp_path / "run"),
            },
            "discovery": {"globs": [f"{sock_dir}/*.sock"], "rescan_interval_s": 0.5},
            "metrics": {"enabled": False},
        }
    )
    control = tmp_path / "run" / "control.sock"
    tmux = Tmux(f"balloond-top-{os.getpid()}")
    async with SimFleet(dir=sock_dir, guests=specs), running(config) as daemon:
        adapter = ControlAdapter(daemon, path=control)
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop), name="control")
        try:
            assert await until(
                lambda: (
                    len(daemon.guests) == 3
                    and all(c.link.state is LinkState.ACTIVE for c in daemon.guests.values())
                )
            )
            command = f"{SCRIPTS / 'balloonctl'} --socket {control} top"
            tmux.run("new-session", "-d", "-s", "top", "-x", "80", "-y", "24", command)

            async def shows(*words: str) -> bool:
                async def check() -> bool:
                    screen = await asyncio.to_thread(tmux.screen)
                    return all(w in screen for w in words)

                end = asyncio.get_running_loop().time() + WAIT_S
                while asyncio.get_running_loop().time() < end:
                    if await check():
                        return True
                    await asyncio.sleep(0.2)
                return False

            assert await shows("vm-alpha", "vm-beta", "vm-gamma", "reclaimed", "3 guests"), (
                tmux.screen()
            )
            assert all(len(line) <= 80 for line in tmux.screen().splitlines())
            await asyncio.to_thread(tmux.run, "send-keys", "-t", "top", "s")
            assert await shows("sort: size"), tmux.screen()
            await asyncio.to_thread(tmux.run, "send-keys", "-t", "top", "q")
            assert await until(lambda: not tmux.alive()), tmux.screen()
        finally:
            tmux.run("kill-server", check=False)
            stop.set()
            await asyncio.wait_for(task, 10)
