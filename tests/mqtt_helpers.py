"""A real Mosquitto broker, an MQTT test client and hostile requests, for the MQTT tests
and the soak."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import random
import signal
import socket
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from balloond.core.ops import MAX_REQUEST_BYTES

PREFIX = "test/balloond"
#: Generous bounds on waits for things that do happen; a test fails, not hangs, if not.
WAIT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Broker:
    """One Mosquitto on 127.0.0.1; ``start()`` and ``stop()`` as often as needed (same port).

    ``users``: require these name/password pairs (a file made with ``mosquitto_passwd -b``).
    ``tls``: also listen on ``tls_port`` with TLS; keys ``cafile``, ``certfile``, ``keyfile``
    as mosquitto names them, and clients must present a certificate signed by the CA.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        tls: dict[str, Path] | None = None,
    ) -> None:
        self.port = free_port()
        self.tls_port = free_port()
        self.log = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        self._process: asyncio.subprocess.Process | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            # As root, mosquitto would switch to its own user, which cannot read pytest's
            # private tmp dir (the password file): stay whoever runs the tests.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        if users:
            pwfile = workdir / "mosquitto.passwd"
            pwfile.touch()
            for name, password in users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pwfile), name, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines.append(f"listener {self.tls_port} 127.0.0.1")
            lines += [f"{key} {path}" for key, path in tls.items()]
            lines.append("require_certificate true")
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")

    async def start(self, timeout_s: float = 10.0) -> None:
        with self.log.open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                "mosquitto", "-c", str(self.conf), stdout=out, stderr=subprocess.STDOUT
            )
        async with asyncio.timeout(timeout_s):
            while True:
                if self._process.returncode is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    await writer.wait_closed()
                    return
                await asyncio.sleep(0.05)

    def freeze(self) -> None:
        """SIGSTOP: a hung broker (connections are still accepted by the kernel)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    async def stop(self, timeout_s: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        process.send_signal(signal.SIGCONT)
        try:
            async with asyncio.timeout(timeout_s):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


class Peer:
    """An MQTT client as an operator's tool would be: subscribes, collects, requests."""

    def __init__(
        self,
        port: int,
        *,
        v5: bool = True,
        username: str | None = None,
        password: str | None = None,
        prefix: str = PREFIX,
    ) -> None:
        self.v5 = v5
        self.prefix = prefix
        self.client = aiomqtt.Client(
            "127.0.0.1",
            port,
            username=username,
            password=password,
            identifier=f"test-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            timeout=10,
        )
        self.messages: list[aiomqtt.Message] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reply_topic = f"test/replies/{uuid.uuid4().hex[:8]}"

    async def __aenter__(self) -> Peer:
        await self.client.__aenter__()
        self._task = asyncio.create_task(self._collect(), name="test:mqtt-peer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(None, None, None)

    async def _collect(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in self.client.messages:
                self.messages.append(message)
                self._arrived.set()

    async def subscribe(self, *topics: str) -> None:
        for topic in topics:
            await self.client.subscribe(topic, qos=1)

    async def wait_for(
        self, pred: Callable[[aiomqtt.Message], bool], *, timeout_s: float = WAIT_S, start: int = 0
    ) -> aiomqtt.Message:
        """The first collected message (from index ``start``) that ``pred`` accepts."""
        async with asyncio.timeout(timeout_s):
            seen = start
            while True:
                for message in self.messages[seen:]:
                    if pred(message):
                        return message
                seen = len(self.messages)
                self._arrived.clear()
                await self._arrived.wait()

    async def publish_request(self, body: bytes, *, correlation: bytes | None = None) -> None:
        props = None
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = self.reply_topic
            if correlation is not None:
                props.CorrelationData = correlation
        await self.client.publish(f"{self.prefix}/cmd", body, qos=1, properties=props)

    async def request(self, req: dict[str, Any], *, prefix: str | None = None) -> dict[str, Any]:
        """One request and its reply: v5 by correlation data, 3.1.1 by ``id``."""
        prefix = prefix or self.prefix
        mark = len(self.messages)
        if self.v5:
            corr = uuid.uuid4().bytes
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = self.reply_topic
            props.CorrelationData = corr
            await self.client.publish(f"{prefix}/cmd", json.dumps(req), qos=1, properties=props)
            reply = await self.wait_for(
                lambda m: (
                    m.topic.value == self.reply_topic
                    and getattr(m.properties, "CorrelationData", None) == corr
                ),
                start=mark,
            )
        else:
            rid = uuid.uuid4().hex
            await self.client.publish(f"{prefix}/cmd", json.dumps({**req, "id": rid}), qos=1)
            reply = await self.wait_for(
                lambda m: m.topic.value == f"{prefix}/reply" and json_of(m).get("id") == rid,
                start=mark,
            )
        return json_of(reply)

    def retained(self, topic: str) -> bytes | None:
        """The last payload seen on ``topic`` (retained topics: the current value)."""
        for message in reversed(self.messages):
            if message.topic.value == topic:
                return payload(message)
        return None


def payload(message: aiomqtt.Message) -> bytes:
    raw = message.payload
    return raw if isinstance(raw, bytes) else str(raw).encode()


def json_of(message: aiomqtt.Message) -> dict[str, Any]:
    try:
        obj = json.loads(payload(message))
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


HOSTILE: list[bytes | dict[str, Any]] = [
    b"",
    b"{",
    b"not json",
    b"\xff\xfe\x00garbage",
    b"null",
    b"[]",
    b"42",
    b'"status"',
    b"[" * 5000,
    b'{"op": "status"' + b" " * 10,
    {},
    {"op": None},
    {"op": 5},
    {"op": "reboot"},
    {"op": "__class__"},
    {"op": "STATUS"},
    {"op": "status", "evil": True},
    {"op": "status", "guest": 7},
    {"op": "status", "guest": "nope"},
    {"op": "set"},
    {"op": "set", "guest": "web"},
    {"op": "set", "guest": 1, "size": "256MiB"},
    {"op": "set", "guest": "web", "size": [256]},
    {"op": "set", "guest": "web", "size": {"MiB": 256}},
    {"op": "set", "guest": "web", "size": -1},
    {"op": "set", "guest": "web", "size": 0},
    {"op": "set", "guest": "web", "size": 10**30},
    {"op": "set", "guest": "web", "size": 1.5},
    {"op": "set", "guest": "web", "size": "1e99GiB"},
    {"op": "set", "guest": "web", "size": "99999999TiB"},
    {"op": "set", "guest": "web", "size": "lots"},
    {"op": "set", "guest": "web", "size": "1MiB"},
    {"op": "set", "guest": "web", "size": "64GiB"},
    {"op": "set", "guest": "web", "size": "300MiB", "hold": -5},
    {"op": "set", "guest": "web", "size": "300MiB", "hold": 1e308},
    {"op": "set", "guest": "web", "size": "300MiB", "hold": "forever"},
    {"op": "set", "guest": "nope", "size": "256MiB"},
    {"op": "set", "guest": "../../etc/passwd", "size": "256MiB"},
    {"op": "set", "guest": "web\x00", "size": "256MiB"},
    {"op": "pause"},
    {"op": "pause", "guest": "web", "all": True},
    {"op": "resume", "guest": "nope"},
    {"op": "policy", "guest": "web", "policy": "no-such-policy"},
    {"op": "policy", "guest": "nope"},
    {"op": "explain"},
    {"op": "explain", "guest": "nope"},
    {"op": "status", "id": {"nested": True}},
    {"op": "status", "id": "x" * 500},
]


#: Valid requests that a read-only allow-list must refuse.
WELL_FORMED_WRITES: list[dict[str, Any]] = [
    {"op": "set", "guest": "web", "size": "300MiB"},
    {"op": "pause", "all": True},
    {"op": "resume", "guest": "web"},
    {"op": "policy", "guest": "web", "policy": "default"},
    {"op": "reload"},
]


def hostile_request(i: int, rng: random.Random) -> bytes:
    """The ``i``-th of a seeded stream of malformed or refused requests."""
    item = HOSTILE[i % len(HOSTILE)]
    if i % 97 == 0:
        return (
            b'{"op": "status", "pad": "' + b"x" * (MAX_REQUEST_BYTES + rng.randint(1, 4096)) + b'"}'
        )
    if i % 101 == 0:
        return json.dumps({"op": "status", "pad": "y" * 500_000}).encode()
    if isinstance(item, bytes):
        return item
    if item.get("size") == 10**30:
        item = {**item, "size": rng.randint(2**63, 2**200)}
    return json.dumps({**item, "id": i} if "id" not in item else item).encode()
