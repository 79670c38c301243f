"""The MQTT adapter against a real Mosquitto and real lab guests.

A broker is started per test on a free port on 127.0.0.1 and always stopped. The daemon
runs in-process (``Daemon`` plus ``MqttAdapter``), except for the ``kill -9`` test, which
needs a process to kill: there ``balloond run`` is a subprocess. Guests are few (boots
cost seconds under TCG); tests without a guest need none to show what they show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from mqtt_helpers import (
    PREFIX,
    WAIT_S,
    WELL_FORMED_WRITES,
    Broker,
    Peer,
    hostile_request,
)
from mqtt_helpers import json_of as _json
from mqtt_helpers import payload as _payload
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from balloond.adapters.mqtt import (
    BrokerState,
    MqttAdapter,
    Outbox,
    StateThrottle,
    Topics,
    backoff_s,
    resolve_password,
    topic_segment,
    usable_reply_topic,
)
from balloond.core.errors import ConfigError
from balloond.core.events import BalloonChange
from balloond.core.ops import OPS
from balloond.core.units import MiB
from balloond.runtime.aio import cancel_and_wait
from balloond.runtime.config import MQTT_OPS, MqttConfig, load_config, parse_config
from balloond.service.commands import Commands
from balloond.service.daemon import Daemon
from testkit.lab import LabGuest

GuestFactory = Callable[..., Awaitable[LabGuest]]  # the make_guest fixture


# --- a test client -------------------------------------------------------------------------


async def first_or_exit(
    proc: asyncio.subprocess.Process, waiting: Awaitable[aiomqtt.Message]
) -> aiomqtt.Message | None:
    """What ``waiting`` gives, or None if the process exits first."""
    got = asyncio.ensure_future(waiting)
    exited = asyncio.create_task(proc.wait(), name="test:process-exit")
    try:
        await asyncio.wait([got, exited], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (got, exited):
            task.cancel()
        await asyncio.gather(got, exited, return_exceptions=True)
    return got.result() if got.done() and not got.cancelled() else None


def _replying_to(correlation: bytes) -> Callable[[aiomqtt.Message], bool]:
    return lambda m: getattr(m.properties, "CorrelationData", None) == correlation


def _state_is(name: str, pred: Callable[[dict[str, Any]], bool]) -> Callable[..., bool]:
    topic = Topics(PREFIX).state(name)
    return lambda m: m.topic.value == topic and bool(_payload(m)) and pred(_json(m))


# --- the daemon ----------------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


def write_config(
    tmp_path: Path, *, port: int, guests: Sequence[LabGuest] = (), **mqtt: Any
) -> Path:
    """A config for one test: its guests named by hand, MQTT on the test broker."""
    lines = [
        "[daemon]",
        "poll_interval_s = 1.0",
        f"state_dir = {_toml(tmp_path / 'state')}",
        f"runtime_dir = {_toml(tmp_path / 'run')}",
        'log_format = "text"',
        "[discovery]",
        "globs = []",
    ]
    for g in guests:
        lines += ["[[guests]]", f"name = {_toml(g.name)}", f"qmp = {_toml(g.qmp_socket)}"]
    section = {
        "host": "127.0.0.1",
        "port": port,
        "topic_prefix": PREFIX,
        "state_interval_s": 1.0,
        "reconnect_max_s": 2.0,
        "timeout_s": 5.0,
        **mqtt,
    }
    lines.append("[mqtt]")
    lines += [f"{k} = {_toml(v)}" for k, v in section.items()]
    path = tmp_path / "balloond.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@asynccontextmanager
async def running(
    config_path: Path, *, extra: Sequence[MqttConfig] = ()
) -> AsyncIterator[tuple[Daemon, MqttAdapter]]:
    """The daemon and its MQTT adapter in this event loop, stopped at the end.

    ``extra``: more adapters on the same daemon with other settings (e.g. read-only).
    """
    daemon = Daemon(load_config(config_path), config_path=config_path)
    adapter = MqttAdapter(daemon)
    others = [MqttAdapter(daemon, config=cfg) for cfg in extra]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(daemon.run(), name="test:daemon")]
    tasks += [
        asyncio.create_task(a.run(stop), name=f"test:mqtt-{i}")
        for i, a in enumerate([adapter, *others])
    ]
    try:
        yield daemon, adapter
    finally:
        stop.set()
        daemon.request_stop()
        async with asyncio.timeout(20):
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


async def wait_active(peer: Peer, name: str) -> dict[str, Any]:
    """Wait for a guest's retained state to say its stats flow; returns that state."""
    message = await peer.wait_for(_state_is(name, lambda s: s.get("state") == "active"))
    return _json(message)


