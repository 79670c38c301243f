"""The per-guest decision: how big should this guest's balloon make it, and why.

:func:`decide` is a pure function of its arguments: no I/O, no clock, no logging. It is called
for every guest on every poll (thousands per second), so it reads only the last few samples
and does arithmetic on ints.

The ladder, first match wins:

1. ``reclaim = "off"``: leave the balloon alone; hand back to ``max_size`` only a size that
   balloond itself set (so switching a guest to "off" undoes balloond's work, not an
   operator's).
2. No stats, or stale stats: no change. Without a fresh picture balloond never takes
   memory. Fail-safe (``stats-lost``): when the guest has sent no new report for
   ``stale_release_s`` while it is below ``max_size``, hand it back up to ``max_size``:
   balloond can no longer see it run short. It is taken again only once stats flow.
3. Guest pressure, any of: an OOM kill; available memory below ``free_low``; available memory
   falling fast enough to cross ``free_low`` within :data:`HORIZON_POLLS` polls; the guest
   deflating the balloon itself (deflate-on-oom); swap-in, major faults or allocation stalls
   while available memory is in the lower half of the band. Deflate at once, sized for the
   deficit to mid-band (top of band for the fault and OOM signals) plus the rate of decline
   times the horizon, at least ``min_change``, up to ``max_size``. Guest pressure wins over
   a host cap and over any cooldown: an OOM kill in a guest is certain damage, host pressure
   only a risk that other guests' idle memory can cover.
   Then the working-set signal (``working-set``): while the guest is below ``max_size``, its
   refaults (disk reads, or major faults times the page size; allocation stalls and direct
   reclaim where QEMU >= 9.2 reports them) rose ``refault_threshold`` above its usual rate,
   while its available memory still looks ample: the balloon holds page cache the guest
   works from. No inflate; give one inflate step back. Within ``refault_window_s`` of an
   inflate (the inflate did it) once per guest report; otherwise (the working set grew, or
   the guest reads more of its own accord) once per ``refault_window_s``. After an inflate
   the step given back is the one the inflate took (back to the size before it); a few
   polls pass before another, while the guest's cache refills. The books keep a
   working-set floor (the size given back to) that decays slowly.
4. Below the floor (``min_size``, or used + keep + surge reserve, with keep
   ``max(free_low, cache_floor, working set)``): deflate to it.
5. Above the ceiling (``max_size``, or the host cap): inflate straight to it. Not step-limited:
   ``max_size`` is a hard limit, and a host cap is urgent and never below the floor.
6. ``reclaim = "host-pressure"``: sit at the ceiling; when the cap lifts or rises, deflate
   back to it (``host-recovered``).
7. ``reclaim = "idle"``: after a host squeeze, hand memory back up to mid-band; with
   available memory above ``free_high``, inflate toward mid-band, at most
   ``max_inflate_step``, never below the floor; otherwise hold (``in-band``).

Rules every target obeys (and the property tests check):

* ``floor <= target <= max_size``; the floor is never above ``max_size``, and never below
  used + ``free_low``.
* No inflate within ``cooldown_s`` of a deflate, or within ``external_backoff_s`` of a change
  balloond did not make, or while the working-set signal is high, or before the guest's own
  disk reads are measured (``measuring``, when the signal is on).
* No change smaller than ``min_change``, except a deflate that lands exactly on ``max_size``
  (so a guest under pressure always gets everything up to its maximum). A needed deflate is
  rounded up to ``min_change``.
* Targets are whole MiB (so are ``min_size``, ``max_size``, floors and caps): QEMU moves the
  balloon in 4 KiB pages, and a target it cannot hit exactly would read as someone else's
  change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from balloond.core.policy import explain
from balloond.core.policy.decision import Decision, Reason
from balloond.core.policy.inputs import GuestFacts, Reclaim, ResolvedPolicy
from balloond.core.policy.observe import Observation, Unobservable, observe
from balloond.core.units import MiB

#: How far ahead a falling guest is extrapolated, in polls (of at least 1 s: guests report
#: no faster). Three covers the next decision plus the time the balloon takes to move.
HORIZON_POLLS = 3
#: Swap-in this fast, with available memory below mid-band, means the guest is short.
THRASH_SWAP_IN_BPS = 1 * MiB
#: Major faults this frequent, with available memory below mid-band, mean the guest is
#: re-reading pages it had to drop. Program start-ups stay well below it.
THRASH_MAJOR_FAULTS_PER_S = 500.0


#: Polls (of at least 1 s) to wait after a working-set give-back before another: the
#: guest's reads stay up until its cache has refilled.
WORKING_SET_SETTLE_POLLS = 3
#: Seconds the balloon takes to move once asked (lab: 0.2-0.3 s for 512 MiB under TCG; a
#: margin for a busy host). With a stats interval it makes the time balloond needs to react.
BALLOON_MOVE_S = 1.0


#: An explanation, or what writes it when someone reads the decision (most are never read:
#: the engine decides every guest on every poll, so the text is left until asked for). What
#: writes it reads only values fixed when the decision was made, never the guest's facts:
#: the daemon's books move on after the decision.
Why = str | Callable[[], str]


def _text(why: Why) -> str:
    return why if isinstance(why, str) else why()


def horizon_s(poll_interval_s: float) -> float:
    """Seconds ahead a falling guest is extrapolated."""
    return HORIZON_POLLS * max(poll_interval_s, 1.0)


def react_s(poll_interval_s: float) -> float:
    """Seconds from a guest's memory starting to fall to the balloon giving it back: a
    stats report (guests report at most once a second) and the balloon's move."""
    return max(poll_interval_s, 1.0) + BALLOON_MOVE_S


