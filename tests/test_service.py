"""balloond as a service: the real ``balloond run`` process against real lab guests.

Each test starts the daemon as a subprocess with a temporary config that names a lab guest's
QMP socket, temporary state and runtime directories, and talks to it the way systemd and an
operator would: a NOTIFY_SOCKET listener, signals, ``balloonctl``, and an HTTP scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from daemon_helpers import Balloond, balloonctl, status_json, wait_serving, wait_until
from prometheus_client.parser import text_string_to_metric_families

from balloond.core.units import MiB
from balloond.programs import balloonctl as ctl
from testkit.lab import LabGuest

pytestmark = pytest.mark.lab

GuestFactory = Callable[..., Awaitable[LabGuest]]
#: Generous: a loaded 2-core machine under TCG is slow, and these are waits, not limits.
WAIT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(*, state: Path, run: Path, guest: LabGuest, metrics_port: int | None = None) -> str:
    metrics = (
        f'[metrics]\nenabled = true\naddress = "127.0.0.1:{metrics_port}"\n'
        if metrics_port
        else "[metrics]\nenabled = false\n"
    )
    return f"""
[daemon]
poll_interval_s = 1.0
state_dir = "{state}"
runtime_dir = "{run}"
log_format = "text"

[discovery]
globs = []

[[guests]]
name = "{guest.name}"
qmp = "{guest.qmp_socket}"

