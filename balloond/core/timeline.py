"""One guest's memory over time, kept compactly for ``balloonctl plot``.

A point every ``interval_s`` (the guest's size, balloond's target, its available and used
memory), for ``span_s``, in fixed arrays: a ring of ``span_s / interval_s`` slots of one
float (the wall-clock time) and four 32-bit MiB counts, 24 bytes a slot. With the defaults
(one hour, a point every 10 s) that is 360 slots, about 9 KiB per guest whatever happens.
Balloon changes are kept beside it (time, old and new size, reason and who), the newest
:data:`MAX_CHANGES`, in arrays too (26 bytes a change, grown as changes come): a busy guest
changes all the time, and objects per change would make a daemon of thousands of guests
grow by tens of MiB over its first hours.

Pure: times come in with the calls.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

from balloond.core.units import MiB

#: Balloon changes kept per guest.
MAX_CHANGES = 256


@dataclass(frozen=True, slots=True)
class Change:
    """One balloon change, as the timeline keeps it (sizes in bytes)."""

    t_wall: float
    old_bytes: int
    new_bytes: int
    reason: str
    actor: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.t_wall,
            "old_bytes": self.old_bytes,
            "new_bytes": self.new_bytes,
            "reason": self.reason,
            "actor": self.actor,
        }


#: (reason, actor) pairs seen, by index: a change keeps the index (two bytes).
_KINDS: list[tuple[str, str]] = []
_KIND_INDEX: dict[tuple[str, str], int] = {}


def _kind(reason: str, actor: str) -> int:
    key = (reason, actor)
    index = _KIND_INDEX.get(key)
    if index is None:
        index = _KIND_INDEX[key] = len(_KINDS)
        _KINDS.append(key)
    return index


class Timeline:
    """A fixed-size ring of points and a bounded ring of changes (see the module docstring)."""

    __slots__ = (
        "_available",
        "_ch_kind",
        "_ch_new",
        "_ch_next",
        "_ch_old",
        "_ch_t",
        "_count",
        "_next",
        "_size",
        "_target",
        "_times",
        "_used",
        "interval_s",
        "span_s",
    )

    def __init__(self, *, span_s: float = 3600.0, interval_s: float = 10.0) -> None:
        if span_s <= 0 or interval_s <= 0:
            raise ValueError("a timeline needs a positive span and interval")
        self.span_s = span_s
        self.interval_s = interval_s
        slots = max(1, int(span_s // interval_s))
        self._times = array("d", bytes(8 * slots))
        self._size = array("i", bytes(4 * slots))
        self._target = array("i", bytes(4 * slots))
        self._available = array("i", bytes(4 * slots))
        self._used = array("i", bytes(4 * slots))
        self._next = 0  # the slot the next point goes to
        self._count = 0
        self._ch_t = array("d")
        self._ch_old = array("q")
        self._ch_new = array("q")
        self._ch_kind = array("H")
        self._ch_next = 0  # once MAX_CHANGES are kept: the oldest, overwritten next

    def __len__(self) -> int:
        return self._count

    @property
    def slots(self) -> int:
        return len(self._times)

    def add(
        self,
        t_wall: float,
        *,
        size_bytes: int,
        target_bytes: int | None,
        available_bytes: int | None,
        used_bytes: int | None,
    ) -> bool:
        """Keep a point if ``interval_s`` has passed since the last one; True if kept.
        Unknown amounts are kept as -1."""
        if self._count:
            last = self._times[(self._next - 1) % self.slots]
            if t_wall - last < 0.9 * self.interval_s:  # polls jitter around the interval
                return False
        i = self._next
        self._times[i] = t_wall
        self._size[i] = size_bytes // MiB
        self._target[i] = -1 if target_bytes is None else target_bytes // MiB
        self._available[i] = -1 if available_bytes is None else available_bytes // MiB
        self._used[i] = -1 if used_bytes is None else used_bytes // MiB
        self._next = (i + 1) % self.slots
        self._count = min(self._count + 1, self.slots)
        return True

    def change(
        self, t_wall: float, *, old_bytes: int, new_bytes: int, reason: str, actor: str
    ) -> None:
        kind = _kind(reason, actor)
        if len(self._ch_t) < MAX_CHANGES:
            self._ch_t.append(t_wall)
            self._ch_old.append(old_bytes)
            self._ch_new.append(new_bytes)
            self._ch_kind.append(kind)
            return
        i = self._ch_next
        self._ch_t[i], self._ch_old[i], self._ch_new[i] = t_wall, old_bytes, new_bytes
        self._ch_kind[i] = kind
        self._ch_next = (i + 1) % MAX_CHANGES

    def points(self, *, since_wall: float = 0.0) -> list[dict[str, Any]]:
        """The kept points from ``since_wall`` on, oldest first (sizes in bytes, None for
        unknown)."""
        out = []
        start = (self._next - self._count) % self.slots
        for k in range(self._count):
            i = (start + k) % self.slots
            t = self._times[i]
            if t < since_wall:
                continue
            out.append(
                {
                    "time": t,
                    "size_bytes": self._size[i] * MiB,
                    "target_bytes": _bytes(self._target[i]),
                    "available_bytes": _bytes(self._available[i]),
                    "used_bytes": _bytes(self._used[i]),
                }
            )
        return out

    def changes(self, *, since_wall: float = 0.0) -> list[Change]:
        """The kept changes from ``since_wall`` on, oldest first."""
        n = len(self._ch_t)
        out = []
        for k in range(n):
            i = (self._ch_next + k) % n
            t = self._ch_t[i]
            if t >= since_wall:
                reason, actor = _KINDS[self._ch_kind[i]]
                out.append(Change(t, self._ch_old[i], self._ch_new[i], reason, actor))
        return out


def _bytes(mib: int) -> int | None:
    return None if mib < 0 else mib * MiB
