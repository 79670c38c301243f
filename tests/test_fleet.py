"""`balloonctl fleet` and `balloonctl --broker`: three daemons on one real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from daemon_helpers import WAIT_S, until
from mqtt_helpers import Broker

from balloond.adapters.mqtt import MqttAdapter
from balloond.core.units import GiB, MiB
from balloond.programs import balloonctl
from balloond.runtime.config import parse_config
from balloond.service.daemon import Daemon
from balloond.service.guest import Mode
from testkit.sim import SimFleet, SimGuestSpec

pytestmark = pytest.mark.broker
HOSTS = ("h1", "h2", "h3")


@contextlib.asynccontextmanager
async def host(tmp_path: Path, name: str, port: int) -> AsyncIterator[Daemon]:
    """One host: two simulated guests, a daemon publishing under balloond/NAME."""
    sock_dir = tmp_path / name / "qmp"
    sock_dir.mkdir(parents=True)
    specs = [SimGuestSpec(f"{name}-vm{i}", GiB) for i in range(2)]
    config = parse_config(
        {
            "daemon": {
                "poll_interval_s": 1.0,
                "state_dir": str(tmp_path / name / "state"),
                "runtime_dir": str(tmp_path / name / "run"),
            },
            "discovery": {"globs": [f"{sock_dir}/*.sock"], "rescan_interval_s": 0.5},
            "metrics": {"enabled": False},
            "mqtt": {
                "host": "127.0.0.1",
                "port": port,
                "topic_prefix": f"balloond/{name}",
                "client_id": f"balloond-{name}",
                "state_interval_s": 0.5,
                "reconnect_max_s": 2.0,
            },
        }
    )
    async with SimFleet(dir=sock_dir, guests=specs):
        daemon = Daemon(config)
        adapter = MqttAdapter(daemon)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(daemon.run(), name=f"daemon-{name}"),
            asyncio.create_task(adapter.run(stop), name=f"mqtt-{name}"),
        ]
        try:
            yield daemon
        finally:
            stop.set()
            daemon.request_stop()
            async with asyncio.timeout(20):
                await asyncio.gather(*tasks, return_exceptions=True)


async def ctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = await asyncio.to_thread(balloonctl.main, list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


async def test_fleet_shows_every_host_and_a_command_reaches_one(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = f"127.0.0.1:{broker.port}"
    async with contextlib.AsyncExitStack() as stack:
        daemons = {
            n: await stack.enter_async_context(host(tmp_path, n, broker.port)) for n in HOSTS
        }
        assert await until(lambda: all(len(d.guests) == 2 for d in daemons.values()))

        rows: list[dict[str, object]] = []
        end = asyncio.get_running_loop().time() + WAIT_S
        while asyncio.get_running_loop().time() < end:
            status, out, err = await ctl(capsys, "--broker", where, "fleet", "--json")
            assert status == 0, err
            rows = json.loads(out)
            if len(rows) == 3 and all(r["online"] and r["guests"] == 2 for r in rows):
                break
            await asyncio.sleep(0.5)
        assert [r["host"] for r in rows] == [f"balloond/{n}" for n in HOSTS], rows
        assert all(r["online"] and r["guests"] == 2 for r in rows), rows
        assert rows[1]["guest_names"] == ["h2-vm0", "h2-vm1"]

        status, out, err = await ctl(capsys, "--broker", where, "fleet")
        assert status == 0, err
        assert out.startswith("3 hosts (0 offline), 6 guests")
        assert "balloond/h3" in out

        # A command to one host's daemon over MQTT.
        status, out, err = await ctl(
            capsys, "--broker", where, "--host", "h2", "set", "h2-vm1", "600MiB"
        )
        assert status == 0, err
        assert "h2-vm1: held at 600 MiB" in out
        moved = daemons["h2"].guests["h2-vm1"]
        assert (moved.intent.mode, moved.intent.manual_target_bytes) == (Mode.MANUAL, 600 * MiB)
        assert await until(
            lambda: bool(moved.history) and abs(moved.history[-1].actual_bytes - 600 * MiB) <= MiB
        ), "the balloon did not move to 600MiB"
        assert daemons["h1"].guests["h1-vm1"].intent.mode is Mode.AUTO
        # An unknown host: a clear error, not a hang.
        status, _, err = await ctl(
            capsys, "--broker", where, "--timeout", "2", "--host", "nope", "status"
        )
        assert status == balloonctl.EXIT_NOT_RUNNING
        assert "no reply from balloond/nope" in err


async def test_fleet_without_a_broker_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = await ctl(capsys, "--broker", "127.0.0.1:1", "--timeout", "2", "fleet")
    assert status == balloonctl.EXIT_NOT_RUNNING
    assert "broker 127.0.0.1:1" in err