def near(actual: int | None, target: int) -> bool:
    return actual is not None and abs(actual - target) <= 4 * MiB


async def wait_actual(peer: Peer, name: str, target: int, *, start: int = 0) -> None:
    await peer.wait_for(_state_is(name, lambda s: near(s.get("actual_bytes"), target)), start=start)


# --- units: config, topics, throttle, backoff, outbox --------------------------------------


def test_mqtt_section_is_optional_and_defaults_are_documented() -> None:
    assert parse_config({}).mqtt is None
    cfg = parse_config({"mqtt": {}}).mqtt
    assert cfg is not None
    assert cfg.effective_port == 1883
    assert cfg.effective_prefix() == f"balloond/{socket.gethostname()}"
    assert cfg.allow == MQTT_OPS
    assert cfg.protocol == "auto"
    assert MqttConfig(tls=True).effective_port == 8883
    assert parse_config({"mqtt": {"protocol": 5}}).mqtt == MqttConfig(protocol="5")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"password": "x"}, "needs a username"),
        ({"username": "u", "password": "x", "password_env": "P"}, "one of"),
        ({"key_file": "/k.pem"}, "cert_file"),
        ({"topic_prefix": "a/#"}, "cannot contain"),
        ({"topic_prefix": "/a"}, "topic prefix"),
        ({"allow": ["status", "reboot"]}, "allow"),
        ({"qos": 3}, "qos"),
        ({"protocol": "4"}, "protocol"),
        ({"keepalive_s": 0}, "keepalive_s"),
        ({"brokr": "x"}, "unknown key"),
    ],
)
def test_mqtt_section_rejects(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"mqtt": section})
    assert key in "\n".join(info.value.lines())


def test_every_key_is_documented_in_the_reference_config() -> None:
    text = (Path(__file__).parent.parent / "config" / "balloond.toml").read_text("utf-8")
    block = text[text.index("# [mqtt]\n") :]
    block = block[: block.index("\n\n")]
    examples = {}
    for line in block.splitlines():
        m = re.match(r"^# ([a-z_]+) = .+$", line)
        if m:
            examples[m.group(1)] = line.removeprefix("# ")
    assert set(examples) == set(MqttConfig.model_fields)
    for key, line in examples.items():
        section = tomllib.loads(line)
        if key.startswith("password"):
            section["username"] = "balloond"
        if key == "key_file":
            section["cert_file"] = "/etc/balloond/mqtt-client.pem"
        assert parse_config({"mqtt": section}).mqtt is not None, line


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n", encoding="utf-8")
    assert resolve_password(MqttConfig(username="u", password_file=secret)) == "s3cret"
    monkeypatch.setenv("BALLOOND_TEST_PW", "from-env")
    from_env = MqttConfig(username="u", password_env="BALLOOND_TEST_PW")
    assert resolve_password(from_env) == "from-env"
    inline = parse_config({"mqtt": {"username": "u", "password": "inline"}}).mqtt
    assert inline is not None
    assert resolve_password(inline) == "inline"
    assert "inline" not in repr(inline)
    assert resolve_password(MqttConfig()) is None
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_password(MqttConfig(username="u", password_file=tmp_path / "missing"))
    monkeypatch.delenv("BALLOOND_TEST_PW")
    with pytest.raises(ConfigError, match="not set"):
        resolve_password(from_env)


