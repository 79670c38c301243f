"""Turning a guest's recent samples into the few numbers a decision needs.

This is the one place that knows how balloon statistics behave, so the rules live here:

* **Used memory** is ``actual - available``. The Linux driver accounts ballooned pages in one
  of two ways. With deflate-on-oom off they leave MemTotal, so ``stat-total-memory`` shrinks
  as the balloon inflates; with it on they stay in MemTotal and count as used. In both cases
  MemAvailable excludes them, and ``actual`` (QEMU's logical size) is what the guest really
  has, so ``actual - available`` is the memory the guest cannot give back plus the kernel's
  own reservation (tens of MiB). Using ``total - available`` instead would count the balloon
  as used in the second case. The small overestimate errs on the safe side: it only raises
  the floor.
* **Freshness**: QEMU stamps each guest report with ``last_update`` (whole host seconds); the
  guest reports every ``guest-stats-polling-interval`` seconds (>= 1). Stats are stale when
  the latest sample is old, or its ``last_update`` has not moved for :func:`stale_after_s`.
* **Trend**: the rate at which available memory falls, between the latest report and the
  one before. A balloon move shows in ``actual`` at once but in ``available`` only at the
  guest's next report, so a plain difference would read our own inflate as a guest eating
  memory, and the next decision would deflate what the last one took. So the rate is the
  smaller of two estimates, each blind to one kind of move: growth of ``used`` (blind to a
  move the report already shows) and the fall of ``available`` minus whatever the balloon
  took since just before the previous report (blind to an inflate the report does not show
  yet). A move that is half seen makes the rate too low, never too high; a real workload
  shows in both.
* **Disk reads**: a page-cache refault through ``read()`` (how most programs read files) is
  no page fault, so the guest's major-fault counter never sees it; the host sees it as a
  read on the guest's disk. The I/O rate is the larger of the disk read rate (between the
  samples of the last two reports) and the major faults times the page size (mapped files
  and swap-ins, for a guest whose disk reads the link cannot see).

Only the samples since the previous guest report are read: a handful, whatever the history.
"""

from __future__ import annotations

from dataclasses import dataclass

from balloond.core.policy.decision import Reason
from balloond.core.policy.inputs import GuestFacts
from balloond.core.stats import BalloonStats

#: QEMU moves the balloon in pages of this size.
PAGE_BYTES = 4096
#: Polls without a fresh report before stats count as stale (guests report at >= 1 s).
STALE_AFTER_POLLS = 3


def stale_after_s(poll_interval_s: float) -> float:
    """Seconds without a new guest report after which stats are stale.

    Guests report at most once a second (QEMU's polling interval is whole seconds), so
    faster polling does not shorten this; the extra second absorbs ``last_update`` rounding.
    """
    return STALE_AFTER_POLLS * max(poll_interval_s, 1.0) + 1.0


@dataclass(slots=True)
class Observation:
    """A guest's state as far as the engine cares, from its latest samples (made and read
    within one decision: plain, not frozen, as it is built for every guest on every poll)."""

    current_bytes: int
    available_bytes: int
    used_bytes: int
    #: Rate available memory falls at, bytes/s, >= 0 (see the module docstring).
    decline_bps: float
    swap_in_bps: float
    major_faults_per_s: float
    new_oom_kills: int
    new_alloc_stalls: int
    #: Pages reclaimed by allocating tasks themselves per second, as bytes/s (QEMU >= 9.2).
    direct_reclaim_bps: float
    #: The guest's I/O rate for refaults, bytes/s: disk reads, or major faults times the
    #: page size when larger; None before two reports.
    io_bps: float | None
    #: ``actual`` grew between the last two samples beyond balloond's own target: the guest
    #: deflated the balloon itself (deflate-on-oom), or someone else did.
    guest_deflated_bytes: int


@dataclass(frozen=True, slots=True)
class Unobservable:
    """Why no observation could be made (``no-stats`` or ``stale-stats``)."""

    reason: Reason
    detail: str
    current_bytes: int | None


def _counter_delta(new: int | None, old: int | None) -> int:
    """Increase of a counter; 0 when unknown or reset (the guest rebooted)."""
    if new is None or old is None or new < old:
        return 0
    return new - old


