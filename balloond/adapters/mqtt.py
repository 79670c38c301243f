"""The MQTT adapter: retained guest state, decision events and a command topic.

Home-automation and monitoring systems already speak MQTT; this adapter lets them watch
balloond and command it without a socket on the host. It is the only module that imports
aiomqtt (and paho, underneath it). Topics, under ``[mqtt] topic_prefix``::

    <prefix>/status              "online" / "offline", retained; "offline" is the Will,
                                 so a crashed or killed daemon shows as offline
    <prefix>/guest/<name>/state  JSON snapshot of one guest, retained; cleared (empty
                                 retained payload) when the guest goes away
    <prefix>/events              every decision and manual action (the audit record)
    <prefix>/cmd                 requests, exactly as balloonctl sends them
    <prefix>/reply               replies for clients without an MQTT v5 response topic

Requests go through the shared command layer (:mod:`balloond.service.commands`), so they are
validated once, the same way for every transport, and each gets exactly one reply.

The control loop never waits on the broker. The daemon's listeners only append to an
:class:`Outbox` (bounded; state is coalesced so that the latest snapshot per guest wins),
and this adapter's task drains it. Every call to the broker has a timeout; a lost broker
is retried with capped, randomised exponential backoff, and each new session republishes
``online`` and every guest's state and subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import os
import random
import re
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from balloond.adapters.port import CommandHandler, DaemonPort, ManagedGuest
from balloond.core.errors import BrokerError, ConfigError, InternalError, RequestError
from balloond.core.events import BalloonChange
from balloond.core.ops import error_reply, request_id
from balloond.runtime import aio
from balloond.runtime.aio import cancel_and_wait, sleep_unless
from balloond.runtime.config import MqttConfig

log = logging.getLogger("balloond.adapters.mqtt")

#: The guests' retained state is compared with what was published this often (seconds),
#: so a change that no listener reports (a poll's new stats, a pause) still goes out.
SCAN_INTERVAL_S = 1.0
#: First reconnect delay (seconds); it doubles per failed attempt up to reconnect_max_s.
RECONNECT_MIN_S = 0.5
#: Requests waiting to be handled; beyond this aiomqtt drops incoming messages (and logs
#: it) instead of letting a flood grow memory without bound.
MAX_QUEUED_REQUESTS = 1024
#: MQTT v5 only: the broker is told not to send this client anything larger. Requests
#: between the command layer's own limit (64 KiB) and this still get an error reply.
MAX_PACKET_BYTES = 1024 * 1024
#: Events sent before the guests' states get their turn, so a burst cannot starve them.
EVENTS_PER_ROUND = 100
#: On shutdown, how long the final ``offline`` and the disconnect may each take.
SHUTDOWN_PUBLISH_S = 0.5
#: Once asked to stop, how long a session may take to say goodbye, whatever the broker is
#: doing (connecting, hung, flooded) before it is cut short: the adapter's share of the
#: daemon's stop budget (daemon.STOP_BUDGET_S), inside systemd's TimeoutStopSec.
STOP_BUDGET_S = 2.0
#: CONNACK codes that mean "this broker does not speak MQTT v5" (3.1.1's 1, v5's 132).
_UNSUPPORTED_PROTOCOL = frozenset({1, 132})
_TOPIC_UNSAFE = re.compile(r"[%/+#\x00]")


# --- settings that need the outside world ----------------------------------------------------
def resolve_password(cfg: MqttConfig) -> str | None:
    """The password from whichever source ``[mqtt]`` names; read at each connect, so a
    rotated file or credential is picked up without a restart."""
    if cfg.password is not None:
        return cfg.password.get_secret_value()
    if cfg.password_file is not None:
        try:
            return cfg.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"mqtt.password_file: cannot read {cfg.password_file}: {exc}"
            ) from exc
    if cfg.password_env is not None:
        value = os.environ.get(cfg.password_env)
        if value is None:
            raise ConfigError(f"mqtt.password_env: ${cfg.password_env} is not set")
        return value
    return None


def ssl_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    """A client TLS context (system CAs unless ca_file), or None when TLS is off."""
    if not cfg.tls_enabled:
        return None
    try:
        ctx = ssl.create_default_context(cafile=cfg.ca_file)
        if cfg.cert_file is not None:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt: TLS files: {exc}") from exc
    return ctx


# --- topics ---------------------------------------------------------------------------------
def topic_segment(name: str) -> str:
    """A guest name as one topic level: '%', '/', '+', '#' and NUL percent-encoded, so
    that two names never share a topic."""
    return _TOPIC_UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", name)


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the adapter uses, from one prefix."""

    prefix: str

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def cmd(self) -> str:
        return f"{self.prefix}/cmd"

    @property
    def reply(self) -> str:
        return f"{self.prefix}/reply"

    @property
    def states(self) -> str:
        """A filter matching every guest's state topic."""
        return f"{self.prefix}/guest/+/state"

    def state(self, guest: str) -> str:
        return f"{self.prefix}/guest/{topic_segment(guest)}/state"