def decayed(value: float, *, age_s: float, halflife_s: float) -> float:
    """``value`` halved every ``halflife_s`` over ``age_s`` seconds."""
    if age_s <= 0 or value <= 0:
        return max(value, 0.0)
    if halflife_s <= 0:
        return 0.0
    return float(value * 0.5 ** (age_s / halflife_s))


@dataclass(slots=True)
class Keep:
    """What a guest keeps above its used memory now, and why."""

    #: ``max(free_low, cache_floor)``: what every guest keeps.
    base: int
    #: The working set refaults showed it needs (decayed); 0 when not above ``base``.
    working_set: int
    #: The surge reserve (decayed, capped); 0 when off or calm.
    reserve: int

    @property
    def total(self) -> int:
        return max(self.base, self.working_set) + self.reserve


def keep_for(
    *, guest: GuestFacts, policy: ResolvedPolicy, now_s: float, poll_interval_s: float
) -> Keep:
    """The guest's keep now: the policy's, its decaying working set, its surge reserve."""
    base = policy.keep_bytes
    working_set = 0
    if guest.working_set_s is not None and guest.working_set_bytes > base:
        working_set = int(
            decayed(
                guest.working_set_bytes,
                age_s=now_s - guest.working_set_s,
                halflife_s=policy.working_set_halflife_s,
            )
        )
        if working_set <= base:
            working_set = 0
    reserve = 0
    if policy.surge_reserve_max_bytes > 0 and guest.surge_s is not None:
        surge_bps = decayed(
            guest.surge_bps, age_s=now_s - guest.surge_s, halflife_s=policy.surge_halflife_s
        )
        reserve = min(int(surge_bps * react_s(poll_interval_s)), policy.surge_reserve_max_bytes)
    return Keep(base=base, working_set=working_set, reserve=reserve)


def floor_bytes(*, used_bytes: int, policy: ResolvedPolicy, keep: Keep | None = None) -> int:
    """The smallest size balloond gives the guest, in whole MiB; never above ``max_size``.

    ``keep``: the guest's keep now (:func:`keep_for`); without it, the policy's alone.
    """
    total = policy.keep_bytes if keep is None else keep.total
    return min(_round_up_mib(max(policy.min_bytes, used_bytes + total)), policy.max_bytes)


@dataclass(slots=True)
class WorkingSetSignal:
    """The guest's refaults rose while the balloon holds memory from it."""

    why: Why
    #: Within ``refault_window_s`` of an inflate: the inflate squeezed the working set.
    #: Otherwise the working set grew into memory the balloon holds.
    after_inflate: bool


