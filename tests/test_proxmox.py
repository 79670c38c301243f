"""The Proxmox VE source: guests from a tree laid out like /etc/pve/qemu-server and
/var/run/qemu-server, named, bounded and skipped as Proxmox's own configs say."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from balloond.adapters.discovery import GuestSpec, Way
from balloond.adapters.proxmox import proxmox_guests, read_vm_config
from balloond.core.policy import ResolvedPolicy
from balloond.core.units import MiB
from balloond.runtime.config import parse_config
from balloond.service.daemon import within_bounds

CONFIGS = {
    # name, both bounds
    "101": "boot: order=scsi0\nname: web-01\nmemory: 4096\nballoon: 1024\nostype: l26\n",
    # no name: the VMID; memory in PVE 8's `current=` form; no balloon: the VM keeps its size
    "102": "memory: current=2048\ncores: 2\n",
    # ballooning off
    "103": "name: db\nmemory: 8192\nballoon: 0\n",
    # the running config is the first section: a snapshot's values do not count
    "104": (
        "name: build\nmemory: 2048\nballoon: 512\n\n[before-upgrade]\nmemory: 9999\nballoon: 1\n"
    ),
    # nonsense: left alone with a warning
    "105": "name: odd\nmemory: lots\n",
    "106": "name: upside-down\nmemory: 1024\nballoon: 2048\n",
    # a socket without a config file
    # "107" has none
}


@pytest.fixture
def pve(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    config_dir, run_dir = tmp_path / "etc-pve-qemu-server", tmp_path / "run-qemu-server"
    config_dir.mkdir()
    run_dir.mkdir()
    for vmid, text in CONFIGS.items():
        (config_dir / f"{vmid}.conf").write_text(text)
    # a stopped VM: a config but no socket
    (config_dir / "108.conf").write_text("name: stopped\nmemory: 1024\nballoon: 512\n")
    socks = []
    for vmid in [*CONFIGS, "107"]:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(run_dir / f"{vmid}.qmp"))
        socks.append(s)
    (run_dir / "109.qmp").write_text("")  # not a socket
    (run_dir / "101.pid").write_text("1")  # Proxmox keeps pid files there too
    try:
        yield config_dir, run_dir
    finally:
        for s in socks:
            s.close()


def test_guests_are_named_bounded_and_skipped_as_proxmox_says(
    pve: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="balloond.adapters.proxmox")
    config_dir, run_dir = pve
    specs = {s.name: s for s in proxmox_guests(config_dir=config_dir, run_dir=run_dir)}
    assert set(specs) == {"web-01", "102", "build"}
    web = specs["web-01"]
    assert (web.way, web.address, web.source) == (
        Way.QMP_SHARED,
        str(run_dir / "101.qmp"),
        "proxmox",
    )
    assert (web.min_bytes, web.max_bytes) == (1024 * MiB, 4096 * MiB)
    assert (specs["102"].min_bytes, specs["102"].max_bytes) == (2048 * MiB, 2048 * MiB)
    assert (specs["build"].min_bytes, specs["build"].max_bytes) == (512 * MiB, 2048 * MiB)
    text = caplog.text
    assert "103: balloon: 0 (ballooning off); left alone" in text
    assert "105: " in text
    assert "'lots' is not a size in MiB" in text
    assert "106: " in text
    assert "balloon (2048 MiB) above memory (1024 MiB)" in text
    assert "107: cannot read" in text


def test_a_vm_config_is_read_up_to_its_first_snapshot() -> None:
    keys = read_vm_config(CONFIGS["104"])
    assert keys == {"name": "build", "memory": "2048", "balloon": "512"}


def test_proxmox_bounds_replace_the_policys() -> None:
    policy: ResolvedPolicy = parse_config({}).policies["default"].resolve(4096 * MiB)
    assert (policy.min_bytes, policy.max_bytes) == (256 * MiB, 4096 * MiB)
    web = GuestSpec("web", Way.QMP_SHARED, "/x.qmp", "proxmox", 1024 * MiB, 3000 * MiB)
    bounded = within_bounds(policy, web)
    assert (bounded.min_bytes, bounded.max_bytes) == (1024 * MiB, 3000 * MiB)
    # a maximum above the boot size is the boot size; a minimum above it, the maximum
    big = GuestSpec("big", Way.QMP_SHARED, "/x.qmp", "proxmox", 9000 * MiB, 9000 * MiB)
    assert within_bounds(policy, big).max_bytes == 4096 * MiB
    assert within_bounds(policy, big).min_bytes == 4096 * MiB
    assert within_bounds(policy, None) is policy