def usable_reply_topic(topic: str, topics: Topics) -> bool:
    """Whether balloond will publish a reply to the v5 response topic a client named.

    Not a wildcard, not a ``$`` system topic, and none of balloond's own topics (a reply
    on ``cmd`` or ``status`` would read as a request or as the daemon's state) except
    ``reply``.
    """
    own = topic.startswith(f"{topics.prefix}/") and topic != topics.reply
    return (
        0 < len(topic.encode("utf-8", "surrogatepass")) <= 65535
        and not topic.startswith("$")
        and not any(c in topic for c in "+#\x00")
        and not own
    )


# --- the outbox: the only thing the control loop touches --------------------------------------
class Outbox:
    """Bounded hand-off from the daemon's listeners to the MQTT task.

    Events are kept in order up to ``max_events``; when the broker is slow or gone the
    oldest are dropped (and counted). State is not queued at all: a guest is only marked
    as changed, and the MQTT task reads its snapshot when it publishes, so the latest
    state per guest wins whatever happened in between.
    """

    def __init__(self, *, max_events: int) -> None:
        self.events: deque[dict[str, Any]] = deque()
        self.max_events = max_events
        self.dropped_events = 0
        self.wake = asyncio.Event()

    def put_event(self, record: dict[str, Any]) -> None:
        while len(self.events) >= self.max_events:
            self.events.popleft()
            self.dropped_events += 1
        self.events.append(record)
        self.wake.set()

    def touch(self) -> None:
        """Something changed: scan the guests' state now rather than at the next tick."""
        self.wake.set()


class StateThrottle:
    """Which retained guest states to publish: those that changed, at most once per
    interval each; an empty payload clears the topic of a guest that went away.

    Pure bookkeeping with the clock passed in, so the rate limit is tested without sleeping.
    """

    def __init__(self) -> None:
        #: guest -> (payload last published, when); payload None: must be sent again.
        self.sent: dict[str, tuple[bytes | None, float]] = {}

    def due(
        self, snapshots: dict[str, bytes], *, now_s: float, interval_s: float
    ) -> tuple[list[tuple[str, bytes]], float | None]:
        """``(guest, payload)`` pairs to publish now, and when the next held-back one is due."""
        out: list[tuple[str, bytes]] = []
        next_due: float | None = None
        for name, payload in snapshots.items():
            prev = self.sent.get(name)
            if prev is not None and prev[0] == payload:
                continue
            if prev is not None and prev[0] is not None and now_s - prev[1] < interval_s:
                at = prev[1] + interval_s
                next_due = at if next_due is None else min(next_due, at)
                continue
            out.append((name, payload))
        out.extend((name, b"") for name in self.sent if name not in snapshots)
        return out, next_due

    def mark_sent(self, name: str, payload: bytes, *, now_s: float) -> None:
        if payload:
            self.sent[name] = (payload, now_s)
        else:
            self.sent.pop(name, None)

    def force_all(self) -> None:
        """After a reconnect: every known guest's state goes out again at once."""
        self.sent = dict.fromkeys(self.sent, (None, -math.inf))