{metrics}"""


# --- systemd: notify, reload, stop ------------------------------------------------------


class NotifyListener:
    """systemd's end of NOTIFY_SOCKET: an abstract datagram socket, read all the time (as
    systemd does) so that the sender never finds its short queue full."""

    def __init__(self) -> None:
        self.name = f"balloond-test-{os.getpid()}-{time.monotonic_ns()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name.encode())
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock, self._read)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                data = self.sock.recv(4096).decode()
                self.messages.append(dict(x.split("=", 1) for x in data.splitlines()))

    def poll(self) -> list[dict[str, str]]:
        self._read()
        return self.messages

    def count(self, key: str) -> int:
        return sum(1 for m in self.poll() if key in m)

    def close(self) -> None:
        self._loop.remove_reader(self.sock)
        self.sock.close()


async def test_systemd_lifecycle_reload_and_stop(
    make_guest: GuestFactory, tmp_path: Path, short_dir: Path, daemons: list[Balloond]
) -> None:
    guest = await make_guest("vm1")
    state, run = tmp_path / "state", short_dir / "run"
    config = tmp_path / "balloond.toml"
    good = _config(state=state, run=run, guest=guest)
    config.write_text(good)
    sock = run / "control.sock"
    listener = NotifyListener()
    d = Balloond(
        workdir=tmp_path,
        config=config,
        env={"NOTIFY_SOCKET": f"@{listener.name}", "WATCHDOG_USEC": "2000000"},
    )
    daemons.append(d)
    try:
        await d.start()

        async def ready() -> bool:
            return listener.count("READY") >= 1

        await wait_until("READY=1", ready, d)
        await wait_serving(sock, d, "vm1")

        async def watchdog_and_status() -> bool:
            statuses = [m.get("STATUS", "") for m in listener.poll()]
            return listener.count("WATCHDOG") >= 2 and any(
                s.startswith("1 guest (1 active), ") for s in statuses
            )

        await wait_until("WATCHDOG=1 and STATUS= with the guest active", watchdog_and_status, d)
        connects = d.log().count("-> connecting")

        # An invalid config: refused on SIGHUP, the old one stays, status says why.
        config.write_text(good.replace("poll_interval_s = 1.0", "poll_interval_s = -1"))
        readies = listener.count("READY")
        d.signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return listener.count("READY") > readies

        await wait_until("READY=1 after a refused reload", reloaded, d)
        reloading = [m for m in listener.poll() if "RELOADING" in m]
        assert reloading
        assert int(reloading[-1]["MONOTONIC_USEC"]) > 0
        status = await status_json(sock)
        assert "poll_interval_s" in (status["reload_error"] or "")
        rc, out, _ = await balloonctl(sock, "status")
        assert rc == 0
        assert "last reload REFUSED" in out
        assert "reload refused" in d.log()
        # ... and the same through balloonctl, with its own exit status.
        rc, _, err = await balloonctl(sock, "reload")
        assert rc == ctl.EXIT_BAD_CONFIG
        assert "poll_interval_s" in err

        # A valid new config (a slower poll, a policy added and assigned) applies without
        # touching the link.
        config.write_text(
            good.replace("poll_interval_s = 1.0", "poll_interval_s = 2.0")
            + '\n[policies.gentle]\nfree_low = "20%"\nfree_high = "40%"\n'
            '\n[assign]\n"vm*" = "gentle"\n'
        )
        rc, _, err = await balloonctl(sock, "reload")
        assert rc == 0, err
        status = await status_json(sock, "vm1")
        assert status["policy"] == "gentle"
        assert status["state"] == "active"
        assert (await status_json(sock))["reload_error"] is None
        await asyncio.sleep(4)  # a few cycles under the new config
        assert (await status_json(sock, "vm1"))["state"] == "active"
        assert d.log().count("-> connecting") == connects, "reload reconnected the guest"

        # SIGTERM: STOPPING=1, exit 0, links closed, state saved, socket gone.
        d.signal(signal.SIGTERM)
        assert await d.wait() == 0, d.log()[-4000:]
        assert listener.count("STOPPING") == 1
        log = d.log()
        assert "stopped" in log
        assert "did not stop" not in log
        assert "-> closed" in log
        assert (state / "intents.json").exists()
        assert not sock.exists()
    finally:
        listener.close()


# --- balloonctl, holds across kill -9, metrics ----------------------------------------


async def test_balloonctl_holds_and_metrics(
    make_guest: GuestFactory, tmp_path: Path, short_dir: Path, daemons: list[Balloond]
) -> None:
    guest = await make_guest("vm2", memory_mib=512)
    state, run = tmp_path / "state", short_dir / "run"
    sock = run / "control.sock"
    port = _free_port()
    config = tmp_path / "balloond.toml"
    config.write_text(_config(state=state, run=run, guest=guest, metrics_port=port))
    first = Balloond(workdir=tmp_path, config=config)
    daemons.append(first)
    await first.start()
    await wait_serving(sock, first, "vm2")

    rc, out, err = await balloonctl(sock, "status")
    assert rc == 0, err
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("GUEST"))
    header, row = lines[at : at + 2]
    assert header.split()[:4] == ["GUEST", "STATE", "VIA", "ACTUAL"]
    # The lab's devices have deflate-on-oom off: the table says so under the rows.
    assert "deflate-on-oom off: vm2" in out
    name, link_state, via, actual_mib = row.split()[:4]
    assert (name, link_state, via) == ("vm2", "active", "qmp")
    assert 0 < int(actual_mib) <= 512  # the daemon may have reclaimed some already

    rc, out, err = await balloonctl(sock, "explain", "vm2")
    assert rc == 0, err
    assert "why:" in out

    # Errors, each with its own exit status and a message that names the problem.
    rc, _, err = await balloonctl(sock, "set", "nosuch", "300MiB")
    assert rc == ctl.EXIT_UNKNOWN_GUEST, err
    assert "no guest named 'nosuch'" in err
    rc, _, err = await balloonctl(sock, "set", "vm2", "lots")
    assert rc == ctl.EXIT_BAD_SIZE, err
    assert "bad size" in err
    rc, _, err = await balloonctl(sock, "set", "vm2", "4GiB")
    assert rc == ctl.EXIT_OUT_OF_BOUNDS, err
    assert "outside vm2's bounds" in err
    rc, _, err = await balloonctl(tmp_path / "none.sock", "status")
    assert rc == ctl.EXIT_NOT_RUNNING, err
    assert "not running" in err

    # pause / resume
    rc, out, err = await balloonctl(sock, "pause", "vm2")
    assert rc == 0, err
    assert (await status_json(sock, "vm2"))["mode"] == "paused"
    rc, out, err = await balloonctl(sock, "resume", "--all")
    assert rc == 0, err
    assert (await status_json(sock, "vm2"))["mode"] == "auto"

    # set with a hold: the guest's actual size moves.
    rc, out, err = await balloonctl(sock, "set", "vm2", "320MiB", "--for", "1h")
    assert rc == 0, err
    assert "held at 320 MiB" in out

    async def moved() -> bool:
        actual = (await status_json(sock, "vm2"))["actual_bytes"]
        return actual is not None and abs(actual - 320 * MiB) <= 8 * MiB

    await wait_until("vm2 to shrink to 320 MiB", moved, first)
    held = await status_json(sock, "vm2")

    # The metrics endpoint, parsed as Prometheus would.
    metrics = await _scrape(port)
    assert metrics["balloond_guests"][("state", "active")] == 1
    actual = metrics["balloond_guest_actual_bytes"][("guest", "vm2")]
    assert abs(actual - 320 * MiB) <= 8 * MiB
    assert metrics["balloond_guest_target_bytes"][("guest", "vm2")] == 320 * MiB
    assert ("guest", "vm2") in metrics["balloond_guest_qmp_errors"]
    assert ("guest", "vm2") in metrics["balloond_guest_stats_age_seconds"]
    assert metrics["balloond_reload_failures"][()] == 0
    assert "balloond_event_loop_lag_seconds" in metrics

    # kill -9, then a new daemon: the hold is still there and still applied.
    first.signal(signal.SIGKILL)
    assert await first.wait() == -signal.SIGKILL
    assert sock.exists()  # the stale socket a crash leaves behind
    second = Balloond(workdir=tmp_path, config=config)
    daemons.append(second)
    await second.start()
    await wait_serving(sock, second, "vm2")
    after = await status_json(sock, "vm2")
    assert after["mode"] == "manual"
    assert after["manual_target_bytes"] == 320 * MiB
    assert after["hold_until"] == pytest.approx(held["hold_until"])

    async def reapplied() -> bool:
        return (await status_json(sock, "vm2"))["target_bytes"] == 320 * MiB

    await wait_until("the restarted daemon to apply the hold", reapplied, second)
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0


async def _scrape(port: int) -> dict[str, dict[tuple[str, ...], float]]:
    """GET /metrics -> {sample name without _total: {label items: value}}."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(WAIT_S):
            response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            labels = tuple(x for kv in sorted(sample.labels.items()) for x in kv)
            out.setdefault(name, {})[labels] = sample.value
    return out