def test_allow_list_names_exactly_the_command_layer_ops() -> None:
    assert MQTT_OPS == OPS


def test_topics_keep_guest_names_apart() -> None:
    names = ["web", "web/1", "web+1", "web#", "50%", "web_1", "web%2F1"]
    segments = [topic_segment(n) for n in names]
    assert len(set(segments)) == len(names)
    assert all(not any(c in s for c in "/+#") for s in segments)
    topics = Topics("p")
    assert topics.state("a/b") == "p/guest/a%2Fb/state"
    assert usable_reply_topic("clients/me/reply", topics)
    assert usable_reply_topic("p/reply", topics)
    for bad in ("", "a/+/b", "a/#", "$SYS/x", "a\x00b", "p/cmd", "p/status", "p/guest/x/state"):
        assert not usable_reply_topic(bad, topics)


def test_state_throttle_publishes_changes_at_most_once_per_interval() -> None:
    t = StateThrottle()
    due, _ = t.due({"a": b"1", "b": b"1"}, now_s=0.0, interval_s=5.0)
    assert due == [("a", b"1"), ("b", b"1")]
    for name, payload in due:
        t.mark_sent(name, payload, now_s=0.0)
    # unchanged: nothing; changed too soon: held back, with the time it falls due
    due, next_due = t.due({"a": b"1", "b": b"2"}, now_s=1.0, interval_s=5.0)
    assert due == []
    assert next_due == 5.0
    # ...then the latest value goes out, once
    due, _ = t.due({"a": b"1", "b": b"3"}, now_s=5.0, interval_s=5.0)
    assert due == [("b", b"3")]
    t.mark_sent("b", b"3", now_s=5.0)
    # a guest that went away: its retained topic is cleared with an empty payload
    due, _ = t.due({"b": b"3"}, now_s=6.0, interval_s=5.0)
    assert due == [("a", b"")]
    t.mark_sent("a", b"", now_s=6.0)
    assert "a" not in t.sent
    # after a reconnect everything goes out again at once, rate limit or not
    t.force_all()
    due, _ = t.due({"b": b"3"}, now_s=6.5, interval_s=5.0)
    assert due == [("b", b"3")]


def test_backoff_is_exponential_capped_and_randomised() -> None:
    low = [backoff_s(n, cap_s=30.0, rand=lambda: 0.0) for n in range(10)]
    high = [backoff_s(n, cap_s=30.0, rand=lambda: 1.0) for n in range(10)]
    assert low[:3] == [0.25, 0.5, 1.0]
    assert high[:3] == [0.5, 1.0, 2.0]
    assert max(high) == 30.0
    assert high[-1] == 30.0
    assert backoff_s(10_000, cap_s=30.0) <= 30.0
    rng = random.Random(1)
    assert len({backoff_s(5, cap_s=30.0, rand=rng.random) for _ in range(20)}) > 1


def test_outbox_is_bounded_and_drops_oldest_events() -> None:
    box = Outbox(max_events=3)
    for i in range(5):
        box.put_event({"n": i})
    assert [e["n"] for e in box.events] == [2, 3, 4]
    assert box.dropped_events == 2
    assert box.wake.is_set()


# --- against a real broker, no guest needed -------------------------------------------------


@pytest.mark.broker
async def test_online_offline_and_read_only(broker: Broker, tmp_path: Path) -> None:
    """Status is retained; a clean stop says offline; the allow-list refuses what it omits."""
    path = write_config(tmp_path, port=broker.port, allow=["status", "explain"])
    async with Peer(broker.port) as peer:
        await peer.subscribe(f"{PREFIX}/status", f"{peer.reply_topic}", f"{PREFIX}/reply")
        async with running(path) as (_daemon, adapter):
            # online is said once the command topic is subscribed: a request sent now is served
            await peer.wait_for(lambda m: _payload(m) == b"online")
            ok = await peer.request({"op": "status"})
            assert ok["ok"] is True
            assert ok["result"]["guests"] == []
            refused = await peer.request({"op": "reload"})
            assert refused == {
                "ok": False,
                "error": {"code": "not_permitted", "message": refused["error"]["message"]},
            }
            assert adapter.state is BrokerState.CONNECTED
        await peer.wait_for(lambda m: _payload(m) == b"offline")
    assert list(adapter.history)[-1] is BrokerState.STOPPED