def backoff_s(attempt: int, *, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based), from RECONNECT_MIN_S up to
    ``cap_s`` (:func:`balloond.runtime.aio.backoff_s`: many daemons that lost one broker
    must not all come back in the same instant)."""
    return aio.backoff_s(attempt, initial_s=RECONNECT_MIN_S, cap_s=cap_s, rand=rand)


# --- the adapter ------------------------------------------------------------------------------
class BrokerState(enum.Enum):
    """Where the adapter's broker connection stands."""

    IDLE = "idle"  # not started, or [mqtt] removed by a reload
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"  # waiting before the next attempt
    STOPPED = "stopped"


class _Reconfigured(Exception):
    """The [mqtt] section changed on reload: end this session, start one with the new one."""


@dataclass(frozen=True, slots=True)
class _Session:
    """One connection to the broker and the settings it was made with."""

    client: aiomqtt.Client
    cfg: MqttConfig
    topics: Topics
    v5: bool


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho is untyped here


class MqttAdapter:
    """Publishes state and events for ``daemon`` and serves its command topic.

    Run :meth:`run` as a supervised task (``service.build_adapters`` does that when the
    config has an ``[mqtt]`` section).
    """

    name = "mqtt"

    def __init__(
        self,
        daemon: DaemonPort,
        *,
        config: MqttConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.daemon = daemon
        #: Fixed settings instead of the daemon's [mqtt] (which follows reloads).
        self._fixed = config
        self._clock = clock
        self._rand = rand
        cfg = self._config()
        self.outbox = Outbox(max_events=cfg.max_queued_events if cfg else 1000)
        self.throttle = StateThrottle()
        self._state = BrokerState.IDLE
        #: Recent state changes, oldest first (for status and tests).
        self.history: deque[BrokerState] = deque([BrokerState.IDLE], maxlen=64)
        self._v311_only = False
        #: Counters for metrics.
        self.connects_total = 0
        self.requests_total = 0

    def __repr__(self) -> str:
        return f"<MqttAdapter {self._state.value}>"

    @property
    def state(self) -> BrokerState:
        return self._state

    def _set_state(self, new: BrokerState, why: str = "") -> None:
        old = self._state
        if new is old:
            return
        self._state = new
        self.history.append(new)
        level = logging.WARNING if new is BrokerState.BACKOFF else logging.INFO
        log.log(level, "broker %s -> %s%s", old.value, new.value, f": {why}" if why else "")

    def _config(self) -> MqttConfig | None:
        if self._fixed is not None:
            return self._fixed
        cfg: MqttConfig | None = self.daemon.config.mqtt
        return cfg

    # --- the daemon's side: called in the control loop, never waits -------------------------
    def _on_record(self, guest: ManagedGuest, change: BalloonChange) -> None:
        self.outbox.put_event({"guest": change.guest, **change.record})

    # --- the loop ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect on loss; return once ``stop`` is set."""
        unsubscribe = self.daemon.subscribe(self._on_record)
        attempt = 0
        try:
            while not stop.is_set():
                cfg = self._config()
                if cfg is None:
                    self._set_state(BrokerState.IDLE, "no [mqtt] section")
                    await sleep_unless(stop, SCAN_INTERVAL_S * 5)
                    continue
                try:
                    await self._session_until_stopped(cfg, stop)
                    why = "disconnected"
                except _Reconfigured:
                    attempt = 0
                    continue
                except BrokerError as exc:
                    why = str(exc)
                except ConfigError as exc:
                    why = str(exc)
                    attempt = max(attempt, 32)  # e.g. a missing password file: no fast retries
                if stop.is_set():
                    break
                if self._state is BrokerState.CONNECTED:
                    attempt = 0  # the last session worked: start the backoff afresh
                delay = backoff_s(attempt, cap_s=cfg.reconnect_max_s, rand=self._rand)
                attempt += 1
                self._set_state(BrokerState.BACKOFF, f"{why}; next attempt in {delay:.1f}s")
                await sleep_unless(stop, delay)
        finally:
            unsubscribe()
            self._set_state(BrokerState.STOPPED)

    def _client(self, cfg: MqttConfig, *, v5: bool) -> aiomqtt.Client:
        connect_props: Properties | None = None
        if v5:
            connect_props = _properties(PacketTypes.CONNECT)
            connect_props.MaximumPacketSize = MAX_PACKET_BYTES
        client = aiomqtt.Client(
            cfg.host,
            cfg.effective_port,
            username=cfg.username,
            password=resolve_password(cfg),
            identifier=cfg.effective_client_id(),
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(
                Topics(cfg.effective_prefix()).status, b"offline", qos=cfg.qos, retain=True
            ),
            timeout=cfg.timeout_s,
            keepalive=cfg.keepalive_s,
            max_queued_incoming_messages=MAX_QUEUED_REQUESTS,
            properties=connect_props,
            tls_context=ssl_context(cfg),
            logger=logging.getLogger("balloond.adapters.mqtt.client"),
        )
        # aiomqtt bounds the wait for CONNACK by `timeout`; paho's TCP/TLS connect, which
        # runs in a thread, has its own timeout (5 s unless set) that aiomqtt does not expose.
        # (paho is pinned in pyproject.toml for this and _close_socket.)
        client._client.connect_timeout = cfg.timeout_s
        return client

    async def _connect(self, cfg: MqttConfig) -> _Session:
        v5 = cfg.protocol == "5" or (cfg.protocol == "auto" and not self._v311_only)
        where = f"{cfg.host}:{cfg.effective_port}"
        self._set_state(BrokerState.CONNECTING, f"{where}, MQTT {'v5' if v5 else '3.1.1'}")
        client = self._client(cfg, v5=v5)
        try:
            try:
                # A backstop only: aiomqtt and paho bound each step by cfg.timeout_s, except
                # a name lookup, which paho does in a thread; should that hang past this,
                # the thread is left to finish alone and its late connection is replaced
                # by the broker when the next attempt connects with the same client id.
                async with asyncio.timeout(cfg.timeout_s * 2 + 1):
                    await client.__aenter__()
            except BaseException:
                _close_socket(client)
                raise
        except MqttConnectError as exc:
            code = getattr(exc.rc, "value", exc.rc)
            if v5 and cfg.protocol == "auto" and code in _UNSUPPORTED_PROTOCOL:
                log.info("the broker does not speak MQTT v5; using 3.1.1")
                self._v311_only = True
                return await self._connect(cfg)
            raise BrokerError(f"{where} refused the connection: {exc}") from exc
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"cannot connect to {where}: {exc}") from exc
        except TimeoutError as exc:
            raise BrokerError(f"connecting to {where} timed out") from exc
        return _Session(client=client, cfg=cfg, topics=Topics(cfg.effective_prefix()), v5=v5)

    async def _session_until_stopped(self, cfg: MqttConfig, stop: asyncio.Event) -> None:
        """:meth:`_session`, cut short :data:`STOP_BUDGET_S` after ``stop`` if the broker
        keeps it busy (a connect or subscribe waiting out its timeout, a hung broker)."""
        session = asyncio.create_task(self._session(cfg, stop), name="mqtt:session")
        stopped = asyncio.create_task(stop.wait(), name="mqtt:stop-wait")
        try:
            await asyncio.wait({session, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not session.done():
                await asyncio.wait({session}, timeout=STOP_BUDGET_S)
                if not session.done():
                    log.warning(
                        "the broker kept the session busy %.1fs after stop; cutting it short",
                        STOP_BUDGET_S,
                    )
        finally:
            await cancel_and_wait({session, stopped})
        if not session.cancelled():
            session.result()  # its BrokerError, ConfigError or _Reconfigured

    async def _session(self, cfg: MqttConfig, stop: asyncio.Event) -> None:
        """One connection, from connect to its loss (raises BrokerError) or ``stop``."""
        s = await self._connect(cfg)
        self.connects_total += 1
        self._set_state(BrokerState.CONNECTED, f"prefix {s.topics.prefix}")
        reconfigured = False
        try:
            await self._begin(s)
            await self._serve(s, stop)
        except _Reconfigured:
            reconfigured = True
            raise
        finally:
            try:
                await self._end(s, goodbye=stop.is_set() or reconfigured)
            except asyncio.CancelledError:
                _close_socket(s.client)  # cut short: no half-open session left behind
                raise

    async def _begin(self, s: _Session) -> None:
        """A new session: subscribe, say online, republish every guest's state.

        Online only once subscribed: a client that waits for ``online`` and then sends a
        request must find the command topic served.
        """
        self.outbox.max_events = s.cfg.max_queued_events
        for topic in (s.topics.cmd, s.topics.states):
            try:
                if s.v5:
                    # noLocal: our own state publishes are not echoed back to us.
                    opts = SubscribeOptions(qos=s.cfg.qos, noLocal=True)
                    granted = await s.client.subscribe(topic, options=opts, timeout=s.cfg.timeout_s)
                else:
                    granted = await s.client.subscribe(
                        topic, qos=s.cfg.qos, timeout=s.cfg.timeout_s
                    )
            except aiomqtt.MqttError as exc:
                raise BrokerError(f"subscribe to {topic}: {exc}") from exc
            if any(getattr(g, "value", g) >= 0x80 for g in granted):
                log.error("the broker refused a subscription to %s (ACL?)", topic)
        await self._publish(s, s.topics.status, b"online", retain=True)
        self.throttle.force_all()
        self.outbox.touch()

    async def _end(self, s: _Session, *, goodbye: bool) -> None:
        """Close the session; on stop or reconfigure say offline first (the Will only
        fires when a connection is lost, not on a clean disconnect)."""
        if goodbye:
            new = self._config()
            moved = new is None or new.effective_prefix() != s.topics.prefix
            try:
                if moved:
                    for name in list(self.throttle.sent):
                        await self._publish(
                            s, s.topics.state(name), b"", retain=True, timeout_s=SHUTDOWN_PUBLISH_S
                        )
                    self.throttle.sent.clear()
                await self._publish(
                    s, s.topics.status, b"offline", retain=True, timeout_s=SHUTDOWN_PUBLISH_S
                )
            except BrokerError as exc:
                log.warning("could not publish offline: %s", exc)
        try:
            async with asyncio.timeout(SHUTDOWN_PUBLISH_S if goodbye else s.cfg.timeout_s):
                await s.client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.debug("disconnect: %s", exc)

    async def _serve(self, s: _Session, stop: asyncio.Event) -> None:
        """Publish and handle requests until the connection fails or ``stop`` is set."""
        commands = self.daemon.commands(allowed=s.cfg.allow)
        tasks = [
            asyncio.create_task(self._publisher(s), name="mqtt:publish"),
            asyncio.create_task(self._receiver(s, commands), name="mqtt:requests"),
            asyncio.create_task(stop.wait(), name="mqtt:stop-wait"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(tasks)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc

    # --- publishing -------------------------------------------------------------------------
    async def _publish(
        self,
        s: _Session,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        timeout_s: float | None = None,
    ) -> None:
        try:
            await s.client.publish(
                topic,
                payload,
                qos=s.cfg.qos,
                retain=retain,
                properties=properties,
                timeout=timeout_s if timeout_s is not None else s.cfg.timeout_s,
            )
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"publish to {topic}: {exc}") from exc

    async def _publisher(self, s: _Session) -> None:
        next_due: float | None = None
        while True:
            wait_s = SCAN_INTERVAL_S
            if next_due is not None:
                wait_s = max(0.0, min(wait_s, next_due - self._clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self.outbox.wake.wait()
            self.outbox.wake.clear()
            if self._config() != s.cfg:
                raise _Reconfigured
            await self._flush_events(s)
            next_due = await self._publish_states(s)

    async def _flush_events(self, s: _Session) -> None:
        events = self.outbox.events
        for _ in range(EVENTS_PER_ROUND):
            if not events:
                return
            record = events[0]
            payload = json.dumps(record, separators=(",", ":"), default=str).encode()
            await self._publish(s, s.topics.events, payload)
            # Removed only once the broker has it, so a lost connection loses no event
            # (unless the outbox overflowed meanwhile and dropped it already).
            if events and events[0] is record:
                events.popleft()
        if events:
            self.outbox.wake.set()  # more to send, after the states have had their turn

    def snapshots(self) -> dict[str, bytes]:
        """Every guest's state payload as it would be published now."""
        return {
            name: json.dumps(ctrl.status(), separators=(",", ":"), default=str).encode()
            for name, ctrl in list(self.daemon.guests.items())
        }

    async def _publish_states(self, s: _Session) -> float | None:
        now = self._clock()
        due, next_due = self.throttle.due(
            self.snapshots(), now_s=now, interval_s=s.cfg.state_interval_s
        )
        for name, payload in due:
            await self._publish(s, s.topics.state(name), payload, retain=True)
            self.throttle.mark_sent(name, payload, now_s=now)
            if not payload:
                log.info("guest %s went away: its retained state is cleared", name)
        return next_due

    # --- requests ---------------------------------------------------------------------------
    async def _receiver(self, s: _Session, commands: CommandHandler) -> None:
        # Waiting for the next message has no timeout of its own: a quiet command topic is
        # normal. A dead broker still ends the wait, through paho's keepalive.
        try:
            async for message in s.client.messages:
                topic = message.topic.value
                if topic == s.topics.cmd:
                    await self._on_request(s, commands, message)
                elif message.retain and message.topic.matches(s.topics.states):
                    await self._clear_stale(s, message)
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"connection lost: {exc}") from exc

    async def _on_request(
        self, s: _Session, commands: CommandHandler, message: aiomqtt.Message
    ) -> None:
        self.requests_total += 1
        raw = message.payload
        payload: bytes | str = raw if isinstance(raw, bytes | str) else str(raw or "")
        props = message.properties
        response_topic: str | None = getattr(props, "ResponseTopic", None)
        correlation: bytes | None = getattr(props, "CorrelationData", None)
        reply_topic = s.topics.reply
        if message.retain:
            # A request left retained on the command topic would run again at every
            # reconnect: refuse it, and say why.
            reply = error_reply(
                RequestError("retained requests are not executed; publish without retain"),
                request_id(payload),
            )
        elif response_topic is not None and not usable_reply_topic(response_topic, s.topics):
            reply = error_reply(
                RequestError(f"response topic {response_topic[:100]!r} is not usable"),
                request_id(payload),
            )
        else:
            if response_topic is not None:
                reply_topic = response_topic
            try:
                reply = await commands.handle(payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The command layer answers every bad request itself, so this is a bug;
                # the requester still gets its one reply.
                log.exception("request failed")
                err = InternalError("internal error; see balloond's log")
                reply = error_reply(err, request_id(payload))
        reply_props: Properties | None = None
        if correlation is not None and s.v5:
            reply_props = _properties(PacketTypes.PUBLISH)
            reply_props.CorrelationData = correlation
        body = json.dumps(reply, separators=(",", ":"), default=str).encode()
        await self._publish(s, reply_topic, body, properties=reply_props)
        self.outbox.touch()  # the request may have changed a guest's mode or target

    async def _clear_stale(self, s: _Session, message: aiomqtt.Message) -> None:
        """A retained state left by an earlier run for a guest that no longer exists."""
        if not message.payload:
            return
        current = {s.topics.state(name) for name in list(self.daemon.guests)}
        if message.topic.value not in current:
            log.info("clearing retained state of a guest that is gone: %s", message.topic.value)
            await self._publish(s, message.topic.value, b"", retain=True)


def _close_socket(client: aiomqtt.Client) -> None:
    """Close the socket of a connect that failed or timed out.

    aiomqtt leaves it open. A broker that was only slow (overloaded, or stopped and
    continued) would later read the CONNECT in it and accept a second connection with our
    client id, taking over the session that replaced it. paho's ``_sock_close`` also
    unregisters the socket from the event loop; there is no public way to do this (paho
    is pinned in pyproject.toml for it).
    """
    client._client._sock_close()


# --- the fleet: every host's daemon on one broker (balloonctl fleet) ---------------------
#: How long the fleet view listens for retained messages after subscribing.
FLEET_LISTEN_S = 1.5


@dataclass(slots=True)
class HostView:
    """One host's daemon as its retained topics show it."""

    prefix: str
    online: bool | None = None
    guests: dict[str, dict[str, Any]] | None = None


async def fleet_snapshot(
    host: str, port: int, *, prefix_filter: str = "balloond/+", timeout_s: float = 10.0,
    listen_s: float = FLEET_LISTEN_S,
) -> dict[str, HostView]:  # fmt: skip
    """Every host under ``prefix_filter`` (an MQTT filter of prefixes): its status and its
    guests' retained states, read from the broker at ``host:port``."""
    hosts: dict[str, HostView] = {}
    status_filter = f"{prefix_filter}/status"
    state_filter = f"{prefix_filter}/guest/+/state"
    async with (
        asyncio.timeout(timeout_s + listen_s),
        _fleet_client(host, port, timeout_s) as client,
    ):
        await client.subscribe(status_filter, qos=1)
        await client.subscribe(state_filter, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(listen_s):
                async for message in client.messages:
                    _fleet_message(hosts, message)
    return hosts


def _fleet_message(hosts: dict[str, HostView], message: aiomqtt.Message) -> None:
    topic = message.topic.value
    raw = message.payload
    payload = raw if isinstance(raw, bytes) else str(raw or "").encode()
    if topic.endswith("/status"):
        prefix = topic.removesuffix("/status")
        hosts.setdefault(prefix, HostView(prefix)).online = payload == b"online"
        return
    head, _, _ = topic.rpartition("/guest/")
    if not head or not topic.endswith("/state") or not payload:
        return
    try:
        state = json.loads(payload)
    except ValueError:
        return
    if isinstance(state, dict) and isinstance(state.get("name"), str):
        view = hosts.setdefault(head, HostView(head))
        if view.guests is None:
            view.guests = {}
        view.guests[state["name"]] = state


async def fleet_request(
    host: str, port: int, *, prefix: str, request: dict[str, Any], timeout_s: float = 10.0
) -> dict[str, Any]:
    """Send one request to the daemon publishing under ``prefix`` and return its reply
    (MQTT v5 response topic and correlation data)."""
    token = os.urandom(8).hex()
    reply_topic = f"balloonctl/{token}/reply"
    async with asyncio.timeout(timeout_s * 2), _fleet_client(host, port, timeout_s) as client:
        await client.subscribe(reply_topic, qos=1)
        props = _properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = token.encode()
        body = json.dumps(request, separators=(",", ":")).encode()
        await client.publish(f"{prefix}/cmd", body, qos=1, properties=props)
        async for message in client.messages:
            raw = message.payload
            if message.topic.value == reply_topic and isinstance(raw, bytes | str):
                reply = json.loads(raw)
                if isinstance(reply, dict):
                    return reply
    raise BrokerError("no reply")  # pragma: no cover  (the iteration ends only on error)


@contextlib.asynccontextmanager
async def _fleet_client(host: str, port: int, timeout_s: float) -> Any:
    client = aiomqtt.Client(
        host,
        port,
        identifier=f"balloonctl-{os.getpid()}-{os.urandom(3).hex()}",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=timeout_s,
        logger=logging.getLogger("balloond.adapters.mqtt.fleet"),
    )
    try:
        async with client:
            yield client
    except aiomqtt.MqttError as exc:
        raise BrokerError(f"{host}:{port}: {exc}") from exc