def working_set_signal(
    *, guest: GuestFacts, policy: ResolvedPolicy, obs: Observation, now_s: float
) -> WorkingSetSignal | None:
    """Whether the balloon holds memory the guest's working set needs now (see rule 3)."""
    threshold = policy.refault_threshold_bps
    if threshold <= 0 or obs.current_bytes >= policy.max_bytes:
        return None
    io, baseline = obs.io_bps, guest.io_baseline_bps
    refaults = io is not None and baseline is not None and io - baseline >= threshold
    stalls, direct = obs.new_alloc_stalls, obs.direct_reclaim_bps
    if not (refaults or stalls or direct >= threshold):
        return None
    since_s = None if guest.last_inflate_s is None else now_s - guest.last_inflate_s
    after_inflate = since_s is not None and since_s <= policy.refault_window_s

    def why() -> str:
        when = f"{since_s:.0f}s after an inflate" if after_inflate else "with the balloon still"
        if refaults:
            usual = "before the inflate" if after_inflate else "usually"
            rates = f"{explain.rate(io or 0.0)} ({explain.rate(baseline or 0.0)} {usual})"
            return f"refaults {rates} {when}"
        if stalls:
            return f"{stalls} allocation stalls {when}"
        return f"direct reclaim {explain.rate(direct)} {when}"

    return WorkingSetSignal(why=why, after_inflate=after_inflate)


def inflate_block(
    *, guest: GuestFacts, policy: ResolvedPolicy, now_s: float
) -> tuple[Reason, Why] | None:
    """Why an inflate may not happen now (cooldown, external backoff, measuring), or None."""
    if policy.refault_threshold_bps > 0 and guest.io_baseline_bps is None:
        return Reason.MEASURING, "the guest's own disk reads are not measured yet"
    if guest.last_deflate_s is not None:
        deflated_s = now_s - guest.last_deflate_s
        if deflated_s < policy.cooldown_s:
            return (
                Reason.COOLDOWN,
                lambda: f"deflated {deflated_s:.0f}s ago (cooldown {policy.cooldown_s:.0f}s)",
            )
    if guest.external_change_s is not None:
        moved_s = now_s - guest.external_change_s
        if moved_s < policy.external_backoff_s:
            return (
                Reason.EXTERNAL_BACKOFF,
                lambda: (
                    f"balloon moved by someone else {moved_s:.0f}s ago "
                    f"(backoff {policy.external_backoff_s:.0f}s)"
                ),
            )
    return None


