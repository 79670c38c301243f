"""`balloonctl plot` on a real lab guest after a surge: a PNG with the deflate marked."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from daemon_helpers import WAIT_S, running, until

from balloond.adapters.control_socket import ControlAdapter
from balloond.core.policy.decision import PRESSURE_REASONS
from balloond.core.units import MiB
from balloond.programs import balloonctl
from balloond.runtime.config import parse_config
from testkit.lab import LabGuest

GuestFactory = Callable[..., Awaitable[LabGuest]]

pytestmark = pytest.mark.lab


async def test_plot_of_a_real_guest_marks_the_deflate_of_its_surge(
    make_guest: GuestFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    guest = await make_guest("plotted", memory_mib=512)
    config = parse_config(
        {
            "daemon": {
                "poll_interval_s": 1.0,
                "state_dir": str(tmp_path / "state"),
                "runtime_dir": str(tmp_path / "run"),
                "timeline_interval_s": 1.0,
            },
            "guests": [{"name": guest.name, "qmp": str(guest.qmp_socket)}],
            "policies": {"default": {"min_size": "128MiB"}},
        }
    )
    sock = tmp_path / "run" / "control.sock"
    async with running(config) as daemon:
        adapter = ControlAdapter(daemon, path=sock)
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop), name="control")
        try:
            ctrl = daemon.guests[guest.name]
            # Reclaimed first, then a surge the balloon has to answer: slow enough (25 MiB/s)
            # for a poll a second to meet it from the floor on any machine.
            # (Once the balloon has settled, not at the first of its inflates: a surge that
            # meets an inflate under way is met with stats a second or two old, which this
            # test is not about.)
            assert await until(lambda: any(c.reason == "idle" for c in ctrl.timeline.changes()))

            def settled() -> bool:
                changes, target = ctrl.timeline.changes(), ctrl.target_bytes
                return (
                    bool(changes)
                    and time.time() - changes[-1].t_wall > 3  # no change for three polls
                    and target is not None
                    and bool(ctrl.history)
                    and abs(ctrl.history[-1].actual_bytes - target) <= MiB
                )

            assert await until(settled)
            hog = await guest.start_memhog(mib=200, rate_mib_s=25)
            assert await hog.wait_allocated(timeout_s=WAIT_S)

            def deflated() -> bool:
                # Met as pressure, or earlier by the floor that the surge reserve raised.
                return any(
                    c.new_bytes > c.old_bytes and c.reason in (*PRESSURE_REASONS, "below-floor")
                    for c in ctrl.timeline.changes()
                )

            assert await until(deflated)
            await hog.stop()
            await asyncio.sleep(2)  # a point or two after the deflate
            out = tmp_path / "plotted.png"
            status = await asyncio.to_thread(
                balloonctl.main,
                ["--socket", str(sock), "plot", guest.name, "--since", "10m", "--out", str(out)],
            )
            printed = capsys.readouterr().out
            assert status == 0, printed
            assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert any(f"deflate ({r})" in printed for r in (*PRESSURE_REASONS, "below-floor")), (
                printed
            )
            # --json gives the timeline itself.
            assert (
                await asyncio.to_thread(
                    balloonctl.main,
                    ["--socket", str(sock), "plot", guest.name, "--out", str(out), "--json"],
                )
                == 0
            )
            timeline = json.loads(capsys.readouterr().out)
            assert timeline["points"]
            assert any(c["new_bytes"] > c["old_bytes"] for c in timeline["changes"])
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
