"""Typed records of what balloond observes: guest balloon stats and host memory.

These are plain values shared by the QMP adapter (which fills them), the policy engine
(which reads them) and the simulator; nothing changes one once made. Amounts of memory are
bytes; counters are counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

#: QEMU reports a statistic the guest has not sent as (uint64)-1.
QMP_NOT_REPORTED = 0xFFFF_FFFF_FFFF_FFFF

# QMP stat name -> BalloonStats field. Byte amounts end in _bytes, the rest are counts.
_QMP_FIELDS: dict[str, str] = {
    "stat-swap-in": "swap_in_bytes",
    "stat-swap-out": "swap_out_bytes",
    "stat-major-faults": "major_faults",
    "stat-minor-faults": "minor_faults",
    "stat-free-memory": "free_bytes",
    "stat-total-memory": "total_bytes",
    "stat-available-memory": "available_bytes",
    "stat-disk-caches": "disk_caches_bytes",
    "stat-htlb-pgalloc": "htlb_pgalloc",
    "stat-htlb-pgfail": "htlb_pgfail",
    # QEMU >= 9.2
    "stat-oom-kills": "oom_kills",
    "stat-alloc-stalls": "alloc_stalls",
    "stat-async-scans": "async_scans",
    "stat-direct-scans": "direct_scans",
    "stat-async-reclaims": "async_reclaims",
    "stat-direct-reclaims": "direct_reclaims",
}
QMP_STAT_NAMES: tuple[str, ...] = tuple(_QMP_FIELDS)
_QMP_NAMES = QMP_STAT_NAMES
_ABSENT_OR_INT = frozenset({type(None), int})


@dataclass(slots=True)
class BalloonStats:
    """One `guest-stats` reading. None means the guest did not report that statistic.

    ``last_update`` is QEMU's host wall-clock time (seconds) of the guest's last report;
    0 means the guest never reported (no driver, or polling just enabled).

    A value: nothing changes one once made. It is not a frozen dataclass only because one
    is made for every guest on every poll, and a frozen one costs a call per field to make.
    """

    last_update: int
    swap_in_bytes: int | None = None
    swap_out_bytes: int | None = None
    major_faults: int | None = None
    minor_faults: int | None = None
    free_bytes: int | None = None
    total_bytes: int | None = None
    available_bytes: int | None = None
    disk_caches_bytes: int | None = None
    htlb_pgalloc: int | None = None
    htlb_pgfail: int | None = None
    oom_kills: int | None = None
    alloc_stalls: int | None = None
    async_scans: int | None = None
    direct_scans: int | None = None
    async_reclaims: int | None = None
    direct_reclaims: int | None = None

    @property
    def valid(self) -> bool:
        """True once the guest has reported at least once with its memory figures."""
        return self.last_update > 0 and self.total_bytes is not None

    @classmethod
    def from_qmp(cls, reply: Mapping[str, Any]) -> BalloonStats:
        """Build from a `qom-get guest-stats` reply; ValueError on a malformed one.

        Unknown stat names (newer QEMU) are ignored; (uint64)-1 and missing become None.
        """
        if not isinstance(reply, Mapping):
            raise ValueError(f"guest-stats reply is not an object: {reply!r:.200}")
        last_update = reply.get("last-update", 0)
        if not isinstance(last_update, int) or isinstance(last_update, bool) or last_update < 0:
            raise ValueError(f"guest-stats last-update is not a count of seconds: {last_update!r}")
        raw = reply.get("stats", {})
        if not isinstance(raw, Mapping):
            raise ValueError(f"guest-stats 'stats' is not an object: {raw!r:.200}")
        # Once per guest per poll, so the checks run over the whole row at once: every
        # value absent or an exact int (JSON numbers are int or float; bool, a subclass of
        # int, is refused too), none below zero.
        values: list[Any] = list(map(raw.get, _QMP_NAMES))
        if not set(map(type, values)) <= _ABSENT_OR_INT or min(filter(None, values), default=0) < 0:
            for qmp_name, value in zip(_QMP_NAMES, values, strict=True):
                if value is not None and (value.__class__ is not int or value < 0):
                    raise ValueError(
                        f"guest-stats {qmp_name} is not a non-negative integer: {value!r}"
                    )
        if QMP_NOT_REPORTED in values:
            values = [None if value == QMP_NOT_REPORTED else value for value in values]
        return cls(last_update, *values)

    def to_qmp(self) -> dict[str, Any]:
        """The inverse of :meth:`from_qmp` (used by the simulator and by traces)."""
        stats = {
            qmp_name: QMP_NOT_REPORTED if getattr(self, f) is None else getattr(self, f)
            for qmp_name, f in _QMP_FIELDS.items()
        }
        return {"last-update": self.last_update, "stats": stats}

    def as_dict(self) -> dict[str, int | None]:
        """Field name -> value, for audit records and JSON output."""
        return {name: getattr(self, name) for name in _FIELD_NAMES}


_FIELD_NAMES = tuple(f.name for f in fields(BalloonStats))
# from_qmp builds BalloonStats positionally, in _QMP_FIELDS' order.
assert tuple(f.name for f in fields(BalloonStats))[1:] == tuple(_QMP_FIELDS.values())


@dataclass(slots=True)
class GuestSample:
    """What one poll of one guest saw.

    ``t_s`` is the daemon's monotonic clock in seconds when the sample was taken.
    ``actual_bytes`` is the guest's logical memory size as QMP `query-balloon` reports it.
    ``stats`` is None when the guest has not (yet) reported valid stats.
    ``read_bytes`` is what the guest has read from its disks since its VMM started, as the
    host counts it (QMP ``query-blockstats`` ``rd_bytes``, summed over its devices); None
    where unknown (no disk, or a link that cannot tell).

    A value, not changed once made (not frozen only to be cheap to make: one per poll).
    """

    t_s: float
    actual_bytes: int
    stats: BalloonStats | None
    read_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """Host memory as /proc/meminfo (and /proc/pressure/memory when present) shows it."""

    total_bytes: int
    available_bytes: int
    #: "some avg10" of /proc/pressure/memory, percent; None where PSI is unavailable.
    psi_some_avg10: float | None = None