@pytest.mark.broker
async def test_a_reload_that_changes_mqtt_reconnects_with_the_new_settings(
    broker: Broker, tmp_path: Path
) -> None:
    path = write_config(tmp_path, port=broker.port)
    async with Peer(broker.port) as peer:
        await peer.subscribe("test/+/status")
        async with running(path) as (daemon, adapter):
            await peer.wait_for(lambda m: m.topic.value == f"{PREFIX}/status")
            write_config(tmp_path, port=broker.port, topic_prefix="test/moved")
            assert (await Commands(daemon).handle({"op": "reload"}))["ok"] is True
            await peer.wait_for(
                lambda m: m.topic.value == f"{PREFIX}/status" and _payload(m) == b"offline"
            )
            await peer.wait_for(
                lambda m: m.topic.value == "test/moved/status" and _payload(m) == b"online"
            )
            assert adapter.connects_total == 2


@pytest.mark.broker
async def test_password_auth_keeps_out_clients_without_credentials(tmp_path: Path) -> None:
    broker = Broker(tmp_path, users={"balloond": "daemon-pw", "ops": "ops-pw"})
    await broker.start()
    try:
        secret = tmp_path / "mqtt-password"
        secret.write_text("daemon-pw\n", encoding="utf-8")
        path = write_config(tmp_path, port=broker.port, username="balloond", password_file=secret)
        async with running(path) as (_daemon, adapter):
            async with Peer(broker.port, username="ops", password="ops-pw") as ops:
                await ops.subscribe(f"{PREFIX}/status", ops.reply_topic)
                await ops.wait_for(lambda m: _payload(m) == b"online")
                assert (await ops.request({"op": "status"}))["ok"] is True
            for username, password in ((None, None), ("ops", "wrong"), ("mallory", "x")):
                with pytest.raises(MqttConnectError):
                    async with Peer(broker.port, username=username, password=password):
                        pass
            assert adapter.requests_total == 1
    finally:
        await broker.stop()


@pytest.mark.broker
async def test_a_hung_broker_never_holds_up_the_daemon_and_its_queue_stays_bounded(
    broker: Broker, tmp_path: Path
) -> None:
    path = write_config(tmp_path, port=broker.port, timeout_s=1.0, max_queued_events=50)
    async with Peer(broker.port) as peer, running(path) as (daemon, adapter):
        await peer.subscribe(f"{PREFIX}/status", f"{PREFIX}/events")
        await peer.wait_for(lambda m: _payload(m) == b"online")
        broker.freeze()
        try:
            # What every decision does: call the daemon's listeners. They return at once
            # and the queue keeps only the newest records.
            ctrl = SimpleNamespace(name="web")
            for n in range(1000):
                daemon._notify(ctrl, BalloonChange("web", {"n": n}))  # type: ignore[arg-type]
            assert len(adapter.outbox.events) <= 50
            assert adapter.outbox.dropped_events >= 950
            # The adapter notices (a publish times out), and its next connects time out
            # too: the kernel accepts them, the frozen broker never answers.
            async with asyncio.timeout(WAIT_S):
                while list(adapter.history).count(BrokerState.BACKOFF) < 3:
                    await asyncio.sleep(0.1)
        finally:
            broker.thaw()
        mark = len(peer.messages)
        newest = await peer.wait_for(lambda m: _json(m).get("n") == 999)
        got = [_json(m)["n"] for m in peer.messages[mark:] if m.topic.value.endswith("/events")]
        assert got[-1] == 999
        assert len(set(got)) <= 50
        assert newest.topic.value == f"{PREFIX}/events"
        # The connects that timed out while the broker hung left nothing behind: once it
        # has caught up, the daemon is connected and its retained status says online.
        async with Peer(broker.port) as late:
            await late.subscribe(f"{PREFIX}/status")
            status = await late.wait_for(lambda m: m.topic.value == f"{PREFIX}/status")
            assert _payload(status) == b"online"
        assert adapter.state is BrokerState.CONNECTED


