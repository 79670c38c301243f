"""What the engine is given: a guest's view and its policy resolved to bytes.

Both are frozen plain dataclasses, built once per guest by the supervisor, so the hot path
(one decision per guest per poll, thousands of guests) never touches pydantic or parses a
size. ``balloond.runtime.config.Policy.resolve`` is the only producer of :class:`ResolvedPolicy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from balloond.core.policy.decision import Reason
from balloond.core.stats import GuestSample


class Reclaim(StrEnum):
    """When balloond may take memory from a guest (the policy's ``reclaim`` key)."""

    #: Inflate whenever the guest has more available memory than ``free_high``.
    IDLE = "idle"
    #: Keep the guest at ``max_size``; take memory only while the host is short of it.
    HOST_PRESSURE = "host-pressure"
    #: Leave the balloon alone (after handing back what balloond itself took).
    OFF = "off"


@dataclass(frozen=True, slots=True)
class ResolvedPolicy:
    """A policy with every amount turned into bytes for one guest size.

    Invariants (``Policy.resolve`` guarantees them; tests may build one directly):
    ``0 < min_bytes <= max_bytes <= boot_bytes``, both whole MiB;
    ``free_low_bytes < free_high_bytes``; both steps ``>= min_change_bytes``.
    """

    name: str
    boot_bytes: int
    min_bytes: int
    max_bytes: int
    free_low_bytes: int
    free_high_bytes: int
    cache_floor_bytes: int
    max_inflate_step_bytes: int
    #: None: a deflate may be any size.
    max_deflate_step_bytes: int | None
    min_change_bytes: int
    cooldown_s: float
    external_backoff_s: float
    weight: int
    reclaim: Reclaim
    #: Without a fresh guest report for this long, hand the guest back up to ``max_size``:
    #: balloond can no longer see it run short.
    stale_release_s: float = 30.0
    #: Refaults (disk reads, major faults) this many bytes per second above the guest's own
    #: rate, soon after an inflate, mean the balloon is eating its working set. 0: off
    #: (the config's default is on; a policy built by hand, in tests, has it off).
    refault_threshold_bps: int = 0
    #: How long after an inflate a rise in refaults is blamed on it.
    refault_window_s: float = 60.0
    #: The working-set floor halves this often, so a guest whose working set shrank is
    #: reclaimed again (and one whose did not, probed again) later.
    working_set_halflife_s: float = 1800.0
    #: The surge reserve's cap: the fastest recent decline of available memory times the
    #: time balloond needs to react, kept above the floor, at most this. 0: off.
    surge_reserve_max_bytes: int = 0
    #: The surge reserve halves this often once the guest calms down.
    surge_halflife_s: float = 600.0
    #: Where idle inflation aims: available memory in the middle of the band.
    band_mid_bytes: int = field(init=False)
    #: Available memory a guest always keeps: ``max(free_low, cache_floor)``.
    keep_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        # Derived once here rather than as properties: they are read on every decision.
        object.__setattr__(
            self, "band_mid_bytes", (self.free_low_bytes + self.free_high_bytes) // 2
        )
        object.__setattr__(self, "keep_bytes", max(self.free_low_bytes, self.cache_floor_bytes))


@dataclass(frozen=True, slots=True)
class GuestView:
    """Everything the engine knows about one guest at one moment.

    Times are the daemon's monotonic clock in seconds, the same clock as ``GuestSample.t_s``.
    """

    name: str
    #: Guest RAM at boot: the largest ``actual`` the balloon can reach.
    boot_bytes: int
    #: Oldest first, bounded by ``daemon.history_s``. The engine reads only the last few.
    history: tuple[GuestSample, ...]
    #: The last target balloond asked QEMU for; None if it never set one.
    target_bytes: int | None = None
    #: When the balloon was last deflated, by balloond or by the guest (deflate-on-oom).
    last_deflate_s: float | None = None
    #: When a balloon change balloond did not make was last seen.
    external_change_s: float | None = None
    #: When the guest last sent a new stats report (before its first: when the link
    #: connected); None if unknown. Drives the stale-stats fail-safe.
    last_report_s: float | None = None
    #: Reason of the last decision that set a target, so the engine can tell a guest it
    #: squeezed for the host (and should hand memory back to) from one that is simply idle.
    last_reason: Reason | None = None
    #: When balloond last inflated this guest, and the size it had before that inflate.
    last_inflate_s: float | None = None
    last_inflate_from_bytes: int | None = None
    #: The guest's own I/O rate for refaults (bytes/s) away from balloond's inflates: the
    #: level a rise is measured from. None until measured.
    io_baseline_bps: float | None = None
    #: Available memory the guest showed it needs for its working set (bytes), and when:
    #: set when refaults stopped an inflate; it decays (``working_set_halflife_s``).
    working_set_bytes: int = 0
    working_set_s: float | None = None
    #: The fastest decline of available memory seen (bytes/s), and when; it decays
    #: (``surge_halflife_s``).
    surge_bps: float = 0.0
    surge_s: float | None = None


class GuestFacts(Protocol):
    """What the engine reads about a guest: a :class:`GuestView`, or the books a controller
    keeps between polls (:class:`~balloond.core.policy.books.GuestBooks`), which the daemon
    hands over as they are rather than copy them into a view for every guest on every poll.
    The engine only reads them, within one call. The fields mean what :class:`GuestView`'s
    do."""

    @property
    def name(self) -> str: ...
    @property
    def boot_bytes(self) -> int: ...
    @property
    def history(self) -> Sequence[GuestSample]: ...
    @property
    def target_bytes(self) -> int | None: ...
    @property
    def last_deflate_s(self) -> float | None: ...
    @property
    def external_change_s(self) -> float | None: ...
    @property
    def last_report_s(self) -> float | None: ...
    @property
    def last_reason(self) -> Reason | None: ...
    @property
    def last_inflate_s(self) -> float | None: ...
    @property
    def last_inflate_from_bytes(self) -> int | None: ...
    @property
    def io_baseline_bps(self) -> float | None: ...
    @property
    def working_set_bytes(self) -> int: ...
    @property
    def working_set_s(self) -> float | None: ...
    @property
    def surge_bps(self) -> float: ...
    @property
    def surge_s(self) -> float | None: ...