def observe(
    *, guest: GuestFacts, now_s: float, poll_interval_s: float
) -> Observation | Unobservable:
    """Read the latest samples of ``guest``; O(samples since the previous report)."""
    history = guest.history
    if not history:
        return Unobservable(Reason.NO_STATS, "no samples yet", None)
    latest = history[-1]
    current = latest.actual_bytes
    stats = latest.stats
    if stats is None or not stats.valid or stats.available_bytes is None:
        return Unobservable(
            Reason.NO_STATS,
            "the guest reports no balloon stats (driver not loaded, or stats polling off)",
            current,
        )
    stale_s = stale_after_s(poll_interval_s)
    age_s = now_s - latest.t_s
    if age_s > stale_s:
        return Unobservable(Reason.STALE_STATS, f"last sample {age_s:.0f}s old", current)

    # Walk back to the previous guest report; stop once that is more than stale_s back.
    previous: BalloonStats | None = None
    previous_sample = latest
    previous_actual = current
    inflated = 0  # bytes the balloon took since just before the previous report
    newer_actual = current
    index = len(history) - 2
    while index >= 0:
        sample = history[index]
        older_actual = sample.actual_bytes
        if older_actual > newer_actual:
            inflated += older_actual - newer_actual
        newer_actual = older_actual
        old = sample.stats
        if old is None or not old.valid:
            break
        if old.last_update != stats.last_update:
            previous, previous_actual, previous_sample = old, sample.actual_bytes, sample
            if index > 0:  # an inflate just before that report may not show in it yet
                before = history[index - 1].actual_bytes
                if before > previous_actual:
                    inflated += before - previous_actual
            break
        if latest.t_s - sample.t_s > stale_s:
            return Unobservable(
                Reason.STALE_STATS,
                f"stats not updated for {latest.t_s - sample.t_s:.0f}s (> {stale_s:.0f}s)",
                current,
            )
        index -= 1

    available = stats.available_bytes
    used = current - available if current > available else 0
    decline_bps = swap_in_bps = faults_per_s = direct_bps = 0.0
    io_bps: float | None = None
    oom_kills = alloc_stalls = 0
    if previous is not None and previous.available_bytes is not None:
        # last_update is whole seconds of host time; reports are >= 1 s apart.
        dt_s = max(1.0, float(stats.last_update - previous.last_update))
        available_decline = previous.available_bytes - available - inflated
        used_growth = used - max(0, previous_actual - previous.available_bytes)
        decline_bps = max(0, min(available_decline, used_growth)) / dt_s
        swap_in_bps = _counter_delta(stats.swap_in_bytes, previous.swap_in_bytes) / dt_s
        faults_per_s = _counter_delta(stats.major_faults, previous.major_faults) / dt_s
        oom_kills = _counter_delta(stats.oom_kills, previous.oom_kills)
        alloc_stalls = _counter_delta(stats.alloc_stalls, previous.alloc_stalls)
        direct_bps = (
            _counter_delta(stats.direct_reclaims, previous.direct_reclaims) * PAGE_BYTES / dt_s
        )
        io_bps = faults_per_s * PAGE_BYTES
        reads_dt_s = latest.t_s - previous_sample.t_s
        new_reads, old_reads = latest.read_bytes, previous_sample.read_bytes
        if new_reads is not None and old_reads is not None and reads_dt_s > 0:
            io_bps = max(io_bps, _counter_delta(new_reads, old_reads) / reads_dt_s)

    guest_deflated = 0
    if len(history) > 1:
        grown = current - history[-2].actual_bytes
        ours = guest.target_bytes is not None and current <= guest.target_bytes + PAGE_BYTES
        if grown > 0 and not ours:
            guest_deflated = grown

    return Observation(
        current_bytes=current,
        available_bytes=available,
        used_bytes=used,
        decline_bps=decline_bps,
        swap_in_bps=swap_in_bps,
        major_faults_per_s=faults_per_s,
        new_oom_kills=oom_kills,
        new_alloc_stalls=alloc_stalls,
        direct_reclaim_bps=direct_bps,
        io_bps=io_bps,
        guest_deflated_bytes=guest_deflated,
    )
