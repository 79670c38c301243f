"""One simulated QEMU guest: a QMP monitor on a unix socket in front of a memory model.

balloond talks to QEMU only through QMP, so a guest that answers QMP like QEMU 7.2, with
believable memory behind it, is all the daemon's tests and benchmarks need. A
:class:`SimGuest` owns a listening socket, serves one client at a time (QEMU's monitor
chardev does the same: a second client's connect succeeds but it hears nothing until the
first one leaves), and answers the commands a balloon controller uses (their semantics live
in :mod:`testkit.sim.commands`): ``qmp_capabilities``, ``query-balloon``, ``balloon``,
``qom-list``, ``qom-get``, ``qom-set`` (``guest-stats``, ``guest-stats-polling-interval``),
``query-memory-size-summary``, ``query-status``, ``query-version``, ``query-commands``,
``stop``, ``cont``, ``quit``.

Replies, errors and events match QEMU 7.2's bytes (see :mod:`testkit.sim.wire`), including
BALLOON_CHANGE's one-second rate limit: the first change goes out at once, later ones are held
and the latest is sent, with its original timestamp, when the second is up.

The guest has no task of its own: :class:`~testkit.sim.fleet.SimFleet` calls :meth:`tick`
from one shared ticker, and each command first brings the model up to the loop's clock.
Tests control the guest directly: :meth:`kill` (QEMU dies), :meth:`restart`, :meth:`pause`
(SIGSTOP: nothing answers), :meth:`stop_vm` (like QMP ``stop``), :meth:`set_driver`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import zlib
from collections import deque
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any, Literal

from balloond.core.stats import QMP_STAT_NAMES
from balloond.replay.model import GuestModel, GuestParams
from balloond.replay.traces import Trace
from testkit.sim import qom
from testkit.sim.commands import COMMANDS, Session
from testkit.sim.wire import (
    NO_ID,
    JsonStreamSplitter,
    QMPError,
    Request,
    check_request,
    encode,
    error_response,
    parse_arguments,
    parse_text,
    request_id,
    response,
)

#: QEMU's rate limit for BALLOON_CHANGE (monitor_qapi_event_conf).
BALLOON_CHANGE_PERIOD_S = 1.0
#: Longest path a unix socket address holds (sun_path, with its NUL).
_MAX_SOCKET_PATH = 107
_V72_STAT_NAMES = QMP_STAT_NAMES[:10]


@dataclass(frozen=True, slots=True)
class SimGuestSpec:
    """What to simulate for one guest. ``trace`` None is an idle guest.

    ``balloon`` False gives a machine without a virtio-balloon device; ``balloon_id`` None
    adds the device without an id (under ``/machine/peripheral-anon``). ``driver`` False is
    a guest whose balloon driver never loads. ``model`` replaces the model parameters built
    from the fields here, for tuning what they do not cover.
    """

    name: str
    ram_bytes: int
    trace: Trace | None = None
    _: KW_ONLY
    deflate_on_oom: bool = False
    #: The device property only (the model does not simulate reported pages).
    free_page_reporting: bool = False
    #: A virtio-blk disk, whose reads (``query-blockstats``) are the model's.
    disk: bool = False
    driver: bool = True
    driver_load_s: float = 0.0
    balloon: bool = True
    balloon_id: str | None = "balloon0"
    qemu_version: tuple[int, int, int] = (7, 2, 0)
    package: str = ""
    model: GuestParams | None = None

    def guest_params(self) -> GuestParams:
        """The memory model's parameters for this guest."""
        if self.model is not None:
            return self.model
        return GuestParams(
            ram_bytes=self.ram_bytes,
            deflate_on_oom=self.deflate_on_oom,
            driver=self.driver,
            driver_load_s=self.driver_load_s,
            qemu_version=self.qemu_version,
        )


class GuestState(enum.Enum):
    """Where a simulated QEMU process is in its life."""

    OFF = "off"  # not started yet
    RUNNING = "running"
    STOPPED = "stopped"  # the VM is paused (QMP stop); the monitor answers
    FROZEN = "frozen"  # the whole process is stopped (SIGSTOP); nothing answers
    DEAD = "dead"  # the process is gone


