"""The small adapters at the edges: sizes, QMP stats records, /proc parsing, discovery."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from qemu.qmp import ExecuteError
from qemu.qmp.qmp_client import BadReplyError

from balloond.adapters.discovery import GuestSpec, Way, discover, name_from_path
from balloond.adapters.procfs import parse_meminfo, parse_psi_some_avg10, read_host
from balloond.adapters.qmp import LeanClient, QmpLink
from balloond.core.errors import DisconnectedError
from balloond.core.link import LinkState
from balloond.core.stats import QMP_NOT_REPORTED, QMP_STAT_NAMES, BalloonStats
from balloond.core.units import GiB, MiB, fmt_size, parse_percent, parse_size
from testkit.sim import SimFleet, SimGuestSpec
from testkit.sim import commands as sim_commands
from testkit.sim.qmp_server import SimGuest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MiB", 512 * MiB),
        ("2GiB", 2 * GiB),
        ("1.5G", int(1.5 * GiB)),
        ("1048576", MiB),
        ("64 mib", 64 * MiB),
        ("1GB", 10**9),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "-5MiB", "5 parsecs", "", "1e99GiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"size|unit"):
        parse_size(text)


def test_parse_percent() -> None:
    assert parse_percent("12.5%") == 12.5
    with pytest.raises(ValueError, match="above 100"):
        parse_percent("150%")
    with pytest.raises(ValueError, match="percentage"):
        parse_percent("12")


@given(st.integers(min_value=0, max_value=1 << 44))
def test_fmt_size_round_trips_within_display_precision(n: int) -> None:
    text = fmt_size(n)
    half_unit = {"GiB": GiB // 20, "MiB": MiB // 2, "KiB": 512}.get(text[-3:], 0)
    assert abs(parse_size(text) - n) <= half_unit + 1


def _qmp_stats(**values: int) -> dict[str, object]:
    stats = dict.fromkeys(QMP_STAT_NAMES[:10], QMP_NOT_REPORTED)
    stats.update(values)
    return {"last-update": 1700000000, "stats": stats}


def test_stats_from_qmp_maps_not_reported_to_none() -> None:
    reply = _qmp_stats(**{"stat-total-memory": 512 * MiB, "stat-available-memory": 300 * MiB})
    stats = BalloonStats.from_qmp(reply)
    assert stats.total_bytes == 512 * MiB
    assert stats.available_bytes == 300 * MiB
    assert stats.free_bytes is None
    assert stats.oom_kills is None  # QEMU 7.2 does not have it at all
    assert stats.valid
    assert BalloonStats.from_qmp(stats.to_qmp()) == stats


def test_stats_before_first_report_are_not_valid() -> None:
    stats = BalloonStats.from_qmp({"last-update": 0, "stats": _qmp_stats()["stats"]})
    assert not stats.valid
    assert stats.total_bytes is None


@pytest.mark.parametrize(
    "reply",
    [
        [],
        {"last-update": -1, "stats": {}},
        {"last-update": "soon", "stats": {}},
        {"last-update": 1, "stats": []},
        {"last-update": 1, "stats": {"stat-free-memory": "many"}},
        {"last-update": 1, "stats": {"stat-free-memory": -3}},
    ],
)
def test_stats_odd_replies_are_clear_errors(reply: object) -> None:
    with pytest.raises(ValueError, match="guest-stats"):
        BalloonStats.from_qmp(reply)  # type: ignore[arg-type]


def test_meminfo_and_psi() -> None:
    info = parse_meminfo("MemTotal:  1000 kB\nMemAvailable:   500 kB\nHugePages_Total:  4\n")
    assert info == {"MemTotal": 1024000, "MemAvailable": 512000, "HugePages_Total": 4}
    psi = (
        "some avg10=1.50 avg60=0.20 avg300=0.00 total=12\nfull avg10=0.00 avg60=0 avg300=0 total=0"
    )
    assert parse_psi_some_avg10(psi) == 1.5
    assert parse_psi_some_avg10("") is None


def test_read_host_from_files(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 2048 kB\nMemFree: 100 kB\nMemAvailable: 1024 kB\n")
    snap = read_host(meminfo=meminfo, pressure=tmp_path / "absent")
    assert (snap.total_bytes, snap.available_bytes, snap.psi_some_avg10) == (2 * MiB, MiB, None)
    bad = tmp_path / "bad"
    bad.write_text("nothing useful\n")
    with pytest.raises(ValueError, match="MemTotal"):
        read_host(meminfo=bad, pressure=tmp_path / "absent")


def test_read_host_on_this_machine() -> None:
    snap = read_host()
    assert 0 < snap.available_bytes <= snap.total_bytes


def test_discover_static_and_globs(tmp_path: Path) -> None:
    socks = []
    for name in ("101", "vm two", "shared/7"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(tmp_path / f"{name}.qmp"))
        socks.append(s)
    (tmp_path / "notasocket.qmp").write_text("")
    static = GuestSpec("static", Way.QMP, "/nonexistent/static.qmp", "config")
    libvirt = GuestSpec("101", Way.LIBVIRT, "qemu:///system 101", "libvirt")
    try:
        found = discover(
            static=[static],
            globs=[str(tmp_path / "*.qmp")],
            shared_globs=[str(tmp_path / "shared" / "*.qmp")],
            found=[[libvirt]],
        )
    finally:
        for s in socks:
            s.close()
    assert {name: (spec.way, spec.address) for name, spec in found.items()} == {
        "static": (Way.QMP, "/nonexistent/static.qmp"),
        "101": (Way.QMP, str(tmp_path / "101.qmp")),  # the first source keeps the name
        "vm_two": (Way.QMP, str(tmp_path / "vm two.qmp")),
        "7": (Way.QMP_SHARED, str(tmp_path / "shared" / "7.qmp")),
    }
    assert name_from_path(Path("/x/a;b.qmp")) == "a_b"


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from balloond.service.serve import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        raise_open_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_nothing_listening_is_a_clear_disconnect(tmp_path: Path) -> None:
    link = QmpLink("ghost", tmp_path / "absent.qmp")
    with pytest.raises(DisconnectedError, match="cannot connect"):
        await link.connect(timeout_s=1.0)
    assert link.state is LinkState.DISCONNECTED
    stop = asyncio.Event()
    stop.set()
    assert await link.connect_with_retry(attempt_timeout_s=1.0, stop=stop) is False
    await link.close()


async def test_a_guest_that_answers_oddly_while_set_up_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An odd reply during the connect's discovery is a failed attempt, retried with
    backoff like a guest that is not there yet; it does not end the guest's loop."""
    params, real = sim_commands.COMMANDS["query-memory-size-summary"]
    odd_replies = [{"base-memory": "lots"}, {}]

    def sometimes_odd(guest: SimGuest, session: sim_commands.Session, args: Any) -> Any:
        return odd_replies.pop(0) if odd_replies else real(guest, session, args)

    monkeypatch.setitem(sim_commands.COMMANDS, "query-memory-size-summary", (params, sometimes_odd))
    with tempfile.TemporaryDirectory(prefix="odd", dir="/tmp") as tmp:
        async with SimFleet(dir=tmp, guests=[SimGuestSpec("odd", GiB)]) as fleet:
            link = QmpLink("odd", fleet.socket_path("odd"))
            try:
                ok = await link.connect_with_retry(
                    attempt_timeout_s=5.0, stop=asyncio.Event(), initial_backoff_s=0.01
                )
                assert ok
                assert not odd_replies
                assert link.boot_bytes == GiB
                assert link.state is LinkState.PROBING
            finally:
                await link.close()


