"""The metrics endpoint over real HTTP, against a daemon with no guests.

Per-guest series against a lab guest are checked in test_service.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from balloond.adapters.metrics import MetricsAdapter
from balloond.core.errors import ConfigError
from balloond.runtime.config import parse_config, parse_host_port
from balloond.service.daemon import Daemon


@pytest.fixture
async def metrics(tmp_path: Path) -> AsyncIterator[MetricsAdapter]:
    config = parse_config(
        {
            "daemon": {"state_dir": str(tmp_path), "audit_log": False},
            "discovery": {"globs": []},
        }
    )
    adapter = MetricsAdapter(Daemon(config), address="127.0.0.1:0")
    stop = asyncio.Event()
    task = asyncio.create_task(adapter.run(stop), name="metrics-under-test")
    for _ in range(500):
        if adapter.bound is not None or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    try:
        yield adapter
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _http(adapter: MetricsAdapter, request: bytes) -> tuple[bytes, bytes]:
    assert adapter.bound is not None
    reader, writer = await asyncio.open_connection(*adapter.bound)
    try:
        writer.write(request)
        writer.write_eof()
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


async def test_scrape_parses(metrics: MetricsAdapter) -> None:
    head, body = await _http(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"text/plain; version=0.0.4" in head
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    guests = {s.labels["state"]: s.value for s in families["balloond_guests"].samples}
    assert guests["active"] == 0
    assert families["balloond_reload_failures"].type == "counter"
    assert "process_resident_memory_bytes" in families


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"\x00\x01garbage\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 10000 + b"\r\n\r\n", b"431"),
        (b"GET /metrics", b"400"),  # EOF before the headers end
    ],
)
async def test_bad_requests_get_errors(
    metrics: MetricsAdapter, request_bytes: bytes, status: bytes
) -> None:
    head, _ = await _http(metrics, request_bytes)
    assert head.split()[1] == status


async def test_head_has_no_body(metrics: MetricsAdapter) -> None:
    head, body = await _http(metrics, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b""


def test_addresses() -> None:
    assert parse_host_port("127.0.0.1:9847") == ("127.0.0.1", 9847)
    assert parse_host_port("[::1]:9847") == ("::1", 9847)
    for bad in ("9847", "::1:9847", "host:http", "127.0.0.1:70000", ":9847", "h:-1"):
        with pytest.raises(ValueError, match=r"address|port|brackets"):
            parse_host_port(bad)


def test_config_sections() -> None:
    config = parse_config({})
    assert config.metrics.enabled
    assert config.metrics.address == "127.0.0.1:9847"
    assert config.control.socket_path(config.daemon.runtime_dir) == Path(
        "/run/balloond/control.sock"
    )
    with pytest.raises(ConfigError) as exc:
        parse_config(
            {
                "metrics": {"address": "localhost", "port": 1},
                "control": {"socket": "/" + "x" * 200},
            }
        )
    lines = "\n".join(exc.value.lines())
    assert "metrics.address: not an address" in lines
    assert "metrics.port: unknown key" in lines
    assert "control.socket: a unix socket path can have at most 107 bytes" in lines