def make_certificates(directory: Path) -> dict[str, Path]:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test CA")
    extensions = {"server": "subjectAltName=IP:127.0.0.1", "client": "keyUsage=digitalSignature"}
    for name, ext in extensions.items():
        (directory / f"{name}.ext").write_text(ext + "\n", encoding="utf-8")
        openssl(
            "req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"
        )
        openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-out", f"{name}.pem"),
            *("-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", f"{name}.ext"),
        )
    names = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    return {name: directory / name for name in names}


@pytest.mark.broker
async def test_tls_with_a_private_ca_and_a_client_certificate(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    certs = make_certificates(tmp_path)
    broker = Broker(
        tmp_path,
        tls={
            "cafile": certs["ca.pem"],
            "certfile": certs["server.pem"],
            "keyfile": certs["server.key"],
        },
    )
    await broker.start()
    try:
        path = write_config(
            tmp_path,
            port=broker.tls_port,
            ca_file=certs["ca.pem"],
            cert_file=certs["client.pem"],
            key_file=certs["client.key"],
        )
        async with Peer(broker.port) as peer:  # the test listens on the plain listener
            await peer.subscribe(f"{PREFIX}/status", peer.reply_topic)
            async with running(path) as (_, adapter):
                await peer.wait_for(lambda m: _payload(m) == b"online")
                assert (await peer.request({"op": "status"}))["ok"] is True
                assert adapter.state is BrokerState.CONNECTED
    finally:
        await broker.stop()


class V311OnlyBroker:
    """Stands in front of the real broker as a broker without MQTT v5 would: a v5 CONNECT
    gets CONNACK "unacceptable protocol version", anything else is passed through."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.refused_v5 = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> V311OnlyBroker:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            head = await reader.readexactly(2)
            length, shift, last = head[1] & 0x7F, 7, head[1]
            header = bytearray(head)
            while last & 0x80:
                last = (await reader.readexactly(1))[0]
                header.append(last)
                length |= (last & 0x7F) << shift
                shift += 7
            body = await reader.readexactly(length)
            if body[6] == 5:  # protocol level, after the "\x00\x04MQTT" name
                self.refused_v5 += 1
                writer.write(b"\x20\x02\x00\x01")
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_writer.write(bytes(header) + body)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._pipes.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.mark.broker
async def test_falls_back_to_mqtt_311_when_the_broker_has_no_v5(
    broker: Broker, tmp_path: Path
) -> None:
    async with V311OnlyBroker(broker.port) as old:
        path = write_config(tmp_path, port=old.port)
        async with Peer(broker.port, v5=False) as peer:
            await peer.subscribe(f"{PREFIX}/status", f"{PREFIX}/reply")
            async with running(path) as (_daemon, _adapter):
                await peer.wait_for(lambda m: _payload(m) == b"online")
                reply = await peer.request({"op": "status"})
                assert reply["ok"] is True
        assert old.refused_v5 == 1


@pytest.mark.broker
async def test_kill_9_leaves_offline_from_the_will(broker: Broker, tmp_path: Path) -> None:
    path = write_config(tmp_path, port=broker.port)
    path.write_text(path.read_text() + "[metrics]\nenabled = false\n")
    log = tmp_path / "balloond.log"
    async with Peer(broker.port) as peer:
        await peer.subscribe(f"{PREFIX}/status")
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "balloond", "run", "--config", str(path),
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        try:
            online = await first_or_exit(proc, peer.wait_for(lambda m: _payload(m) == b"online"))
            assert online is not None, log.read_text()
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            offline = await peer.wait_for(
                lambda m: _payload(m) == b"offline", start=peer.messages.index(online)
            )
            assert offline.topic.value == f"{PREFIX}/status"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    # and whoever looks later sees it too: the Will is retained
    async with Peer(broker.port, v5=False) as late:
        await late.subscribe(f"{PREFIX}/status")
        retained = await late.wait_for(lambda m: m.topic.value == f"{PREFIX}/status")
        assert _payload(retained) == b"offline"
        assert retained.retain


# --- against real guests ---------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.broker
async def test_set_moves_a_real_balloon_over_v5_and_311(
    broker: Broker, make_guest: GuestFactory, tmp_path: Path
) -> None:
    guest = await make_guest("web", memory_mib=512)
    path = write_config(tmp_path, port=broker.port, guests=[guest])
    async with (
        Peer(broker.port, v5=True) as v5,
        Peer(broker.port, v5=False) as v311,
        running(path) as (daemon, _adapter),
    ):
        await v5.subscribe(f"{PREFIX}/guest/+/state", f"{PREFIX}/events", v5.reply_topic)
        await v311.subscribe(f"{PREFIX}/reply")
        state = await wait_active(v5, "web")
        assert state["boot_bytes"] == 512 * MiB
        assert state["policy"] == "default"

        mark = len(v5.messages)
        # (not 384 MiB: the engine's first step from 512 MiB may land there by itself)
        reply = await v5.request({"op": "set", "guest": "web", "size": "336MiB"})
        assert reply["ok"] is True, reply
        assert reply["result"]["mode"] == "manual"
        await wait_actual(v5, "web", 336 * MiB, start=mark)
        event = await v5.wait_for(
            lambda m: m.topic.value == f"{PREFIX}/events" and _json(m).get("actor") == "operator",
            start=mark,
        )
        assert _json(event)["new_bytes"] == 336 * MiB
        assert _json(event)["guest"] == "web"

        mark = len(v5.messages)
        reply = await v311.request({"op": "set", "guest": "web", "size": 448 * MiB, "hold": "5m"})
        assert reply["ok"] is True, reply
        await wait_actual(v5, "web", 448 * MiB, start=mark)
        link_actual = daemon.guests["web"].history[-1].actual_bytes
        assert near(link_actual, 448 * MiB)


@pytest.mark.lab
@pytest.mark.broker
async def test_a_thousand_hostile_requests_get_a_thousand_error_replies(
    broker: Broker, make_guest: GuestFactory, tmp_path: Path
) -> None:
    guest = await make_guest("web", memory_mib=512)
    path = write_config(tmp_path, port=broker.port, guests=[guest])
    read_only = MqttConfig(
        host="127.0.0.1",
        port=broker.port,
        client_id="balloond-read-only",
        topic_prefix=f"{PREFIX}-ro",
        allow=("status", "explain"),
        timeout_s=5.0,
    )
    rng = random.Random(20240601)
    n = 1000
    async with Peer(broker.port) as peer, running(path, extra=[read_only]) as (daemon, _):
        await peer.subscribe(f"{PREFIX}/guest/+/state", peer.reply_topic)
        await wait_active(peer, "web")
        ctrl = daemon.guests["web"]
        samples_before = ctrl.history[-1].t_s

        bodies = [hostile_request(i, rng) for i in range(n - 20)]
        sent: dict[bytes, str] = {}
        window = 100
        for start in range(0, len(bodies), window):
            mark = len(peer.messages)
            for i, body in enumerate(bodies[start : start + window], start):
                corr = i.to_bytes(4, "big")
                sent[corr] = "main"
                await peer.publish_request(body, correlation=corr)
            last = min(start + window, len(bodies)) - 1
            await peer.wait_for(_replying_to(last.to_bytes(4, "big")), start=mark)
        # the last 20: operations the read-only adapter does not permit
        for i in range(n - 20, n):
            corr = i.to_bytes(4, "big")
            sent[corr] = "ro"
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = peer.reply_topic
            props.CorrelationData = corr
            body = rng.choice(WELL_FORMED_WRITES)
            await peer.client.publish(f"{PREFIX}-ro/cmd", json.dumps(body), qos=1, properties=props)
        await peer.wait_for(_replying_to((n - 1).to_bytes(4, "big")))
        # give stray duplicates a moment to show before counting
        await asyncio.sleep(1.0)
        replies = [m for m in peer.messages if m.topic.value == peer.reply_topic]
        by_corr = {getattr(m.properties, "CorrelationData", None): _json(m) for m in replies}
        assert len(replies) == n
        assert set(by_corr) == set(sent)
        assert all(r["ok"] is False for r in by_corr.values())
        codes = {r["error"]["code"] for r in by_corr.values()}
        assert codes == {
            "bad_request",
            "unknown_op",
            "unknown_guest",
            "out_of_bounds",
            "not_permitted",
        }, codes
        assert all(r["error"]["message"] for r in by_corr.values())
        assert all(
            by_corr[(n - 1 - k).to_bytes(4, "big")]["error"]["code"] == "not_permitted"
            for k in range(20)
        )

        # ...and the daemon kept controlling its guest all along, and still obeys
        assert ctrl.history[-1].t_s > samples_before
        assert ctrl.intent.mode.value == "auto"  # nothing the read-only topic refused ran
        mark = len(peer.messages)
        assert (await peer.request({"op": "set", "guest": "web", "size": "320MiB"}))["ok"]
        await wait_actual(peer, "web", 320 * MiB, start=mark)


@pytest.mark.lab
@pytest.mark.broker
async def test_broker_outage_control_continues_then_state_and_commands_return(
    broker: Broker, make_guest: GuestFactory, tmp_path: Path
) -> None:
    guest = await make_guest("web", memory_mib=512)
    path = write_config(tmp_path, port=broker.port, guests=[guest])
    async with running(path) as (daemon, adapter):
        async with Peer(broker.port) as peer:
            await peer.subscribe(f"{PREFIX}/guest/+/state", peer.reply_topic)
            await wait_active(peer, "web")
        ctrl = daemon.guests["web"]

        await broker.stop()
        # The broker is gone for 20 s: the guest is still polled, and a command given
        # another way (here straight to the command layer) still moves its balloon.
        cycles, polled = daemon.cycles, ctrl.history[-1].t_s
        reply = await Commands(daemon).handle({"op": "set", "guest": "web", "size": "352MiB"})
        assert reply["ok"] is True, reply
        await asyncio.sleep(20)
        assert daemon.cycles > cycles
        assert ctrl.history[-1].t_s > polled
        assert near(ctrl.history[-1].actual_bytes, 352 * MiB)
        assert adapter.state in (BrokerState.BACKOFF, BrokerState.CONNECTING)

        await broker.start()  # empty: no persistence, so every retained message is gone
        async with Peer(broker.port) as peer:
            await peer.subscribe(f"{PREFIX}/status", f"{PREFIX}/guest/+/state", peer.reply_topic)
            await peer.wait_for(
                lambda m: m.topic.value == f"{PREFIX}/status" and _payload(m) == b"online"
            )
            state = await peer.wait_for(_state_is("web", lambda s: s.get("mode") == "manual"))
            assert near(_json(state)["actual_bytes"], 352 * MiB)
            mark = len(peer.messages)
            reply = await peer.request({"op": "set", "guest": "web", "size": "416MiB"})
            assert reply["ok"] is True, reply
            await wait_actual(peer, "web", 416 * MiB, start=mark)
        states = list(adapter.history)
        assert BrokerState.BACKOFF in states
        assert states[states.index(BrokerState.BACKOFF) :].count(BrokerState.CONNECTED) >= 1
        assert adapter.connects_total >= 2


@pytest.mark.lab
@pytest.mark.broker
async def test_a_guest_that_goes_away_has_its_retained_state_cleared(
    broker: Broker, make_guest: GuestFactory, tmp_path: Path
) -> None:
    guest = await make_guest("db", memory_mib=512, boot=False)
    path = write_config(tmp_path, port=broker.port, guests=[guest])
    topic, ghost = Topics(PREFIX).state("db"), Topics(PREFIX).state("ghost")
    async with Peer(broker.port) as peer:
        await peer.subscribe(f"{PREFIX}/guest/+/state")
        # a guest of an earlier run that no longer exists left its retained state behind
        await peer.client.publish(ghost, b'{"name": "ghost"}', qos=1, retain=True)
        await peer.wait_for(lambda m: m.topic.value == ghost)
        async with running(path) as (daemon, _):
            await peer.wait_for(lambda m: m.topic.value == ghost and _payload(m) == b"")
            await peer.wait_for(lambda m: m.topic.value == topic and bool(_payload(m)))
            # the operator removes the guest from the config and reloads
            write_config(tmp_path, port=broker.port, guests=[])
            assert (await Commands(daemon).handle({"op": "reload"}))["ok"] is True
            await peer.wait_for(lambda m: m.topic.value == topic and _payload(m) == b"")


# --- stopping, whatever the broker is doing --------------------------------------------------


async def _stopped_within(adapter_task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Set ``stop``; the adapter must return well before any broker timeout (60 s here)
    could have ended its wait for it."""
    stop.set()
    async with asyncio.timeout(30):
        await adapter_task


@pytest.mark.broker
@pytest.mark.parametrize("moment", ["connecting", "connected"])
async def test_the_adapter_stops_even_when_the_broker_hangs(
    broker: Broker, tmp_path: Path, moment: str
) -> None:
    """A frozen broker while the adapter connects (CONNACK never comes) or while it is
    connected (the goodbye publish and the disconnect get no answer): told to stop, it
    returns within its share of the stop budget, not after its 60 s timeouts."""
    path = write_config(tmp_path, port=broker.port, timeout_s=60.0, keepalive_s=60)
    daemon = Daemon(load_config(path), config_path=path)
    adapter = MqttAdapter(daemon)
    stop = asyncio.Event()
    if moment == "connecting":
        broker.freeze()
    task = asyncio.create_task(adapter.run(stop), name="test:mqtt")
    try:
        wanted = BrokerState.CONNECTING if moment == "connecting" else BrokerState.CONNECTED
        async with asyncio.timeout(WAIT_S):
            while adapter.state is not wanted:
                await asyncio.sleep(0.05)
        if moment == "connected":
            broker.freeze()
        await _stopped_within(task, stop)
        assert adapter.state is BrokerState.STOPPED
    finally:
        broker.thaw()
        stop.set()
        await cancel_and_wait([task])


@pytest.mark.broker
async def test_the_adapter_stops_when_a_cancel_is_swallowed(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11, asyncio.wait_for (inside every aiomqtt publish) loses a cancel that
    arrives with its result, and the cancelled task runs on. Stopping must not hang on it
    (it did: the thousand-requests and retained-state tests timed out in shutdown)."""
    swallowed = asyncio.Event()
    publisher = MqttAdapter._publisher

    async def publisher_that_swallows_one_cancel(self: MqttAdapter, s: Any) -> None:
        try:
            await publisher(self, s)
        except asyncio.CancelledError:
            swallowed.set()  # what wait_for's race does: the task carries on
        await publisher(self, s)

    monkeypatch.setattr(MqttAdapter, "_publisher", publisher_that_swallows_one_cancel)
    path = write_config(tmp_path, port=broker.port)
    daemon = Daemon(load_config(path), config_path=path)
    adapter = MqttAdapter(daemon)
    stop = asyncio.Event()
    task = asyncio.create_task(adapter.run(stop), name="test:mqtt")
    try:
        async with asyncio.timeout(WAIT_S):
            while adapter.state is not BrokerState.CONNECTED:
                await asyncio.sleep(0.05)
        await _stopped_within(task, stop)
        assert swallowed.is_set()
    finally:
        stop.set()
        await cancel_and_wait([task])


async def test_cancel_and_wait_repeats_a_cancel_that_did_not_take() -> None:
    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)  # cancelled again: this one ends it

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], budget_s=WAIT_S) == set()
    assert task.cancelled()