def _event(name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    now_us = time.time_ns() // 1000
    ev: dict[str, Any] = {
        "timestamp": {"seconds": now_us // 1_000_000, "microseconds": now_us % 1_000_000},
        "event": name,
    }
    if data is not None:
        ev["data"] = data
    return ev


class SimGuest:
    """A simulated QEMU process serving QMP on ``socket_path``."""

    def __init__(self, spec: SimGuestSpec, *, socket_path: Path, idle_step_s: float = 0.5) -> None:
        if len(str(socket_path).encode()) > _MAX_SOCKET_PATH:
            raise ValueError(f"socket path too long for a unix socket: {socket_path}")
        self.spec = spec
        self.name = spec.name
        self.socket_path = socket_path
        self.idle_step_s = idle_step_s
        self.log = logging.getLogger(f"testkit.sim.guest.{spec.name}")
        self._state = GuestState.OFF
        #: The memory model's parameters; ``model`` is rebuilt from them at each boot.
        self.params = spec.guest_params()
        #: The QOM tree qom-list/qom-get/qom-set walk.
        self.tree = qom.build_tree(
            qemu_version=spec.qemu_version, balloon_id=spec.balloon_id, balloon=spec.balloon
        )
        v = spec.qemu_version
        #: query-version's reply, also in the greeting.
        self.version = {
            "qemu": {"major": v[0], "minor": v[1], "micro": v[2]},
            "package": spec.package,
        }
        self._greeting = encode({"QMP": {"version": self.version, "capabilities": ["oob"]}})
        #: The guest-stats fields this QEMU version reports.
        self.stat_names = QMP_STAT_NAMES if self.params.reports_v92_stats else _V72_STAT_NAMES
        self.model = GuestModel(self.params, spec.trace)
        self._server: asyncio.Server | None = None
        self._session: Session | None = None
        self._slot = asyncio.Lock()
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._before_freeze = GuestState.RUNNING
        self._backlog: list[bytes] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._last_actual = 0
        self._next_idle_step = 0.0
        self._bc_timer: asyncio.TimerHandle | None = None
        self._bc_pending: bytes | None = None
        self._bc_pending_data: dict[str, Any] | None = None
        #: The latest events sent to a client, newest last, as (name, data); for tests.
        self.events_sent: deque[tuple[str, dict[str, Any] | None]] = deque(maxlen=256)

    def __repr__(self) -> str:
        return f"<SimGuest {self.name} {self._state.value} {self.socket_path}>"

    @property
    def state(self) -> GuestState:
        return self._state

    @property
    def vm_running(self) -> bool:
        """True while the guest's CPUs run (query-status ``running``)."""
        return self._state is GuestState.RUNNING

    @property
    def has_client(self) -> bool:
        """True while a client holds the monitor."""
        return self._session is not None

    def _dead(self) -> bool:
        return self._state is GuestState.DEAD

    def _set_state(self, new: GuestState) -> None:
        if new is not self._state:
            self.log.debug("%s -> %s", self._state.value, new.value)
            self._state = new

    # --- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Boot: a fresh model and a listening socket (a stale socket file is replaced)."""
        if self._state not in (GuestState.OFF, GuestState.DEAD):
            raise RuntimeError(f"{self!r} is already running")
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.model = GuestModel(
            self.params, self.spec.trace, boot_t_s=now, wall_offset_s=time.time() - now
        )
        self._last_actual = self.model.actual_bytes
        # Each guest's idle steps at its own phase (fixed by its name): a fleet started at
        # once would otherwise step every idle model in the same tick, a pause that grows
        # with the fleet and delays every answer behind it.
        phase = zlib.crc32(self.name.encode()) / 2**32
        self._next_idle_step = now + self.idle_step_s * (1.0 + phase)
        self._thawed.set()
        self._backlog.clear()
        self.socket_path.unlink(missing_ok=True)  # QEMU unlinks before bind, too
        self._server = await asyncio.start_unix_server(self._on_client, path=str(self.socket_path))
        self._set_state(GuestState.RUNNING)

    async def kill(self, *, sig: Literal["SIGTERM", "SIGKILL"] = "SIGTERM") -> None:
        """QEMU dies, the way QEMU 7.2 does on that signal.

        SIGTERM: a SHUTDOWN event (reason ``host-signal``), the connection closes, the
        socket file is removed. SIGKILL: the connection is reset and the socket file stays
        behind, refusing connections, until the guest is restarted.
        """
        if self._state in (GuestState.OFF, GuestState.DEAD):
            return
        if sig == "SIGTERM":
            self.emit("SHUTDOWN", {"guest": False, "reason": "host-signal"})
            self._teardown(remove_socket=True, flush=True)
        else:
            self._teardown(remove_socket=False, flush=False)
        await self._wait_handlers()

    async def aclose(self) -> None:
        """Kill if alive and wait until every connection handler has finished."""
        await self.kill()
        await self._wait_handlers()

    async def restart(self, *, spec: SimGuestSpec | None = None) -> None:
        """Kill (if alive) and boot again: RAM full, polling off, counters at zero.

        ``spec``: boot as another machine on the same socket (say, now with a balloon
        device), as when an operator changes a VM's configuration and starts it again.
        """
        await self.kill()
        if spec is not None:
            self.spec = spec
            self.params = spec.guest_params()
            self.tree = qom.build_tree(
                qemu_version=spec.qemu_version, balloon_id=spec.balloon_id, balloon=spec.balloon
            )
        await self.start()

    def pause(self) -> None:
        """Freeze the process like SIGSTOP: connects queue, nothing is read or answered."""
        if self._state in (GuestState.RUNNING, GuestState.STOPPED):
            self._sync()
            self._before_freeze = self._state
            self._thawed.clear()
            self._set_state(GuestState.FROZEN)

    def resume(self) -> None:
        """SIGCONT: answer again; what was held back goes out in order."""
        if self._state is GuestState.FROZEN:
            self.model.skip_to(asyncio.get_running_loop().time())
            self._set_state(self._before_freeze)
            self._thawed.set()
            backlog, self._backlog = self._backlog, []
            if self._session is not None:
                for data in backlog:
                    self._session.send(data)

    def stop_vm(self) -> None:
        """What QMP ``stop`` does: the guest stops running, a STOP event goes out."""
        if self._state is GuestState.RUNNING:
            self._sync()
            self._set_state(GuestState.STOPPED)
            self.emit("STOP")

    def cont_vm(self) -> None:
        """What QMP ``cont`` does: the guest runs again, a RESUME event goes out."""
        if self._state is GuestState.STOPPED:
            self._sync()
            self._set_state(GuestState.RUNNING)
            self.emit("RESUME")

    def set_driver(self, loaded: bool) -> None:
        """Load or unload the guest's balloon driver (False: the no-driver guest)."""
        self._sync()
        if loaded:
            self.model.load_driver()
        else:
            self.model.unload_driver()
        self._check_actual()

    def tick(self, now: float) -> None:
        """Called by the fleet's ticker: move the model on if it is due."""
        if self._state is not GuestState.RUNNING:
            return
        if self.model.in_motion or now >= self._next_idle_step:
            self.model.advance_to(now)
            self._next_idle_step = now + self.idle_step_s
            self._check_actual()

    def _sync(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._state is GuestState.RUNNING:
            self.model.advance_to(now)
            self._check_actual()
        elif self._state is GuestState.STOPPED:
            self.model.skip_to(now)

    def _teardown(self, *, remove_socket: bool, flush: bool) -> None:
        self._set_state(GuestState.DEAD)
        if self._server is not None:
            self._server.close()
            self._server = None
        if remove_socket:
            self.socket_path.unlink(missing_ok=True)
        for writer in list(self._writers):
            if flush:
                writer.close()
            else:
                writer.transport.abort()
        if self._bc_timer is not None:
            self._bc_timer.cancel()
            self._bc_timer = None
        self._bc_pending = None
        self._backlog.clear()
        self._thawed.set()  # let queued handlers see that the process is gone

    async def _wait_handlers(self) -> None:
        me = asyncio.current_task()
        others = [t for t in self._handlers if t is not me]
        if others:
            await asyncio.wait(others, timeout=5.0)

    # --- connections -------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            async with self._slot:  # one client at a time, the rest wait in order
                await self._thawed.wait()
                if self._state is GuestState.DEAD:
                    return
                session = Session(writer)
                self._session = session
                try:
                    session.send(self._greeting)
                    await self._serve(session, reader)
                finally:
                    self._session = None
        except (ConnectionError, OSError) as exc:
            self.log.debug("client dropped: %s", exc)
        except Exception:  # a simulator bug: drop this client, keep the guest and the fleet
            self.log.exception("serving a client failed")
        finally:
            self._writers.discard(writer)
            writer.close()
            self._handlers.discard(task)

    async def _serve(self, session: Session, reader: asyncio.StreamReader) -> None:
        splitter = JsonStreamSplitter()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            for text in splitter.feed(data):
                await self._thawed.wait()
                if self._dead():
                    return
                self._handle(session, text)
                if self._dead():  # it was quit
                    return
            await session.writer.drain()

    def _handle(self, session: Session, text: bytes) -> None:
        rid: Any = NO_ID
        try:
            obj = parse_text(text)
            rid = request_id(obj)
            req = check_request(obj, oob_enabled=session.oob)
            result = self._dispatch(session, req)
        except QMPError as err:
            if not session.negotiated and err.error_class == "CommandNotFound":
                err = QMPError(
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                    error_class="CommandNotFound",
                )
            session.send(encode(error_response(err, rid)))
            return
        session.send(encode(response(result, req.id)))
        if req.command == "quit":
            self._teardown(remove_socket=True, flush=True)

    def _dispatch(self, session: Session, req: Request) -> Any:
        command, args = req.command, req.arguments
        entry = COMMANDS.get(command)
        if entry is None or (not session.negotiated and command != "qmp_capabilities"):
            raise QMPError(
                f"The command {command} has not been found", error_class="CommandNotFound"
            )
        if req.oob:
            raise QMPError(f"The command {command} does not support OOB")
        params, handler = entry
        parse_arguments(args, params)
        self._sync()
        return handler(self, session, args)

    # --- events ------------------------------------------------------------------------

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Send an event to the client, if it has negotiated (QEMU drops it otherwise)."""
        self._deliver(encode(_event(name, data)), name=name, data=data)

    def _deliver(self, msg: bytes, *, name: str, data: dict[str, Any] | None) -> None:
        session = self._session
        if session is None or not session.negotiated:
            return  # QEMU drops events nobody negotiated for
        self.events_sent.append((name, data))
        if self._state is GuestState.FROZEN:
            self._backlog.append(msg)
        else:
            session.send(msg)

    def _check_actual(self) -> None:
        actual = self.model.actual_bytes
        if actual != self._last_actual:
            self._last_actual = actual
            self._balloon_change(actual)

    def _balloon_change(self, actual: int) -> None:
        # QEMU's monitor_qapi_event_queue: emit now and open a period, or hold the latest.
        data = {"actual": actual}
        msg = encode(_event("BALLOON_CHANGE", data))
        if self._bc_timer is None:
            self._deliver(msg, name="BALLOON_CHANGE", data=data)
            self._bc_timer = asyncio.get_running_loop().call_later(
                BALLOON_CHANGE_PERIOD_S, self._balloon_change_period_end
            )
        else:
            self._bc_pending = msg
            self._bc_pending_data = data

    def _balloon_change_period_end(self) -> None:
        if self._bc_pending is None:
            self._bc_timer = None
            return
        self._deliver(self._bc_pending, name="BALLOON_CHANGE", data=self._bc_pending_data)
        self._bc_pending = None
        self._bc_timer = asyncio.get_running_loop().call_later(
            BALLOON_CHANGE_PERIOD_S, self._balloon_change_period_end
        )


__all__ = ["BALLOON_CHANGE_PERIOD_S", "GuestState", "SimGuest", "SimGuestSpec"]
