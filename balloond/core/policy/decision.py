"""What the engine answers: a target (or none), a stable reason code and the numbers behind it.

A decision is a value (nothing changes one once made) so the supervisor can log it, write it to
the audit log, show it in ``balloonctl explain`` and compare it in tests without caring how it
was made. It is not a frozen dataclass only because the engine makes one for every guest on
every poll, and a frozen one costs a call per field to make.

Its explanation is written when first read: the engine decides for every guest on every
poll, and most decisions (nothing to change) are never read by anyone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Why the engine decided what it did. The values are stable: logs, metrics and the
    audit log carry them, and operators grep for them.

    Codes that come with a target (a change): pressure, oom-risk, thrashing, guest-deflate,
    working-set, below-floor, idle, above-max, host-pressure, host-recovered, stats-lost,
    off. The others, and any of those when the balloon cannot move further, come with
    ``target_bytes=None``.
    """

    #: Available memory is below ``free_low``: deflate at once.
    PRESSURE = "pressure"
    #: The guest OOM-killed a process, or available memory falls fast enough to drop below
    #: ``free_low`` within a few polls: deflate before it does.
    OOM_RISK = "oom-risk"
    #: Swap-in, major faults or allocation stalls rise while available memory is in the lower
    #: half of the band: the guest is short even though the band looks fine.
    THRASHING = "thrashing"
    #: The guest deflated the balloon itself (deflate-on-oom): it is out of memory now.
    GUEST_DEFLATE = "guest-deflate"
    #: The guest is below its floor (``min_size``, or used + ``max(free_low, cache_floor)``).
    BELOW_FLOOR = "below-floor"
    #: Available memory is above ``free_high``: inflate toward the middle of the band.
    IDLE = "idle"
    #: Available memory is inside the band: nothing to do.
    IN_BAND = "in-band"
    #: An inflate is due but the balloon was deflated less than ``cooldown_s`` ago.
    COOLDOWN = "cooldown"
    #: An inflate is due but someone else moved the balloon less than
    #: ``external_backoff_s`` ago: balloond does not fight the guest or the operator.
    EXTERNAL_BACKOFF = "external-backoff"
    #: The change would be smaller than ``min_change``.
    MIN_CHANGE = "min-change"
    #: An inflate is due but the guest is already at its floor.
    AT_FLOOR = "at-floor"
    #: A deflate is due (or wanted) but the guest is already at ``max_size``.
    AT_MAX = "at-max"
    #: The guest is above ``max_size`` (a new policy, or someone else deflated it).
    ABOVE_MAX = "above-max"
    #: The host is short of memory: the guest is squeezed to, or held at, its host cap.
    HOST_PRESSURE = "host-pressure"
    #: The host has room again: memory taken for it goes back.
    HOST_RECOVERED = "host-recovered"
    #: The guest has not reported balloon statistics (yet).
    NO_STATS = "no-stats"
    #: The guest's statistics stopped updating.
    STALE_STATS = "stale-stats"
    #: Fail-safe: no fresh stats for ``stale_release_s`` while the guest was below
    #: ``max_size``: balloond is blind to its pressure, so it hands the memory back.
    STATS_LOST = "stats-lost"
    #: Soon after an inflate the guest's refaults (disk reads, major faults) rose above its
    #: own rate while its available memory looked ample: the balloon is eating its working
    #: set. Give a step back and keep a working-set floor (it decays slowly).
    WORKING_SET = "working-set"
    #: An inflate is due but balloond is still measuring the guest's own disk reads, the
    #: level a rise in refaults is judged from (a few seconds after a connect).
    MEASURING = "measuring"
    #: The policy says ``reclaim = "off"``.
    OFF = "off"


#: Reasons that mean the guest needed memory: it is "under pressure".
PRESSURE_REASONS = frozenset(
    {Reason.PRESSURE, Reason.OOM_RISK, Reason.THRASHING, Reason.GUEST_DEFLATE}
)


@dataclass(slots=True)
class Decision:
    """The engine's answer for one guest at one moment.

    Amounts are bytes; None where the engine could not know them (no stats).
    """

    #: The logical size to ask QEMU for; None leaves the balloon as it is.
    target_bytes: int | None
    reason: Reason
    #: The explanation (see :attr:`explanation`), or what writes it when asked.
    why: str | Callable[[], str] = field(compare=False, repr=False)
    #: The guest's size now (``actual`` of the latest sample).
    current_bytes: int | None = None
    available_bytes: int | None = None
    #: ``current - available``: what the guest cannot give back (see ``observe``).
    used_bytes: int | None = None
    #: No target goes below this: ``max(min_size, used + keep + surge reserve)``, with keep
    #: ``max(free_low, cache_floor, working set)``, itself never above ``max_size``.
    floor_bytes: int | None = None
    #: No target goes above this unless the guest is under pressure: ``max_size``, or the
    #: host cap when one applies.
    ceiling_bytes: int | None = None
    free_low_bytes: int | None = None
    free_high_bytes: int | None = None
    host_cap_bytes: int | None = None
    #: How fast available memory falls, bytes per second (0 when steady or rising).
    decline_bps: float | None = None
    #: The guest's I/O rate for refaults (disk reads, major faults), bytes per second.
    io_bps: float | None = None
    #: The working set the floor keeps now (decayed), when it is above the policy's keep.
    working_set_bytes: int | None = None
    #: The surge reserve the floor holds now (decayed).
    surge_reserve_bytes: int | None = None

    @property
    def explanation(self) -> str:
        """One line for logs and ``balloonctl explain``, in MiB and percent for people."""
        why = self.why
        return why if isinstance(why, str) else why()

    @property
    def change_bytes(self) -> int:
        """Signed change the decision asks for: positive deflates (gives memory back)."""
        if self.target_bytes is None or self.current_bytes is None:
            return 0
        return self.target_bytes - self.current_bytes

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict for the audit log and the control socket."""
        out = asdict(self)
        del out["why"]
        out["reason"] = str(self.reason)
        out["explanation"] = self.explanation
        return out