async def test_the_qmp_client_answers_and_refuses_as_qemu_qmp_does(tmp_path: Path) -> None:
    """balloond's QMP client encodes each request once instead of qemu.qmp's three times;
    what comes back is what qemu.qmp's own execute() gives: the value, ExecuteError for an
    error reply, BadReplyError for a reply with neither, and one wire form per request."""
    replies: list[dict[str, Any]] = [
        {"return": {"actual": 5}},
        {"error": {"class": "DeviceNotActive", "desc": "No balloon device has been activated"}},
        {"error": "not an object"},
        {"nothing": True},
    ]
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version = {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}
        writer.write(b'{"QMP": {"version": %s, "capabilities": []}}\n' % _json(version))
        decoder, buffer = json.JSONDecoder(), ""
        while chunk := await reader.read(4096):
            buffer += chunk.decode()
            # qemu.qmp sends JSON objects back to back, without newlines, as QEMU reads them.
            while buffer:
                try:
                    request, end = decoder.raw_decode(buffer)
                except ValueError:
                    break  # the rest of this object is still on its way
                requests.append(buffer[:end].encode())
                buffer = buffer[end:]
                capabilities = request["execute"] == "qmp_capabilities"
                reply = {"return": {}} if capabilities else replies.pop(0)
                if "id" in request:
                    reply["id"] = request["id"]
                writer.write(_json(reply) + b"\n")
        writer.close()

    path = tmp_path / "odd.qmp"
    server = await asyncio.start_unix_server(serve, path=str(path))
    client = LeanClient("odd", on_event=lambda msg: None)
    try:
        async with asyncio.timeout(60):
            await _answers_and_refusals(client, path)
    finally:
        await client.disconnect()
        server.close()
        await server.wait_closed()
    assert requests[2] == b'{"execute":"balloon","arguments":{"value":1},"id":"__qmp#00001"}'


async def _answers_and_refusals(client: LeanClient, path: Path) -> None:
    await client.connect(str(path))
    assert await client.execute("query-balloon") == {"actual": 5}
    with pytest.raises(ExecuteError) as refused:
        await client.execute("balloon", {"value": 1})
    assert refused.value.error_class == "DeviceNotActive"
    with pytest.raises(BadReplyError, match="malformed"):
        await client.execute("query-balloon")
    with pytest.raises(BadReplyError, match="missing"):
        await client.execute("query-balloon")


def _json(value: object) -> bytes:
    return json.dumps(value).encode()