def _round_up_mib(n_bytes: int) -> int:
    return -(-n_bytes // MiB) * MiB


class _Frame:
    """One decision in the making: the facts, and the two ways to answer."""

    __slots__ = ("cap", "ceiling", "floor", "guest", "keep", "now_s", "obs", "policy")

    def __init__(
        self,
        *,
        guest: GuestFacts,
        policy: ResolvedPolicy,
        obs: Observation,
        keep: Keep,
        floor: int,
        ceiling: int,
        cap: int | None,
        now_s: float,
    ) -> None:
        self.guest = guest
        self.policy = policy
        self.obs = obs
        self.keep = keep
        self.floor = floor
        self.ceiling = ceiling
        self.cap = cap
        self.now_s = now_s

    def answer(self, target: int | None, reason: Reason, why: Why) -> Decision:
        obs = self.obs
        current = obs.current_bytes

        def explanation() -> str:
            text = _text(why)
            if target is not None:
                return f"{text}: {explain.move(current, target)}"
            return text if text.endswith("no change") else f"{text}: no change"

        return Decision(
            target_bytes=target,
            reason=reason,
            why=explanation,
            current_bytes=obs.current_bytes,
            available_bytes=obs.available_bytes,
            used_bytes=obs.used_bytes,
            floor_bytes=self.floor,
            ceiling_bytes=self.ceiling,
            free_low_bytes=self.policy.free_low_bytes,
            free_high_bytes=self.policy.free_high_bytes,
            host_cap_bytes=self.cap,
            decline_bps=obs.decline_bps,
            io_bps=obs.io_bps,
            working_set_bytes=self.keep.working_set or None,
            surge_reserve_bytes=self.keep.reserve or None,
        )

    def floor_text(self, *, with_used: bool = False) -> str:
        """``the floor 400MiB``, with what raised it: ``(used 40MiB + working set 300MiB +
        surge reserve 60MiB)``; ``with_used``: ``(used 40MiB)`` otherwise."""
        text = f"the floor {explain.size(self.floor)}"
        keep = self.keep
        if not (keep.working_set or keep.reserve):
            return f"{text} (used {explain.size(self.obs.used_bytes)})" if with_used else text
        if self.floor >= self.policy.max_bytes:
            text += ", max_size"
        parts = [f"used {explain.size(self.obs.used_bytes)}"]
        if keep.working_set:
            parts.append(f"working set {explain.size(keep.working_set)}")
        else:
            parts.append(f"keep {explain.size(keep.base)}")
        if keep.reserve:
            parts.append(f"surge reserve {explain.size(keep.reserve)}")
        return f"{text} ({' + '.join(parts)})"

    def deflate(self, *, want: int, limit: int, reason: Reason, why: Why) -> Decision:
        """Grow the guest toward ``want``, no higher than ``limit``."""
        policy, current = self.policy, self.obs.current_bytes
        if current >= limit:
            at = "max_size" if limit >= policy.max_bytes else "the host cap"
            return self.answer(None, Reason.AT_MAX, lambda: f"{_text(why)}, but already at {at}")
        target = _round_up_mib(want)
        if policy.max_deflate_step_bytes is not None:
            # Rounded up: a limit of "10%" need not be whole MiB.
            target = min(target, _round_up_mib(current + policy.max_deflate_step_bytes))
        # The floor wins over the step limit: a guest is never left below used + free_low.
        target = max(min(target, limit), self.floor)
        if target - current < policy.min_change_bytes and target != policy.max_bytes:
            return self.answer(
                None,
                Reason.MIN_CHANGE,
                lambda: (
                    f"{_text(why)}, but {explain.size(target - current)} is below min_change "
                    f"{explain.size(policy.min_change_bytes)}"
                ),
            )
        return self.answer(target, reason, why)

    def inflate(self, *, want: int, step_limited: bool, reason: Reason, why: Why) -> Decision:
        """Shrink the guest toward ``want``, never below the floor."""
        policy, current = self.policy, self.obs.current_bytes
        target = max(want, self.floor)
        if step_limited:
            target = max(target, current - policy.max_inflate_step_bytes)
        target = _round_up_mib(target)  # toward the current size
        if target >= current:
            if self.floor >= want:
                return self.answer(
                    None, Reason.AT_FLOOR, lambda: f"{_text(why)}, but at {self.floor_text()}"
                )
            return self.answer(
                None, Reason.MIN_CHANGE, lambda: f"{_text(why)}, but the change is under 1MiB"
            )
        blocked = inflate_block(guest=self.guest, policy=policy, now_s=self.now_s)
        if blocked is not None:
            block_reason, block_why = blocked
            return self.answer(None, block_reason, lambda: f"{_text(why)}, but {_text(block_why)}")
        if current - target < policy.min_change_bytes:
            return self.answer(
                None,
                Reason.MIN_CHANGE,
                lambda: (
                    f"{_text(why)}, but {explain.size(current - target)} is below min_change "
                    f"{explain.size(policy.min_change_bytes)}"
                ),
            )
        return self.answer(target, reason, why)


def _pressure(frame: _Frame, *, horizon: float) -> tuple[Reason, int, str] | None:
    """The guest-pressure signal that applies, with how many bytes it needs; or None."""
    obs, policy, boot = frame.obs, frame.policy, frame.guest.boot_bytes
    available = obs.available_bytes
    low, mid, high = policy.free_low_bytes, policy.band_mid_bytes, policy.free_high_bytes
    ahead = int(obs.decline_bps * horizon)

    def falling() -> str:
        return f", falling {explain.rate(obs.decline_bps)}" if obs.decline_bps >= MiB else ""

    if obs.new_oom_kills:
        why = f"the guest OOM-killed {obs.new_oom_kills} process(es)"
        return Reason.OOM_RISK, max(high - available, 0) + ahead, why
    if available < low:
        why = (
            f"available {explain.size(available)} < free_low {explain.size_pct(low, boot)}"
            f"{falling()}"
        )
        return Reason.PRESSURE, mid - available + ahead, why
    if ahead and available - ahead < low:
        why = (
            f"available {explain.size(available)}{falling()}: below free_low "
            f"{explain.size_pct(low, boot)} within {horizon:.0f}s"
        )
        return Reason.OOM_RISK, max(mid - available, 0) + ahead, why
    if obs.guest_deflated_bytes:
        why = f"the guest deflated the balloon itself by {explain.size(obs.guest_deflated_bytes)}"
        return Reason.GUEST_DEFLATE, max(high - available, 0) + ahead, why
    if available < mid:
        signal = ""
        if obs.new_alloc_stalls:
            signal = f"{obs.new_alloc_stalls} allocation stalls"
        elif obs.swap_in_bps >= THRASH_SWAP_IN_BPS:
            signal = f"swap-in {explain.rate(obs.swap_in_bps)}"
        elif obs.major_faults_per_s >= THRASH_MAJOR_FAULTS_PER_S:
            signal = f"{obs.major_faults_per_s:.0f} major faults/s"
        if signal:
            why = f"{signal} with available {explain.size(available)} below mid-band"
            return Reason.THRASHING, high - available + ahead, why
    return None


def _unobservable(
    problem: Unobservable, *, policy: ResolvedPolicy, host_cap_bytes: int | None
) -> Decision:
    return Decision(
        target_bytes=None,
        reason=problem.reason,
        why=f"{problem.detail}: no change",
        current_bytes=problem.current_bytes,
        ceiling_bytes=policy.max_bytes,
        free_low_bytes=policy.free_low_bytes,
        free_high_bytes=policy.free_high_bytes,
        host_cap_bytes=host_cap_bytes,
    )


def _release_blind(
    problem: Unobservable, *, guest: GuestFacts, policy: ResolvedPolicy, now_s: float
) -> Decision | None:
    """The stale-stats fail-safe: back to ``max_size`` once blind for ``stale_release_s``."""
    current = problem.current_bytes
    if current is None or guest.last_report_s is None or current >= policy.max_bytes:
        return None
    blind_s = now_s - guest.last_report_s
    if blind_s < policy.stale_release_s:
        return None
    why = (
        f"{problem.detail}; no guest report for {blind_s:.0f}s "
        f"(stale_release_s {policy.stale_release_s:g}s): balloond cannot see this guest run "
        f"short, so it hands back what it took: {explain.move(current, policy.max_bytes)}"
    )
    return Decision(
        target_bytes=policy.max_bytes,
        reason=Reason.STATS_LOST,
        why=why,
        current_bytes=current,
        ceiling_bytes=policy.max_bytes,
        free_low_bytes=policy.free_low_bytes,
        free_high_bytes=policy.free_high_bytes,
    )


def _off(*, guest: GuestFacts, policy: ResolvedPolicy) -> Decision:
    current = guest.history[-1].actual_bytes if guest.history else None
    ours = guest.target_bytes is not None and guest.target_bytes < policy.max_bytes
    if ours and current is not None and current < policy.max_bytes:
        move = explain.move(current, policy.max_bytes)
        target: int | None = policy.max_bytes
        why = f"reclaim is off: handing back what balloond took: {move}"
    else:
        target, why = None, "reclaim is off: balloon left alone"
    return Decision(
        target_bytes=target,
        reason=Reason.OFF,
        why=why,
        current_bytes=current,
        ceiling_bytes=policy.max_bytes,
        free_low_bytes=policy.free_low_bytes,
        free_high_bytes=policy.free_high_bytes,
    )


def decide(
    *,
    guest: GuestFacts,
    policy: ResolvedPolicy,
    host_cap_bytes: int | None,
    now_s: float,
    poll_interval_s: float,
) -> Decision:
    """Decide the balloon target for one guest now (see the module docstring for the rules).

    ``host_cap_bytes`` comes from :func:`balloond.core.policy.planner.plan_host` (None: the host has
    room). ``now_s`` is the monotonic clock of the samples.
    """
    if policy.reclaim is Reclaim.OFF:
        return _off(guest=guest, policy=policy)
    obs = observe(guest=guest, now_s=now_s, poll_interval_s=poll_interval_s)
    if isinstance(obs, Unobservable):
        released = _release_blind(obs, guest=guest, policy=policy, now_s=now_s)
        if released is not None:
            return released
        return _unobservable(obs, policy=policy, host_cap_bytes=host_cap_bytes)

    current, available = obs.current_bytes, obs.available_bytes
    max_bytes = policy.max_bytes
    keep = keep_for(guest=guest, policy=policy, now_s=now_s, poll_interval_s=poll_interval_s)
    floor = floor_bytes(used_bytes=obs.used_bytes, policy=policy, keep=keep)
    cap = (
        None
        if host_cap_bytes is None
        else min(max(_round_up_mib(host_cap_bytes), floor), max_bytes)
    )
    ceiling = max_bytes if cap is None else cap
    frame = _Frame(
        guest=guest,
        policy=policy,
        obs=obs,
        keep=keep,
        floor=floor,
        ceiling=ceiling,
        cap=cap,
        now_s=now_s,
    )

    pressure = _pressure(frame, horizon=horizon_s(poll_interval_s))
    if pressure is not None:
        reason, need, why = pressure
        bump = max(need, policy.min_change_bytes, MiB)
        return frame.deflate(want=current + bump, limit=max_bytes, reason=reason, why=why)

    signal = working_set_signal(guest=guest, policy=policy, obs=obs, now_s=now_s)
    if signal is not None:
        eating = "is eating" if signal.after_inflate else "holds memory for"
        why = (
            f"{_text(signal.why)}, with available {explain.size(available)} above free_low: "
            f"the balloon {eating} the guest's working set"
        )
        given = guest.last_deflate_s
        # Below its floor (a surge raised the reserve) the guest gets the floor now: the
        # waits below are for a guest whose only want is its cache.
        if current < floor:
            given = None
        if given is not None and guest.last_report_s is not None and given >= guest.last_report_s:
            return frame.answer(
                None, Reason.WORKING_SET, f"{why}; the last give-back is not in a report yet"
            )
        if (
            given is not None
            and guest.last_reason is Reason.WORKING_SET
            and now_s - given < WORKING_SET_SETTLE_POLLS * max(poll_interval_s, 1.0)
        ):
            # The cache refills only as the guest reads its files again: its reads stay
            # up for a pass or two after a give-back. Wait for that before another.
            return frame.answer(
                None, Reason.WORKING_SET, f"{why}; gave memory back, waiting for its cache"
            )
        if (
            not signal.after_inflate
            and given is not None
            and guest.last_reason is Reason.WORKING_SET
            and now_s - given < policy.refault_window_s
        ):
            # Reads that rose without an inflate may be the guest's own (a new stream):
            # one step per window, while the usual rate catches up if they are.
            return frame.answer(
                None,
                Reason.WORKING_SET,
                f"{why}; gave a step back {now_s - given:.0f}s ago, waiting to see it help",
            )
        want = current + max(policy.max_inflate_step_bytes, policy.min_change_bytes)
        before = guest.last_inflate_from_bytes
        if signal.after_inflate and before is not None and before > current:
            want = before  # back to where the guest was before the inflate that did it
        return frame.deflate(want=want, limit=ceiling, reason=Reason.WORKING_SET, why=why)

    if current < floor:
        return frame.deflate(
            want=floor,
            limit=max_bytes,
            reason=Reason.BELOW_FLOOR,
            why=lambda: f"below {frame.floor_text(with_used=True)}",
        )

    if current > ceiling:
        if cap is not None and cap < max_bytes:
            why = f"host short of memory, cap {explain.size(cap)}"
            reason = Reason.HOST_PRESSURE
        else:
            why = f"above max_size {explain.size_pct(max_bytes, guest.boot_bytes)}"
            reason = Reason.ABOVE_MAX
        return frame.inflate(want=ceiling, step_limited=False, reason=reason, why=why)

    if policy.reclaim is Reclaim.HOST_PRESSURE:
        if current < ceiling:
            why = "host has room again" if cap is None else f"host cap up to {explain.size(cap)}"
            return frame.deflate(want=ceiling, limit=ceiling, reason=Reason.HOST_RECOVERED, why=why)
        if cap is not None and cap < max_bytes:
            return frame.answer(None, Reason.HOST_PRESSURE, "held at the host cap")
        return frame.answer(None, Reason.AT_MAX, "at max_size until the host is short")

    mid = policy.band_mid_bytes
    if guest.last_reason is Reason.HOST_PRESSURE and available < mid:
        want = min(current + mid - available, ceiling)
        if want > current:
            why = "host has room again" if cap is None else f"host cap up to {explain.size(cap)}"
            return frame.deflate(want=want, limit=ceiling, reason=Reason.HOST_RECOVERED, why=why)
        return frame.answer(None, Reason.HOST_PRESSURE, "held at the host cap")

    if available > policy.free_high_bytes:
        boot = guest.boot_bytes  # read now: the explanation is written later, from values
        return frame.inflate(
            want=current - (available - mid),
            step_limited=True,
            reason=Reason.IDLE,
            why=lambda: (
                f"available {explain.size(available)} > free_high "
                f"{explain.size_pct(policy.free_high_bytes, boot)}"
            ),
        )
    return frame.answer(
        None,
        Reason.IN_BAND,
        lambda: (
            f"available {explain.size(available)} within "
            f"{explain.size(policy.free_low_bytes)}..{explain.size(policy.free_high_bytes)}"
        ),
    )
