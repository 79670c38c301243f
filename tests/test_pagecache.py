"""The page cache a real guest works from: balloond stops inflating on refaults and keeps a
working-set floor. A lab guest with a virtio-blk disk reads a file set larger than its
floor over and over; its disk reads reach balloond through QEMU's query-blockstats."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import running, until

from balloond.core.policy import Reason
from balloond.core.units import MiB
from balloond.runtime.config import Config, parse_config
from testkit.lab import LabGuest
from testkit.lab.disk import make_file_set, mount_disk, read_passes, start_reader, stop_reader

GuestFactory = Callable[..., Awaitable[LabGuest]]
FILES, FILE_MIB = 6, 40  # 240 MiB read over and over: more than the floor leaves for cache

pytestmark = pytest.mark.lab


def config_for(tmp_path: Path, guest: LabGuest, **policy: Any) -> Config:
    return parse_config(
        {
            "daemon": {
                "poll_interval_s": 1.0,
                "state_dir": str(tmp_path / "state"),
                "runtime_dir": str(tmp_path / "run"),
            },
            "guests": [{"name": guest.name, "qmp": str(guest.qmp_socket)}],
            "policies": {"default": {"reclaim": "idle", "min_size": "128MiB", **policy}},
        }
    )


async def reading_guest(make_guest: GuestFactory, tmp_path: Path) -> LabGuest:
    disk = make_file_set(tmp_path / "files.img", files=FILES, file_mib=FILE_MIB)
    guest = await make_guest("reader", memory_mib=512, disk=disk)
    await mount_disk(guest)
    await start_reader(guest)
    return guest


async def test_refaults_stop_the_inflate_and_the_working_set_floor_holds(
    make_guest: GuestFactory, tmp_path: Path
) -> None:
    guest = await reading_guest(make_guest, tmp_path)
    async with running(config_for(tmp_path, guest)) as daemon:
        ctrl = daemon.guests[guest.name]
        # balloond takes the idle memory, squeezes the file set, sees the reads climb...
        assert await until(lambda: ctrl.decisions["working-set"] > 0), dict(ctrl.decisions)
        # ... gives memory back and keeps a working-set floor.
        assert await until(lambda: ctrl.books.working_set_bytes > 0)

        def held() -> bool:
            d = ctrl.last_decision
            return d is not None and d.reason is Reason.AT_FLOOR and bool(d.working_set_bytes)

        assert await until(held), ctrl.last_decision
        decision = ctrl.last_decision
        assert decision is not None
        assert "working set" in decision.explanation
        # The floor leaves the file set its cache: the guest is well above where the old
        # policy (used + free_low) would have put it.
        assert decision.floor_bytes is not None
        assert decision.used_bytes is not None
        assert decision.floor_bytes >= decision.used_bytes + FILES * FILE_MIB * MiB // 2
        # balloonctl explain says why (the command layer's explain is the same decision).
        reply = await daemon.commands().handle({"op": "explain", "guest": guest.name})
        assert reply["ok"], reply
        assert "working set" in json.dumps(reply["result"])
    await stop_reader(guest)
    assert await read_passes(guest)  # the reader ran all along
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").open()]
    gave = [r for r in audit if r["reason"] == "working-set"]
    assert gave, [r["reason"] for r in audit]
    assert all(r["new_bytes"] > r["old_bytes"] for r in gave)
    assert "eating the guest's working set" in gave[0]["explanation"]
