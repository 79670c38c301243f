"""The control socket and balloonctl, against a real unix socket and a daemon with no guests.

What needs a guest (set moving a balloon, bounds, holds across restarts) is in
test_service.py, against lab guests.
"""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from balloond.adapters.control_socket import ControlAdapter, ControlSocketError, bind_control_socket
from balloond.core.ops import MAX_REQUEST_BYTES
from balloond.programs import balloonctl as ctl
from balloond.runtime.config import parse_config
from balloond.service.daemon import Daemon


def _daemon(tmp_path: Path) -> Daemon:
    config = parse_config(
        {
            "daemon": {
                "state_dir": str(tmp_path / "state"),
                "runtime_dir": str(tmp_path / "run"),
                "audit_log": False,
            },
            "discovery": {"globs": []},
        }
    )
    return Daemon(config)


async def _listening(adapter: ControlAdapter, task: asyncio.Task[None]) -> None:
    waiter = asyncio.create_task(adapter.listening.wait(), name="wait-listening")
    await asyncio.wait([waiter, task], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
        if task.done():
            task.result()  # raises the adapter's own error
        raise AssertionError(f"nothing listens on {adapter.path}")


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[ControlAdapter]:
    adapter = ControlAdapter(_daemon(tmp_path), path=tmp_path / "run" / "control.sock")
    stop = asyncio.Event()
    task = asyncio.create_task(adapter.run(stop), name="control-under-test")
    await _listening(adapter, task)
    try:
        yield adapter
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _exchange(path: Path, *lines: bytes) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        for line in lines:
            writer.write(line)
        await writer.drain()
        replies = []
        while raw := await asyncio.wait_for(reader.readline(), 10):
            replies.append(json.loads(raw))
            if len(replies) == len(lines):
                break
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


async def test_socket_is_private_and_removed_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.sock"
    adapter = ControlAdapter(_daemon(tmp_path), path=path)
    stop = asyncio.Event()
    task = asyncio.create_task(adapter.run(stop), name="control-under-test")
    await _listening(adapter, task)
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    stop.set()
    await asyncio.wait_for(task, 10)
    assert not path.exists()


async def test_requests_and_garbage_on_one_connection(control: ControlAdapter) -> None:
    replies = await _exchange(
        control.path,
        b'{"op": "status", "id": 7}\n',
        b"\x00\xffnot json at all\n",
        b'{"op": "launch-missiles"}\n',
        b"[1, 2, 3]\n",
        b'{"op": "set", "guest": "nope", "size": "512MiB"}\n',
        b'{"op": "set", "guest": "nope", "size": "lots"}\n',
        b'{"op": "status"}\n',
    )
    assert replies[0]["ok"]
    assert replies[0]["id"] == 7
    assert replies[0]["result"]["guests"] == []
    assert replies[1]["error"]["code"] == "bad_request"
    assert replies[2]["error"]["code"] == "unknown_op"
    assert replies[3]["error"]["code"] == "bad_request"
    assert replies[4]["error"]["code"] == "unknown_guest"
    assert "size" in replies[5]["error"]["message"]
    assert replies[6]["ok"]


async def test_oversized_request_is_refused(control: ControlAdapter) -> None:
    reader, writer = await asyncio.open_unix_connection(str(control.path))
    try:
        writer.write(b"x" * (MAX_REQUEST_BYTES + 10))
        await writer.drain()
        reply = json.loads(await asyncio.wait_for(reader.readline(), 10))
        assert reply["error"]["code"] == "bad_request"
        assert "too large" in reply["error"]["message"]
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the daemon
    finally:
        writer.close()
        await writer.wait_closed()


async def test_many_clients_at_once(control: ControlAdapter) -> None:
    replies = await asyncio.gather(
        *(_exchange(control.path, b'{"op": "status"}\n') for _ in range(40))
    )
    assert all(r[0]["ok"] for r in replies)


async def test_idle_connection_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    adapter = ControlAdapter(_daemon(tmp_path), path=path, idle_timeout_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(adapter.run(stop), name="control-under-test")
    try:
        await _listening(adapter, task)
        reader, writer = await asyncio.open_unix_connection(str(path))
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        await writer.wait_closed()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what SIGKILL leaves behind
    live = bind_control_socket(path)
    try:
        with pytest.raises(ControlSocketError, match="already listening"):
            bind_control_socket(path)
    finally:
        live.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(ControlSocketError, match="not a socket"):
        bind_control_socket(path)


# --- balloonctl -------------------------------------------------------------------------


async def _ctl(*argv: str) -> int:
    return await asyncio.to_thread(ctl.main, list(argv))


async def test_balloonctl_status_and_errors(
    control: ControlAdapter, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = str(control.path)
    assert await _ctl("--socket", sock, "status") == ctl.EXIT_OK
    assert "no guests" in capsys.readouterr().out
    assert await _ctl("--socket", sock, "status", "--json") == ctl.EXIT_OK
    assert json.loads(capsys.readouterr().out)["guests"] == []

    assert await _ctl("--socket", sock, "set", "ghost", "512MiB") == ctl.EXIT_UNKNOWN_GUEST
    assert "no guest named 'ghost'" in capsys.readouterr().err
    assert await _ctl("--socket", sock, "explain", "ghost") == ctl.EXIT_UNKNOWN_GUEST
    assert await _ctl("--socket", sock, "pause", "--all") == ctl.EXIT_OK
    assert await _ctl("--socket", sock, "reload") == ctl.EXIT_BAD_CONFIG  # no config file
    assert "reload refused" in capsys.readouterr().err


def test_balloonctl_without_a_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "nobody.sock")
    assert ctl.main(["--socket", missing, "status"]) == ctl.EXIT_NOT_RUNNING
    assert "balloond is not running" in capsys.readouterr().err
    monkeypatch.setenv("BALLOOND_SOCKET", missing)
    assert ctl.main(["status"]) == ctl.EXIT_NOT_RUNNING
    assert missing in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["set", "g", "512"], ctl.EXIT_BAD_SIZE, "give a unit"),
        (["set", "g", "lots"], ctl.EXIT_BAD_SIZE, "bad size"),
        (["set", "g", "5 parsecs"], ctl.EXIT_BAD_SIZE, "unknown unit"),
        (["set", "g", "512MiB", "--for", "soon"], ctl.EXIT_USAGE, "bad --for"),
        (["pause"], ctl.EXIT_USAGE, "--all"),
        (["resume", "g", "--all"], ctl.EXIT_USAGE, "--all"),
    ],
)
def test_balloonctl_checks_arguments_before_asking(
    argv: list[str], status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The socket does not exist: these must fail on the arguments, not on the connection.
    assert ctl.main(["--socket", "/nonexistent/control.sock", *argv]) == status
    assert message in capsys.readouterr().err


def test_balloonctl_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ctl.main(["frobnicate"])
    assert exc.value.code == ctl.EXIT_USAGE
    with pytest.raises(SystemExit) as exc:
        ctl.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "exit status" in out
    assert "balloond is not running" in out


def test_status_table_in_mib() -> None:
    status = {
        "summary": {"guests": 1, "active": 1, "reclaimed_bytes": 512 << 20, "under_pressure": 0},
        "reload_error": "policies.default.min_size: not a size",
        "guests": [
            {
                "name": "web",
                "state": "active",
                "way": "libvirt",
                "mode": "manual",
                "policy": "default",
                "actual_bytes": 512 << 20,
                "target_bytes": 512 << 20,
                "available_bytes": 300 << 20,
                "hold_until": 1000.0 + 600,
                "last_decision": None,
                "last_action": {
                    "time": "1970-01-01T00:15:40+00:00",
                    "actor": "operator",
                    "old_bytes": 1024 << 20,
                    "new_bytes": 512 << 20,
                    "reason": "manual",
                },
            }
        ],
    }
    text = ctl.format_status(status, now=1000.0 + 60)
    assert "512 MiB reclaimed" in text
    assert "REFUSED" in text
    assert "min_size" in text
    row = text.splitlines()[-1].split()
    assert row[:6] == ["web", "active", "libvirt", "512", "512", "300"]
    assert "manual (9m left)" in text
    assert "1024->512 by operator" in text
    assert row[-1] == "manual"


def test_status_shows_task_failures_and_stale_stats() -> None:
    status = {
        "summary": {"guests": 1, "active": 1, "reclaimed_bytes": 0, "under_pressure": 0},
        "task_failures": [
            {
                "task": "host-planner",
                "failures": 2,
                "last_error": "KeyError: 'MemAvailable'",
                "last_failure_time": 1000.0,
                "restarting": True,
            }
        ],
        "guests": [],
    }
    text = ctl.format_status(status, now=1000.0)
    assert "task host-planner FAILED 2x, last: KeyError: 'MemAvailable'; restarting" in text
    guest = ctl.format_guest({"name": "web", "state": "active", "stats_stale_s": 42})
    assert "stats:      STALE, no guest report for 42 s" in guest


async def test_a_client_still_writing_a_huge_request_gets_its_reply(
    control: ControlAdapter,
) -> None:
    """1 MiB in one go: the daemon refuses it after 64 KiB, yet the client, whose write goes
    on past that, still reads the error reply instead of a reset connection."""
    reader, writer = await asyncio.open_unix_connection(str(control.path))
    try:
        writer.write(b'{"op": "status", "pad": "' + b"x" * (1 << 20) + b'"}\n')
        await writer.drain()
        reply = json.loads(await asyncio.wait_for(reader.readline(), 10))
        assert reply["error"]["code"] == "bad_request"
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_deeply_nested_request_gets_one_error_reply(control: ControlAdapter) -> None:
    replies = await _exchange(control.path, b"[" * 5000 + b"\n", b'{"op": "status"}\n')
    assert replies[0]["error"]["code"] == "bad_request"
    assert "bad JSON" in replies[0]["error"]["message"]
    assert replies[1]["ok"]  # and the connection still serves


def test_balloonctl_loads_neither_qemu_qmp_nor_the_controller() -> None:
    """balloonctl starts fast: it parses sizes and durations without the daemon's code."""
    heavy = ("qemu", "pydantic", "balloond.service.guest", "balloond.service.commands", "aiomqtt")
    code = (
        "import sys, balloond.programs.balloonctl; "
        f"print([m for m in sys.modules if m.split('.')[0] in {heavy!r} or m in {heavy!r}])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]", out


def test_status_shows_the_balloon_devices_features() -> None:
    guest = {"name": "web", "state": "active", "deflate_on_oom": False, "free_page_reporting": True}
    text = ctl.format_guest(guest)
    assert "balloon:    deflate-on-oom off, free-page-reporting on" in text
    table = ctl.format_status({"summary": {}, "guests": [guest, {**guest, "name": "db"}]})
    assert "deflate-on-oom off: web, db" in table
    unknown = ctl.format_guest({"name": "old", "state": "active"})  # an older QEMU: no line
    assert "balloon:" not in unknown
