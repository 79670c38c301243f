"""The QMP link to one guest: the only module that imports qemu.qmp.

A :class:`QmpLink` owns one QMP connection to one QEMU process and implements the guest link
(:class:`balloond.core.link.GuestLink`): find the balloon device, turn on stats polling, read
stats and ``actual``, set a target, read boot memory, and pass on balloon-related events.

Its :class:`~balloond.core.link.LinkState` says what is known about the guest, and only
:meth:`QmpLink._set_state` changes it (and logs the change)::

    IDLE --connect--> CONNECTING --> PROBING --first valid stats--> ACTIVE
                          |            |  \\--no stats after the grace--> NO_DRIVER
                          |            \\--no balloon device--> NO_DEVICE
                          \\--refused/EOF--> DISCONNECTED --connect--> CONNECTING ...
    any connected state --a call times out--> HUNG --a call succeeds--> (previous kind)
    any state --close()--> CLOSED

Every call takes a timeout chosen by the caller; qemu.qmp has none of its own. qemu.qmp's
exceptions are translated here, once, into :mod:`balloond.core.errors`.

qemu.qmp keeps every event in its default listener (a queue and a history list that only
grow), which a daemon running for months cannot afford. :class:`LeanClient` therefore hands
events straight to the link, which keeps only a small bounded queue of the kinds it cares
about; it also formats no DEBUG copy of a message nobody will read, and encodes each request
once. The scale benchmark's floor is this client with nothing else around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError
from qemu.qmp.message import Message
from qemu.qmp.models import ErrorResponse
from qemu.qmp.protocol import Runstate, require
from qemu.qmp.qmp_client import BadReplyError

from balloond.adapters.linkbase import LinkBase
from balloond.core.errors import (
    DisconnectedError,
    LinkError,
    LinkTimeoutError,
    NoBalloonError,
    QMPCommandError,
)
from balloond.core.link import NO_SESSION, LinkEvent, LinkState
from balloond.core.stats import BalloonStats
from balloond.runtime.aio import Deadline

__all__ = ["NO_SESSION", "LeanClient", "QmpLink", "SharedQmpLink", "silence_qmp_library_logs"]

T = TypeVar("T")

#: Events the link passes on; QEMU sends many others (e.g. RTC_CHANGE) nobody here needs.
WATCHED_EVENTS = frozenset({"BALLOON_CHANGE", "SHUTDOWN", "STOP", "RESUME", "RESET"})
#: A full queue drops its oldest event: balloon events are idempotent snapshots.
EVENT_QUEUE_LEN = 64
#: QEMU sends BALLOON_CHANGE at most once a second, the latest value when the second is up
#: (monitor_qapi_event_conf). So once none has come for longer than that (plus a margin for
#: the trip), the last ``actual`` heard is still the guest's size.
ACTUAL_QUIET_S = 1.5
_BALLOON_TYPES = ("virtio-balloon-pci", "virtio-balloon-ccw", "virtio-balloon-device")


class LeanClient(QMPClient):
    """A QMPClient that hands events to a callback instead of its growing listeners, and
    spends nothing per message that nobody uses.

    ``_event_dispatch`` is qemu.qmp's internal hook (qemu.qmp is pinned to 0.0.6, where it
    is the one place every event passes). The default listener never sees an event, so its
    history stays empty.
    """

    def __init__(self, name: str, on_event: Callable[[Message], None]) -> None:
        super().__init__(name)
        self._on_event = on_event

    async def _event_dispatch(self, msg: Message) -> None:
        self._on_event(msg)

    # qemu.qmp logs every message at DEBUG but pretty-prints it (json.dumps with indent,
    # the slow pure-Python encoder) before the logger looks at the level: at 2,000 guests
    # that was over half the daemon's CPU. Format only when someone will read it.
    def _cb_outbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            return super()._cb_outbound(msg)
        return msg

    def _cb_inbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            return super()._cb_inbound(msg)
        return msg

    # qemu.qmp's execute() encodes each request three times: make_execute_msg() encodes
    # the command, execute_msg() encodes its copy, and the id set after that makes the
    # send encode it again. Here it is encoded once, at the send: two encodings and a copy
    # fewer on every call (7.6 -> 2.7 us to build a guest-stats read, at a speed reference
    # of 0.45 s). The same checks and the same errors.
    @require(Runstate.RUNNING)
    async def execute(
        self, cmd: str, arguments: Mapping[str, object] | None = None, oob: bool = False
    ) -> object:
        request: dict[str, object] = {"exec-oob" if oob else "execute": cmd}
        if arguments is not None:
            request["arguments"] = arguments
        msg = Message(request, eager=False)
        reply = await self._execute(msg)
        if "error" in reply:
            try:
                error_response = ErrorResponse(reply)
            except (KeyError, TypeError) as err:
                raise BadReplyError("QMP error reply is malformed", reply, msg) from err
            raise ExecuteError(error_response, msg, reply)
        if "return" not in reply:
            raise BadReplyError("QMP reply is missing a 'error' or 'return' member", reply, msg)
        return reply["return"]


def silence_qmp_library_logs(level: int = logging.CRITICAL) -> None:
    """qemu.qmp logs every refused connect at ERROR once logging is configured; balloond
    reports link trouble itself, once, through its own per-guest loggers."""
    logging.getLogger("qemu.qmp").setLevel(level)


class QmpLink(LinkBase):
    """One guest's QMP link. Create one per guest; call :meth:`connect` (again after a
    disconnect), then the query and command methods, each with its own timeout.

    ``driver_grace_s``: how long after stats polling is enabled the guest may stay silent
    before it is reported as :attr:`LinkState.NO_DRIVER`. ``on_event`` is called (in the
    event loop, must not block) with every watched event as it arrives, so a controller can
    wake up at once instead of at its next poll; a link with a callback queues no events
    (:meth:`events` and :meth:`pending_events` are for links without one).
    """

    #: How the guest is reached (``balloonctl status``'s VIA).
    way = "qmp"

    def __init__(
        self,
        name: str,
        socket_path: str | Path,
        *,
        driver_grace_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[LinkEvent], None] | None = None,
    ) -> None:
        super().__init__(name, driver_grace_s=driver_grace_s, clock=clock)
        self.socket_path = Path(socket_path)
        self.on_event = on_event
        self._client: LeanClient | None = None
        #: The loop the link connected in (its calls' deadlines run on it).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._balloon_path: str | None = None
        #: The arguments of the guest-stats read (qom-get of the balloon's guest-stats).
        self._stats_read: dict[str, object] | None = None
        self._stats_interval_s: int | None = None
        #: BALLOON_CHANGE events heard, and when the last came (``actual`` is as last
        #: heard from query-balloon or such an event).
        self._balloon_events = 0
        self._balloon_event_s = -math.inf
        #: Events for :meth:`events`, made only for a link without a callback (a queue is
        #: a few KiB, and the daemon's links have a callback).
        self._event_queue: asyncio.Queue[LinkEvent | None] | None = None

    def __repr__(self) -> str:
        return f"<QmpLink {self.name} {self._state.value} {self.socket_path}>"

    # --- state ---------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The QMP socket's path."""
        return str(self.socket_path)

    @property
    def balloon_path(self) -> str | None:
        """QOM path of the balloon device, once found (e.g. /machine/peripheral/balloon0)."""
        return self._balloon_path

    # --- connection ----------------------------------------------------------------------
    async def connect(self, *, timeout_s: float) -> None:
        """Connect once, find the balloon device and re-apply the stats interval.

        Raises DisconnectedError when no QEMU answers at the socket, LinkTimeoutError when
        one accepts but does not finish the handshake in time.
        """
        if self._state is LinkState.CLOSED:
            raise DisconnectedError(f"{self.name}: link is closed")
        await self._drop_client()
        self._loop = asyncio.get_running_loop()
        self._set_state(LinkState.CONNECTING, str(self.socket_path))
        client = LeanClient(self.name, self._on_event)
        self._client = client
        try:
            async with asyncio.timeout(timeout_s):
                await client.connect(str(self.socket_path))
                await self._discover(client)
        except TimeoutError:
            await self._drop_client()
            self._set_state(LinkState.DISCONNECTED, f"no QMP handshake within {timeout_s:g}s")
            raise LinkTimeoutError(f"{self.name}: QMP handshake timed out") from None
        except ConnectError as exc:
            await self._drop_client()
            cause = exc.exc if isinstance(exc.exc, BaseException) else exc
            self._set_state(LinkState.DISCONNECTED, _describe(cause))
            raise DisconnectedError(f"{self.name}: cannot connect: {_describe(cause)}") from exc
        except LinkError:
            await self._drop_client()
            self._set_state(LinkState.DISCONNECTED, "lost during discovery")
            raise
        except QMPCommandError:
            await self._drop_client()
            self._set_state(LinkState.DISCONNECTED, "unexpected reply during discovery")
            raise

    async def close(self) -> None:
        """Disconnect and stop; the link cannot be used again."""
        await self._drop_client()
        self._set_state(LinkState.CLOSED)
        self._end_events()

    async def _drop_client(self) -> None:
        self._actual_bytes = None  # a new connection may lead to a new QEMU
        self._has_disks = None
        client, self._client = self._client, None
        if client is None:
            return
        # After QEMU died, disconnect() re-raises the reader's error (EOFError,
        # BrokenPipeError...): that is how the loss was noticed, not a new failure.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await client.disconnect()

    async def _discover(self, client: LeanClient) -> None:
        self._balloon_path = await self._find_balloon(client)
        self._boot_bytes = self._base_memory(await self._call(client, "query-memory-size-summary"))
        if self._balloon_path is None:
            self._set_state(LinkState.NO_DEVICE, "no virtio-balloon device in the guest")
            return
        self._last_stats_update = 0
        self.deflate_on_oom = await self._device_flag(client, "deflate-on-oom")
        self.free_page_reporting = await self._device_flag(client, "free-page-reporting")
        self._set_state(LinkState.PROBING, f"balloon at {self._balloon_path}")
        if self._stats_interval_s is not None:
            await self._apply_stats_interval(client, self._stats_interval_s)

    async def _device_flag(self, client: LeanClient, prop: str) -> bool | None:
        """A boolean property of the balloon device; None where this QEMU has no such
        property or answers oddly."""
        try:
            value = await self._call(
                client, "qom-get", {"path": self._balloon_path, "property": prop}
            )
        except QMPCommandError:
            return None
        return value if isinstance(value, bool) else None

    async def _find_balloon(self, client: LeanClient) -> str | None:
        for parent in ("/machine/peripheral", "/machine/peripheral-anon"):
            try:
                children = await self._call(client, "qom-list", {"path": parent})
            except QMPCommandError:
                continue  # QEMU without that container (no devices of that kind)
            if not isinstance(children, list):
                continue
            for child in children:
                if not isinstance(child, dict):
                    continue
                kind = str(child.get("type", ""))
                if any(t in kind for t in _BALLOON_TYPES):
                    return f"{parent}/{child.get('name')}"
        return None

    # --- calls ---------------------------------------------------------------------------
    def _translate(self, cmd: str, exc: Exception) -> LinkError | QMPCommandError | None:
        """qemu.qmp's error for ``cmd`` as balloond's (counted); None for any other."""
        if isinstance(exc, ExecuteError):
            self.errors_total += 1
            cls = str(exc.error_class)
            text = f"{self.name}: {cmd}: {exc} ({cls})"
            if cls == "DeviceNotActive":
                return NoBalloonError(text, error_class=cls)
            return QMPCommandError(text, error_class=cls)
        if isinstance(exc, (ExecInterruptedError, QMPError, EOFError, OSError)):
            self.errors_total += 1
            return DisconnectedError(f"{self.name}: {cmd}: connection lost: {_describe(exc)}")
        return None

    async def _call(
        self, client: LeanClient, cmd: str, args: Mapping[str, object] | None = None
    ) -> Any:
        """Execute one command on ``client``; translate qemu.qmp's errors."""
        try:
            return await client.execute(cmd, args)
        except Exception as exc:
            error = self._translate(cmd, exc)
            if error is None:
                raise
            raise error from exc

    def _live(self, what: str) -> tuple[LeanClient, asyncio.AbstractEventLoop]:
        client, loop = self._client, self._loop
        if client is None or loop is None or not self._state.connected:
            raise DisconnectedError(f"{self.name}: {what}: not connected ({self._state.value})")
        return client, loop

    def _hung(self, what: str, timeout_s: float) -> LinkTimeoutError:
        self.timeouts_total += 1
        self._set_state(LinkState.HUNG, f"{what} got no answer within {timeout_s:g}s")
        return LinkTimeoutError(f"{self.name}: {what}: no answer within {timeout_s:g}s")

    async def _lost(self, what: str) -> None:
        await self._drop_client()
        self._set_state(LinkState.DISCONNECTED, f"lost during {what}")
        self._end_events()

    async def _run(
        self, what: str, timeout_s: float, op: Callable[[LeanClient], Awaitable[T]]
    ) -> T:
        """Run ``op`` on the live client under ``timeout_s``, keeping the state true."""
        client, loop = self._live(what)
        try:
            async with Deadline(loop, timeout_s):
                result = await op(client)
        except TimeoutError:
            raise self._hung(what, timeout_s) from None
        except DisconnectedError:
            await self._lost(what)
            raise
        self._answered(what)
        return result

    async def _exec(
        self, what: str, cmd: str, args: Mapping[str, object] | None, timeout_s: float
    ) -> Any:
        """One command under ``timeout_s``: :meth:`_run` of a :meth:`_call` in one frame,
        for the calls every poll makes."""
        client, loop = self._live(what)
        deadline = Deadline(loop, timeout_s)
        deadline.arm()
        try:
            result = await client.execute(cmd, args)
        except asyncio.CancelledError:
            if deadline.disarm(asyncio.CancelledError):
                raise self._hung(what, timeout_s) from None
            raise
        except Exception as exc:
            deadline.disarm()
            error = self._translate(cmd, exc)
            if error is None:
                raise
            if isinstance(error, DisconnectedError):
                await self._lost(what)
            raise error from exc
        deadline.disarm()
        if self._state is LinkState.HUNG:  # checked here: no call on every poll's path
            self._answered(what)
        return result

    async def execute(
        self, cmd: str, args: Mapping[str, object] | None = None, *, timeout_s: float
    ) -> Any:
        """Run any QMP command (for tools and tests); the typed methods are preferred."""
        return await self._exec(cmd, cmd, args, timeout_s)

    def _stats_args(self) -> Mapping[str, object]:
        """The guest-stats read's arguments, made once per balloon path."""
        path = self._require_balloon()
        args = self._stats_read
        if args is None or args["path"] != path:
            args = self._stats_read = {"path": path, "property": "guest-stats"}
        return args

    def _require_balloon(self) -> str:
        if self._balloon_path is None:
            reason = f"{self.name}: no virtio-balloon device"
            raise NoBalloonError(reason, error_class="DeviceNotActive")
        return self._balloon_path

    async def enable_stats(
        self, interval_s: int, *, timeout_s: float, restart: bool = False
    ) -> None:
        """Ask QEMU to poll the guest's stats every ``interval_s`` whole seconds (>= 1).

        The interval is remembered and applied again after every reconnect, so a QEMU
        restarted on the same socket gets it too. ``restart``: stop QEMU's timer first, so
        that the new one asks the guest at once and then every interval from now (QEMU
        ignores a set to the interval it already has).
        """
        if interval_s < 1:
            raise ValueError(f"stats polling interval must be >= 1 s, not {interval_s}")
        self._stats_interval_s = interval_s
        await self._run(
            "enable stats",
            timeout_s,
            lambda c: self._apply_stats_interval(c, interval_s, restart=restart),
        )

    async def _apply_stats_interval(
        self, client: LeanClient, interval_s: int, *, restart: bool = False
    ) -> None:
        path = self._require_balloon()
        prop = "guest-stats-polling-interval"
        if restart:
            await self._call(client, "qom-set", {"path": path, "property": prop, "value": 0})
        await self._call(client, "qom-set", {"path": path, "property": prop, "value": interval_s})
        self._stats_enabled_at = self._clock()

    async def read_stats(self, *, timeout_s: float) -> BalloonStats:
        """Read the guest's latest stats; also decides between PROBING, ACTIVE, NO_DRIVER."""
        reply = await self._exec("read stats", "qom-get", self._stats_args(), timeout_s)
        try:
            stats = BalloonStats.from_qmp(reply)
        except ValueError as exc:
            self.errors_total += 1
            raise QMPCommandError(f"{self.name}: odd guest-stats reply: {exc}") from exc
        self._judge_driver(stats)
        return stats

    async def current_actual(self, *, timeout_s: float) -> int:
        """The guest's logical size now, without a QMP call when it cannot have changed.

        QEMU reports every change of ``actual`` with BALLOON_CHANGE, at most one event a
        second, so while no event has arrived for :data:`ACTUAL_QUIET_S` the last value
        heard (from an event or from query-balloon) is still right; otherwise this asks
        QEMU (:meth:`query_actual`). At thousands of guests that halves the QMP calls of a
        poll whose balloon is still.
        """
        quiet = self._clock() - self._balloon_event_s > ACTUAL_QUIET_S
        if self._actual_bytes is not None and quiet and self._state.connected:
            return self._actual_bytes
        return await self.query_actual(timeout_s=timeout_s)

    async def query_actual(self, *, timeout_s: float) -> int:
        """The guest's current logical memory size in bytes (query-balloon ``actual``)."""
        events_before = self._balloon_events
        reply = await self._exec("query-balloon", "query-balloon", None, timeout_s)
        actual = reply.get("actual") if isinstance(reply, dict) else None
        if not isinstance(actual, int) or isinstance(actual, bool) or actual <= 0:
            self.errors_total += 1
            raise QMPCommandError(f"{self.name}: odd query-balloon reply: {reply!r:.200}")
        if self._balloon_events == events_before:
            # An event that arrived meanwhile may be newer than this reply: keep it.
            self._actual_bytes = actual
        return actual

    async def read_io_bytes(self, *, timeout_s: float) -> int | None:
        """Bytes read from the guest's block devices (``query-blockstats`` ``rd_bytes``,
        summed), or None for a guest without any: asked once per connect, then not again."""
        if self._has_disks is False:
            return None
        reply = await self._exec("query-blockstats", "query-blockstats", None, timeout_s)
        total = _read_bytes(reply)
        if total is None:
            self._has_disks = False
            self.log.debug("no block device with read counters: disk reads not followed")
        else:
            self._has_disks = True
        return total

    async def set_target(self, target_bytes: int, *, timeout_s: float) -> None:
        """Ask the guest to resize to ``target_bytes`` (QMP ``balloon``; QEMU clamps to RAM)."""
        if target_bytes <= 0:
            raise ValueError(f"balloon target must be positive, not {target_bytes}")
        await self._exec("balloon", "balloon", {"value": int(target_bytes)}, timeout_s)

    async def boot_memory(self, *, timeout_s: float) -> int:
        """Guest RAM at boot in bytes (cached from the last connect)."""
        if self._boot_bytes is not None:
            return self._boot_bytes
        self._boot_bytes = self._base_memory(
            await self.execute("query-memory-size-summary", timeout_s=timeout_s)
        )
        return self._boot_bytes

    def _base_memory(self, reply: Any) -> int:
        """``base-memory`` from a query-memory-size-summary reply; QMPCommandError if odd."""
        base = reply.get("base-memory") if isinstance(reply, dict) else None
        if not isinstance(base, int) or isinstance(base, bool) or base <= 0:
            raise QMPCommandError(f"{self.name}: odd query-memory-size-summary reply: {reply!r}")
        return base

    # --- events --------------------------------------------------------------------------
    def _on_event(self, msg: Message) -> None:
        name = msg.get("event")
        if name not in WATCHED_EVENTS:
            return
        data = msg.get("data")
        event = LinkEvent(str(name), data if isinstance(data, dict) else {}, self._clock())
        if name == "BALLOON_CHANGE":
            self._balloon_events += 1
            self._balloon_event_s = event.t_s
            actual = event.data.get("actual")
            ok = isinstance(actual, int) and not isinstance(actual, bool) and actual > 0
            self._actual_bytes = actual if ok else None
        elif name == "RESET":
            self._actual_bytes = None  # the guest's driver starts over
        if self.on_event is not None:
            # The callback is the consumer. A queue nobody reads would hold its last
            # EVENT_QUEUE_LEN events for every guest (tens of MiB at thousands of guests).
            self.on_event(event)
            return
        queue = self._events
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(event)

    @property
    def _events(self) -> asyncio.Queue[LinkEvent | None]:
        if self._event_queue is None:
            self._event_queue = asyncio.Queue(EVENT_QUEUE_LEN)
        return self._event_queue

    def _end_events(self) -> None:
        """Tell a reader of :meth:`events` that the stream ended (if there is one)."""
        if self._event_queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._event_queue.put_nowait(None)

    def pending_events(self) -> list[LinkEvent]:
        """Take the events received so far without waiting."""
        out: list[LinkEvent] = []
        while not self._events.empty():
            item = self._events.get_nowait()
            if item is not None:
                out.append(item)
        return out

    async def events(self) -> AsyncIterator[LinkEvent]:
        """Stream BALLOON_CHANGE, SHUTDOWN, STOP, RESUME and RESET until the link drops.

        The stream ends when the connection is lost or the link is closed; after a
        reconnect, iterate again.
        """
        while True:
            item = await self._events.get()
            if item is None:
                return
            yield item


