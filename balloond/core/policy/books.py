"""What balloond keeps about one guest between polls: its books.

The engine decides from a guest's facts (:class:`~balloond.core.policy.GuestView`, or these
books themselves, handed over as they are on each poll); something has to
keep, from one poll to the next, what that view is made of: the recent samples, the last
target balloond set, when the balloon was last deflated or inflated, when someone else last
moved it, the reason of the last change, when the guest last reported, and what the
engine's own decisions taught about the guest: its usual I/O rate, the working set that
refaults showed it needs, the fastest surge it had. :class:`GuestBooks` is that one
thing, kept the same way by the daemon's :class:`~balloond.service.guest.GuestController` and by
the offline replay (:mod:`balloond.replay.engine`), so both show the engine the same view.

Pure: no clock (times come in with the samples and calls), no I/O, no logging. What the
caller should say about a change (the log line, the audit record) comes back as a value.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from balloond.core.policy.decision import Decision, Reason
from balloond.core.policy.engine import decayed
from balloond.core.policy.inputs import GuestView, ResolvedPolicy
from balloond.core.stats import GuestSample
from balloond.core.units import MiB

#: A change of ``actual`` smaller than this is rounding in the guest driver, not a change.
ACTUAL_TOLERANCE_BYTES = 4 * MiB
#: How much of each new measurement goes into the guest's usual I/O rate (per report, away
#: from inflates). Upwards slowly, about a minute, so a working set that grows over minutes
#: shows as a rise while a guest that reads more of its own accord is soon its usual self
#: again; downwards fast, so a burst (a cold cache warming after boot) is soon forgotten.
IO_BASELINE_UP = 0.02
IO_BASELINE_DOWN = 0.3


def moved_externally(
    *, target_bytes: int | None, previous_actual_bytes: int | None, actual_bytes: int
) -> bool:
    """True when ``actual`` moved *away* from the target balloond last set, beyond driver
    rounding: someone else (the guest's deflate-on-oom, another QMP client) moved it."""
    if target_bytes is None or previous_actual_bytes is None:
        return False
    before = abs(previous_actual_bytes - target_bytes)
    after = abs(actual_bytes - target_bytes)
    return after > before + ACTUAL_TOLERANCE_BYTES and after > ACTUAL_TOLERANCE_BYTES


@dataclass(frozen=True, slots=True)
class ExternalMove:
    """A balloon move balloond did not make, seen in a sample and accepted."""

    #: The target balloond had set.
    target_bytes: int
    #: The guest's size now, adopted as the new target.
    actual_bytes: int
    #: Upwards: the guest deflated it (deflate-on-oom), a sign of pressure.
    grew: bool


@dataclass(slots=True)
class GuestBooks:
    """One guest's books between polls (see the module docstring)."""

    name: str
    #: Oldest first; its length is ``daemon.history_s`` worth of polls.
    history: deque[GuestSample]
    #: The guest's RAM at boot, once known (the books stand in for a view: ``GuestFacts``).
    boot_bytes: int = 0
    #: The last target balloond asked for (or adopted from someone else's move).
    target_bytes: int | None = None
    #: When the balloon was last deflated, by balloond or by the guest.
    last_deflate_s: float | None = None
    #: When a move balloond did not make was last seen.
    external_change_s: float | None = None
    #: The reason of the last engine decision that set a target.
    last_reason: Reason | None = None
    #: When the guest last sent a new stats report (before its first: when it connected).
    last_report_s: float | None = None
    #: When balloond last inflated the guest, and its size before that inflate.
    last_inflate_s: float | None = None
    last_inflate_from_bytes: int | None = None
    #: The guest's usual I/O rate for refaults (bytes/s), measured away from inflates.
    io_baseline_bps: float | None = None
    #: The working set refaults showed the guest needs (available bytes), and since when.
    working_set_bytes: int = 0
    working_set_s: float | None = None
    #: The fastest decline of available memory seen (bytes/s), and when.
    surge_bps: float = 0.0
    surge_s: float | None = None
    _last_update_seen: int | None = field(default=None, repr=False)
    _baseline_report_s: float | None = field(default=None, repr=False)

    @classmethod
    def new(cls, name: str, *, history_len: int) -> GuestBooks:
        return cls(name=name, history=deque(maxlen=max(2, history_len)))

    def resize_history(self, history_len: int) -> None:
        """Keep the newest samples that fit a new length (a reload changed it)."""
        length = max(2, history_len)
        if self.history.maxlen != length:
            self.history = deque(self.history, maxlen=length)

    def connected(self, now_s: float) -> None:
        """A new connection, maybe to a new QEMU: its samples start afresh. The stale-stats
        clock starts at the first connect, so a guest found shrunk and silent (after a
        restart of balloond) is handed back in time too."""
        self.history.clear()
        self.io_baseline_bps = None  # a new QEMU counts its disk reads from zero
        if self.last_report_s is None:
            self.last_report_s = now_s

    def record(self, sample: GuestSample) -> ExternalMove | None:
        """Take one poll's sample: accept a move balloond did not make (rather than fight
        it), note a fresh guest report, keep the sample. Returns the move, if any."""
        previous = self.history[-1].actual_bytes if self.history else None
        move = None
        target = self.target_bytes
        if target is not None and moved_externally(
            target_bytes=target, previous_actual_bytes=previous, actual_bytes=sample.actual_bytes
        ):
            grew = previous is not None and sample.actual_bytes > previous
            self.external_change_s = sample.t_s
            if grew:
                self.last_deflate_s = sample.t_s  # the guest needed memory: a cooldown too
            move = ExternalMove(target_bytes=target, actual_bytes=sample.actual_bytes, grew=grew)
            self.target_bytes = sample.actual_bytes  # QEMU's target matches what is
        stats = sample.stats
        if stats is not None and stats.valid and stats.last_update != self._last_update_seen:
            self._last_update_seen = stats.last_update
            self.last_report_s = sample.t_s
        self.history.append(sample)
        return move

    def applied(self, target_bytes: int, *, now_s: float, reason: Reason | None = None) -> None:
        """A target was sent to the guest; ``reason`` for the engine's, None for others."""
        current = self.history[-1].actual_bytes if self.history else None
        if current is not None and target_bytes > current:
            self.last_deflate_s = now_s
        elif current is not None and target_bytes < current:
            self.last_inflate_s = now_s
            self.last_inflate_from_bytes = current
        self.target_bytes = target_bytes
        if reason is not None:
            self.last_reason = reason

    def decided(self, decision: Decision, *, policy: ResolvedPolicy, now_s: float) -> None:
        """Learn from the engine's decision (made now, on this view), applied or not:

        * the guest's usual I/O rate, from each report away from an inflate's window;
        * its working set, when refaults stopped an inflate: the available memory it will
          have once the step is back (never less than what it had decayed to);
        * its fastest surge: the decline of available memory, where faster than the
          decayed one before.
        """
        io = decision.io_bps
        fresh = self.last_report_s is not None and self.last_report_s != self._baseline_report_s
        quiet = self.last_inflate_s is None or now_s - self.last_inflate_s > policy.refault_window_s
        if io is not None and fresh and quiet:
            self._baseline_report_s = self.last_report_s
            base = self.io_baseline_bps
            if base is None:
                self.io_baseline_bps = io
            else:
                weight = IO_BASELINE_UP if io > base else IO_BASELINE_DOWN
                self.io_baseline_bps = base + weight * (io - base)
        if (
            decision.reason is Reason.WORKING_SET
            and decision.target_bytes is not None
            and decision.available_bytes is not None
        ):
            need = decision.available_bytes + decision.change_bytes
            if self.working_set_s is not None:
                age_s = now_s - self.working_set_s
                halflife_s = policy.working_set_halflife_s
                need = max(
                    need,
                    int(decayed(self.working_set_bytes, age_s=age_s, halflife_s=halflife_s)),
                )
            self.working_set_bytes, self.working_set_s = need, now_s
        decline = decision.decline_bps or 0.0
        if decline > 0:
            before = (
                0.0
                if self.surge_s is None
                else decayed(
                    self.surge_bps, age_s=now_s - self.surge_s, halflife_s=policy.surge_halflife_s
                )
            )
            if decline > before:
                self.surge_bps, self.surge_s = decline, now_s

    def view(self, boot_bytes: int | None) -> GuestView | None:
        """The frozen view the engine decides from; None before the first sample."""
        if boot_bytes is None or not self.history:
            return None
        return GuestView(
            name=self.name,
            boot_bytes=boot_bytes,
            history=tuple(self.history),
            target_bytes=self.target_bytes,
            last_deflate_s=self.last_deflate_s,
            external_change_s=self.external_change_s,
            last_report_s=self.last_report_s,
            last_reason=self.last_reason,
            last_inflate_s=self.last_inflate_s,
            last_inflate_from_bytes=self.last_inflate_from_bytes,
            io_baseline_bps=self.io_baseline_bps,
            working_set_bytes=self.working_set_bytes,
            working_set_s=self.working_set_s,
            surge_bps=self.surge_bps,
            surge_s=self.surge_s,
        )
