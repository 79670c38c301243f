"""The QMP commands a simulated guest answers, with QEMU 7.2's replies and errors.

Split from :mod:`testkit.sim.qmp_server` so the protocol machinery (sockets, sessions,
events) and the command semantics can be read apart. Each handler gets the guest, the
client's session and arguments already checked against its parameter list, and returns the
``return`` value or raises :class:`~testkit.sim.wire.QMPError` with QEMU's class and text.
Handlers are named like QEMU's own (``qmp_query_balloon`` answers ``query-balloon``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from balloond.replay.model import MAX_POLL_INTERVAL_S
from testkit.sim import qom
from testkit.sim.wire import Param, QMPError, is_int64

if TYPE_CHECKING:
    from testkit.sim.qmp_server import SimGuest


class Session:
    """The one client a monitor is serving, and what it negotiated."""

    __slots__ = ("negotiated", "oob", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.negotiated = False
        self.oob = False

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


Handler = Callable[["SimGuest", Session, dict[str, Any]], Any]
#: A command's declared parameters (in QEMU's schema order) and its handler.
Command = tuple[tuple[Param, ...], Handler]
_PATH = Param("path", "str")
_PROP = Param("property", "str")


def qmp_qmp_capabilities(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    if session.negotiated:
        raise QMPError(
            "Capabilities negotiation is already complete, command ignored",
            error_class="CommandNotFound",
        )
    session.negotiated = True
    session.oob = "oob" in args.get("enable", [])
    return {}


def _require_balloon(guest: SimGuest) -> None:
    if not guest.spec.balloon:
        raise QMPError("No balloon device has been activated", error_class="DeviceNotActive")


def qmp_query_balloon(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    _require_balloon(guest)
    return {"actual": guest.model.actual_bytes}


def qmp_balloon(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    _require_balloon(guest)
    value = args["value"]
    if value <= 0:
        raise QMPError("Parameter 'target' expects a size")
    guest.model.set_target(value)
    return {}


def _resolve(guest: SimGuest, path: str) -> qom.QomObject:
    obj, _ = guest.tree.resolve(path)
    if obj is None:
        raise QMPError(f"Device '{path}' not found", error_class="DeviceNotFound")
    return obj


def qmp_qom_list(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    path = args["path"]
    obj, ambiguous = guest.tree.resolve(path)
    if obj is None:
        if ambiguous:
            raise QMPError(f"Path '{path}' is ambiguous")
        raise QMPError(f"Device '{path}' not found", error_class="DeviceNotFound")
    return [{"name": name, "type": kind} for name, kind in obj.props]


def qmp_qom_get(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    obj = _resolve(guest, args["path"])
    prop = args["property"]
    if prop not in dict(obj.props):
        raise QMPError(f"Property '{obj.type_name}.{prop}' not found")
    if prop in obj.children:
        return obj.children[prop].path
    if prop == "type":
        return obj.type_name
    if obj.type_name in (qom.BALLOON_PCI_TYPE, qom.BALLOON_BACKEND_TYPE):
        if prop == "guest-stats":
            return _guest_stats(guest)
        if prop == "guest-stats-polling-interval":
            return guest.model.polling_interval_s
        if prop == "deflate-on-oom":
            return guest.params.deflate_on_oom
        if prop == "free-page-reporting":
            return guest.spec.free_page_reporting
        if prop == "realized":
            return True
    raise QMPError(f"Property '{obj.type_name}.{prop}' is not simulated")


def qmp_qom_set(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    obj = _resolve(guest, args["path"])
    prop, value = args["property"], args["value"]
    if prop not in dict(obj.props):
        raise QMPError(f"Property '{obj.type_name}.{prop}' not found")
    balloon = obj.type_name in (qom.BALLOON_PCI_TYPE, qom.BALLOON_BACKEND_TYPE)
    if balloon and prop == "guest-stats-polling-interval":
        if not is_int64(value):
            raise QMPError(f"Invalid parameter type for '{prop}', expected: integer")
        if value < 0:
            raise QMPError("timer value must be greater than zero")
        if value > MAX_POLL_INTERVAL_S:
            raise QMPError("timer value is too big")
        guest.model.set_polling_interval(value)
        return {}
    if balloon and prop == "guest-stats":
        raise QMPError(f"Property '{qom.BALLOON_BACKEND_TYPE}.guest-stats' is not writable")
    if balloon and prop in qom.BACKEND_STATIC_PROPS:
        raise QMPError(
            f"Attempt to set property '{prop}' on anonymous device "
            f"(type '{qom.BALLOON_BACKEND_TYPE}') after it was realized"
        )
    raise QMPError(f"Property '{obj.type_name}.{prop}' is not writable")


def _guest_stats(guest: SimGuest) -> dict[str, Any]:
    full = guest.model.stats.to_qmp()
    stats = {name: full["stats"][name] for name in guest.stat_names}
    return {"stats": stats, "last-update": full["last-update"]}


def qmp_query_blockstats(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    """One virtio-blk disk whose reads are the model's (refaults and streams), as QEMU 7.2
    shows a ``-drive if=none,id=disk0 -device virtio-blk-pci,drive=disk0,id=vda`` disk."""
    if not guest.spec.disk:
        return []
    read = guest.model.read_bytes
    ops = read // (128 * 1024)  # readahead-sized requests
    return [
        {
            "device": "disk0",
            "node-name": "#block113",
            "qdev": "/machine/peripheral/vda/virtio-backend",
            "stats": {
                "rd_bytes": read,
                "wr_bytes": 0,
                "rd_operations": ops,
                "wr_operations": 0,
                "flush_operations": 0,
                "rd_merged": 0,
                "wr_merged": 0,
                "failed_rd_operations": 0,
                "failed_wr_operations": 0,
                "invalid_rd_operations": 0,
                "invalid_wr_operations": 0,
                "account_invalid": True,
                "account_failed": True,
                "timed_stats": [],
            },
        }
    ]


def qmp_query_memory_size_summary(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    return {"base-memory": guest.params.ram_bytes, "plugged-memory": 0}


def qmp_query_status(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    running = guest.vm_running
    info: dict[str, Any] = {"running": running}
    if guest.spec.qemu_version[:2] < (9, 0):  # StatusInfo.singlestep went away later
        info["singlestep"] = False
    info["status"] = "running" if running else "paused"
    return info


def qmp_query_version(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    return guest.version


def qmp_query_commands(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    return [{"name": name} for name in COMMANDS]


def qmp_stop(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    guest.stop_vm()
    return {}


def qmp_cont(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    guest.cont_vm()
    return {}


def qmp_quit(guest: SimGuest, session: Session, args: dict[str, Any]) -> Any:
    guest.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
    return {}


COMMANDS: dict[str, Command] = {
    "qmp_capabilities": (
        (Param("enable", "capabilities", optional=True),),
        qmp_qmp_capabilities,
    ),
    "query-balloon": ((), qmp_query_balloon),
    "balloon": ((Param("value", "int"),), qmp_balloon),
    "qom-list": ((_PATH,), qmp_qom_list),
    "qom-get": ((_PATH, _PROP), qmp_qom_get),
    "qom-set": ((_PATH, _PROP, Param("value", "any")), qmp_qom_set),
    "query-memory-size-summary": ((), qmp_query_memory_size_summary),
    "query-blockstats": ((Param("query-nodes", "bool", optional=True),), qmp_query_blockstats),
    "query-status": ((), qmp_query_status),
    "query-version": ((), qmp_query_version),
    "query-commands": ((), qmp_query_commands),
    "stop": ((), qmp_stop),
    "cont": ((), qmp_cont),
    "quit": ((), qmp_quit),
}