class SharedQmpLink(QmpLink):
    """QMP on a socket other clients use too: Proxmox VE's ``qm`` and pvestatd, an
    operator's tools. QEMU serves one client per QMP socket and makes the others wait, so
    this link holds the socket only for each cycle's few calls (a :meth:`session`), a few
    milliseconds, and lets it go.

    Between sessions nothing is connected, so no events arrive: ``actual`` is read back
    every cycle. A QEMU restarted on the same path (a new socket file) is set up again as
    at the first connect; otherwise a session only redoes QMP's handshake.
    """

    way = "qmp-shared"

    def __init__(self, name: str, socket_path: str | Path, **kwargs: Any) -> None:
        super().__init__(name, socket_path, **kwargs)
        self._socket_id: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"<SharedQmpLink {self.name} {self.state.value} {self.socket_path}>"

    async def connect(self, *, timeout_s: float) -> None:
        """Connect and set the guest up; the connection stays open for the first session."""
        await super().connect(timeout_s=timeout_s)
        self._socket_id = _socket_id(self.socket_path)

    def session(self, *, timeout_s: float) -> contextlib.AbstractAsyncContextManager[None]:
        return self._session(timeout_s)

    @contextlib.asynccontextmanager
    async def _session(self, timeout_s: float) -> AsyncIterator[None]:
        try:
            if self._client is None:
                await self._reopen(timeout_s)
            yield
        finally:
            await self._release()

    async def _reopen(self, timeout_s: float) -> None:
        if _socket_id(self.socket_path) != self._socket_id:
            await self.connect(timeout_s=timeout_s)  # a new QEMU: set it up from scratch
            return
        client = LeanClient(self.name, self._on_event)
        try:
            async with asyncio.timeout(timeout_s):
                await client.connect(str(self.socket_path))
        except TimeoutError:
            # Another client holds the socket (or QEMU hangs): try again next cycle.
            with contextlib.suppress(Exception):
                await client.disconnect()
            self.timeouts_total += 1
            self._set_state(LinkState.HUNG, f"socket busy for more than {timeout_s:g}s")
            raise LinkTimeoutError(f"{self.name}: QMP socket busy for {timeout_s:g}s") from None
        except ConnectError as exc:
            cause = exc.exc if isinstance(exc.exc, BaseException) else exc
            self._set_state(LinkState.DISCONNECTED, _describe(cause))
            raise DisconnectedError(f"{self.name}: cannot connect: {_describe(cause)}") from exc
        self._client = client

    async def _release(self) -> None:
        """Let the socket go, keeping what is known about the guest."""
        has_disks = self._has_disks
        await self._drop_client()  # also forgets actual: no events arrive until next time
        self._has_disks = has_disks


def _socket_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _read_bytes(reply: Any) -> int | None:
    """``rd_bytes`` summed over a query-blockstats reply's devices; None if none has one."""
    if not isinstance(reply, list):
        return None
    total, seen = 0, False
    for device in reply:
        stats = device.get("stats") if isinstance(device, dict) else None
        value = stats.get("rd_bytes") if isinstance(stats, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            total += value
            seen = True
    return total if seen else None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
