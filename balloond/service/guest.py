"""One guest under control: the loop that polls it, asks the engine, and moves its balloon.

A :class:`GuestController` owns its guest's link (a :class:`~balloond.core.link.GuestLink`,
such as the QMP adapter's) and is the only writer of that guest's balloon target. Everything
else (the control socket, MQTT, the host planner) changes the controller's *intent* (mode,
manual target, host cap) and wakes it; the loop then acts. That keeps one guest's QMP
traffic strictly ordered and makes a slow or hung QEMU cost only its own task.

Each cycle: read stats and ``actual`` (each under the QMP timeout; ``actual`` from the
link's BALLOON_CHANGE tracking while the balloon is still), notice changes balloond
did not make (the guest's own deflate-on-oom, another QMP client) and accept them rather
than fight, ask the pure engine for a decision, apply it (unless dry-run or paused), audit
it, and sleep until the next interval or until a BALLOON_CHANGE event or a command wakes
the loop early.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from balloond.adapters.audit_log import AuditLog
from balloond.adapters.port import GuestReading
from balloond.core.errors import LinkError, NoBalloonError, QMPCommandError
from balloond.core.events import BalloonChange, HoldExpired
from balloond.core.events import GuestEvent as ControllerEvent
from balloond.core.link import NO_SESSION, GuestLink, LinkEvent, LinkState
from balloond.core.policy import Decision, GuestView, Reason, ResolvedPolicy, decide
from balloond.core.policy.books import (
    ACTUAL_TOLERANCE_BYTES,
    ExternalMove,
    GuestBooks,
)
from balloond.core.policy.decision import PRESSURE_REASONS
from balloond.core.policy.observe import stale_after_s
from balloond.core.stats import GuestSample
from balloond.core.timeline import Timeline
from balloond.core.units import fmt_size

#: How long after a guest's stats report is due the controller polls it (QEMU asks the
#: guest on its timer; the guest answers within milliseconds unless very busy).
REPORT_SLACK_S = 0.15
#: The least time between two restarts of a guest's report timer.
RESYNC_MIN_S = 5.0
#: How long a guest without a balloon device waits before the link looks again
#: (a device can be hot-plugged).
NO_DEVICE_RECHECK_S = 30.0


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Mode(enum.Enum):
    """Who decides this guest's target."""

    AUTO = "auto"  # the policy engine
    MANUAL = "manual"  # an operator's target, held until resumed or the hold expires
    PAUSED = "paused"  # nobody: the balloon is left as it is


@dataclass(frozen=True, slots=True)
class Intent:
    """What the operator asked of this guest; persisted by the state store.

    ``hold_until`` is wall-clock (epoch seconds) so that it survives a restart.
    """

    mode: Mode = Mode.AUTO
    manual_target_bytes: int | None = None
    hold_until: float | None = None
    policy_override: str | None = None


@dataclass(frozen=True, slots=True)
class Timing:
    """The loop's clock settings, from ``[daemon]``."""

    poll_interval_s: float
    qmp_timeout_s: float
    connect_timeout_s: float
    history_len: int
    #: How long a guest without a balloon device waits before the link looks again.
    device_recheck_s: float = NO_DEVICE_RECHECK_S
    #: The timeline kept for plots: its span and the time between two points.
    timeline_s: float = 3600.0
    timeline_interval_s: float = 10.0


class _Change(NamedTuple):
    """A balloon change to make: its target, and what the log and the audit record say."""

    target_bytes: int
    reason: str
    explanation: str
    actor: str
    #: The engine's reason, for the books (None for an operator's change).
    engine_reason: Reason | None = None


class GuestController:
    """Polls one guest and applies decisions. Run :meth:`run` as the guest's task."""

    def __init__(
        self,
        *,
        name: str,
        link: GuestLink,
        policy_name: str,
        policy_for: Callable[[int], ResolvedPolicy],
        timing: Timing,
        audit: AuditLog,
        dry_run: bool = False,
        intent: Intent | None = None,
        on_change: Callable[[GuestController, ControllerEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.policy_name = policy_name
        self._policy_for = policy_for
        self.timing = timing
        self.audit = audit
        self.dry_run = dry_run
        self.intent = intent or Intent()
        self._on_change = on_change
        self._clock = clock
        self._wall = wall_clock
        self.log = logging.getLogger(f"balloond.guest.{name}")
        #: What this guest's engine decisions are made from, kept between polls.
        self.books = GuestBooks.new(name, history_len=timing.history_len)
        #: What ``balloonctl plot`` draws: a compact point every few seconds, and changes.
        self.timeline = Timeline(span_s=timing.timeline_s, interval_s=timing.timeline_interval_s)
        self.host_cap_bytes: int | None = None
        self.last_decision: Decision | None = None
        self.last_action: dict[str, Any] | None = None
        self.decisions = Counter[str]()
        self._policy: ResolvedPolicy | None = None
        #: A wake-up asked for (a command, an event): the next sleep ends at once.
        self._woken = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: What the loop waits on while it sleeps (None while it is not sleeping).
        self._waiter: asyncio.Future[None] | None = None
        #: Samples taken since the controller started (one per cycle that read the guest).
        self.polls = 0
        #: When QEMU's next stats report is due (monotonic seconds), once stats are on.
        self._report_s: float | None = None
        #: Stats were (re-)enabled: the poll grid follows the new report timer.
        self._regrid = False
        #: A poll on the grid found no new report: re-enable stats at the next cycle.
        self._resync = False
        self._on_grid = False
        self._last_update_seen = 0
        self._resynced_s = -math.inf
        self._stop_event = asyncio.Event()
        #: The stats polling interval applied since the last connect; None: not yet.
        self._stats_interval_s: int | None = None
        self._no_device_logged = False
        self._no_deflate_on_oom_logged = False
        #: The last decision held the guest at a floor its working set raised (logged once
        #: per episode).
        self._held_by_working_set = False
        #: The manual target a dry run last reported as not applied.
        self._dry_run_manual: int | None = None
        self.link = link
        link.on_event = self._on_event

    def replace_link(self, link: GuestLink) -> None:
        """Take a fresh link to the same guest (after a failure closed the last one)."""
        self.link = link
        link.on_event = self._on_event

    def __repr__(self) -> str:
        return f"<GuestController {self.name} {self.link.state.value} {self.intent.mode.value}>"

    # --- intent, from commands and the supervisor -----------------------------------------
    def wake(self) -> None:
        """Make the loop run a cycle now instead of at the next interval."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stop(self) -> None:
        """Ask the loop to finish its current step and return (also ends a connect that
        is still retrying)."""
        self._stop_event.set()
        self.wake()

    @property
    def stopped(self) -> bool:
        return self._stop_event.is_set()

    def set_intent(self, intent: Intent) -> None:
        self.intent = intent
        self.wake()

    def set_timing(self, timing: Timing) -> None:
        """New clock settings (reload) keeping the samples that still fit; the loop
        re-applies the stats polling interval to QEMU at its next cycle."""
        self.timing = timing
        self.books.resize_history(timing.history_len)
        tl = self.timeline
        if (tl.span_s, tl.interval_s) != (timing.timeline_s, timing.timeline_interval_s):
            self.timeline = Timeline(
                span_s=timing.timeline_s, interval_s=timing.timeline_interval_s
            )
        self.wake()

    def set_policy(self, name: str, policy_for: Callable[[int], ResolvedPolicy]) -> None:
        """Switch policy (reload, or an operator's choice) without losing history."""
        self.policy_name = name
        self._policy_for = policy_for
        self._policy = None
        self.wake()

    @property
    def policy(self) -> ResolvedPolicy | None:
        """The policy resolved against this guest's boot memory (None until connected)."""
        if self._policy is None and self.link.boot_bytes is not None:
            self._policy = self._policy_for(self.link.boot_bytes)
        return self._policy

    def stats_stale_s(self) -> int | None:
        """Seconds since the guest's last new stats report, once that is long enough for
        the engine to call its stats stale; None while stats flow (or before a connect)."""
        if self.last_report_s is None:
            return None
        age_s = self._clock() - self.last_report_s
        if age_s <= stale_after_s(self.timing.poll_interval_s):
            return None
        return int(age_s)

    # The books, read-only from outside (status, metrics, MQTT, tests).
    @property
    def history(self) -> deque[GuestSample]:
        return self.books.history

    @property
    def target_bytes(self) -> int | None:
        return self.books.target_bytes

    @property
    def last_deflate_s(self) -> float | None:
        return self.books.last_deflate_s

    @property
    def external_change_s(self) -> float | None:
        return self.books.external_change_s

    @property
    def last_reason(self) -> Reason | None:
        return self.books.last_reason

    @property
    def last_report_s(self) -> float | None:
        return self.books.last_report_s

    def view(self) -> GuestView | None:
        """A frozen view of this guest for the engine and the host planner."""
        return self.books.view(self.link.boot_bytes)

    def reading(self) -> GuestReading:
        """This guest's numbers now, for the metrics endpoint."""
        last = self.history[-1] if self.history else None
        stats = last.stats if last else None
        link = self.link
        decision = self.last_decision
        return GuestReading(
            state=link.state,
            mode=self.intent.mode.value,
            policy=self.policy_name,
            boot_bytes=link.boot_bytes,
            actual_bytes=last.actual_bytes if last else None,
            target_bytes=self.target_bytes,
            available_bytes=stats.available_bytes if stats else None,
            stats_time=stats.last_update if stats and stats.last_update > 0 else None,
            deflate_on_oom=link.deflate_on_oom,
            free_page_reporting=link.free_page_reporting,
            decisions=dict(self.decisions),  # a copy: a scrape reads it in another thread
            errors_total=link.errors_total,
            timeouts_total=link.timeouts_total,
            under_pressure=decision is not None and decision.reason in PRESSURE_REASONS,
            oom_kills=stats.oom_kills if stats else None,
            floor_bytes=decision.floor_bytes if decision else None,
            working_set_bytes=decision.working_set_bytes if decision else None,
            surge_reserve_bytes=decision.surge_reserve_bytes if decision else None,
        )

    def status(self) -> dict[str, Any]:
        """This guest's state for status tables, MQTT retained topics and scripts (bytes)."""
        last = self.history[-1] if self.history else None
        stats = last.stats if last else None
        decision = self.last_decision
        action = self.last_action
        intent = self.intent
        return {
            "name": self.name,
            "state": self.link.state.value,
            "way": self.link.way,
            "address": self.link.address,
            "mode": intent.mode.value,
            "policy": self.policy_name,
            "boot_bytes": self.link.boot_bytes,
            "actual_bytes": last.actual_bytes if last else None,
            "target_bytes": self.target_bytes,
            "available_bytes": stats.available_bytes if stats else None,
            "cache_bytes": stats.disk_caches_bytes if stats else None,
            "free_bytes": stats.free_bytes if stats else None,
            "manual_target_bytes": intent.manual_target_bytes,
            "hold_until": intent.hold_until,
            "host_cap_bytes": self.host_cap_bytes,
            "stats_stale_s": self.stats_stale_s(),
            "deflate_on_oom": self.link.deflate_on_oom,
            "free_page_reporting": self.link.free_page_reporting,
            "last_decision": (
                {"reason": str(decision.reason), "explanation": decision.explanation}
                if decision
                else None
            ),
            "last_action": (
                {k: action[k] for k in ("time", "actor", "old_bytes", "new_bytes", "reason")}
                if action
                else None
            ),
        }

    def explain(self) -> Decision | None:
        """What the engine would decide now, from the same pure function the loop uses.

        The engine reads the books as they are (they meet ``GuestFacts``): copying them into
        a frozen view for every guest on every poll was a visible share of the daemon's
        time, and nothing changes them while the engine, which only reads, runs."""
        policy, boot, books = self.policy, self.link.boot_bytes, self.books
        if policy is None or boot is None or not books.history:
            return None
        books.boot_bytes = boot
        return decide(
            guest=books,
            policy=policy,
            host_cap_bytes=self.host_cap_bytes,
            now_s=self._clock(),
            poll_interval_s=self.timing.poll_interval_s,
        )

    # --- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, poll and act until :meth:`stop` is called."""
        due_s = 0.0  # when the next regular cycle is due
        try:
            while not self._done():
                if not self.link.state.connected:
                    if not await self._connect():
                        break
                    # Each guest keeps a phase of its own: just after its reports when
                    # they come once a poll (see _aligned), else at random, so that guests
                    # connected together (start-up, a QEMU restart) do not poll in step.
                    due_s = self._clock() + random.uniform(0, self.timing.poll_interval_s)
                    if self._report_s is not None and self._aligned():
                        due_s = self._report_s + REPORT_SLACK_S
                        self._regrid = False
                if self.link.state is LinkState.NO_DEVICE:
                    # A device can be hot-plugged: look again, through a fresh connect so
                    # that a device found then gets the same set-up as at start.
                    await self._sleep(self.timing.device_recheck_s)
                    if self._done() or not await self._connect():
                        break
                    continue
                started_s = self._clock()
                interval_s = self.timing.poll_interval_s
                self._on_grid = started_s > due_s - interval_s / 2
                await self._session_cycle()
                if self._regrid and self._report_s is not None:
                    # Stats were just re-enabled: QEMU's next report comes an interval on.
                    self._regrid = False
                    due_s = self._report_s + REPORT_SLACK_S
                    await self._sleep(due_s - self._clock())
                    continue
                # A cycle less than half an interval early counts as the due one (timers
                # fire a little early, and an event wake-up that close is as good). Then
                # keep to the guest's grid: sleeping a whole interval after a late start
                # would let every wake-up delay of a busy loop shift the guest later, until
                # the guests the loop woke late poll together.
                if started_s > due_s - interval_s / 2:
                    due_s += (max(0.0, started_s - due_s) // interval_s + 1) * interval_s
                await self._sleep(due_s - self._clock())
        finally:
            await self.link.close()

    async def _connect(self) -> bool:
        """Connect (retrying until :meth:`stop`) and set the guest up: the one path every
        connect and reconnect takes, whatever the link found before.

        A new connection may lead to a new QEMU, or to a balloon device that was not there
        before, so: history cleared, policy resolved again against the boot memory read on
        this connect, stats polling turned on. False once stopped.
        """
        ok = await self.link.connect_with_retry(
            attempt_timeout_s=self.timing.connect_timeout_s, stop=self._stop_event
        )
        if not ok or self._done():
            return False
        self.books.connected(self._clock())
        self._policy = None
        self._report_s = None
        self._last_update_seen = 0
        self._stats_interval_s = None
        if self.link.state is LinkState.NO_DEVICE:
            if not self._no_device_logged:
                self.log.warning(
                    "no virtio-balloon device: left alone (looking again every %.0fs)",
                    self.timing.device_recheck_s,
                )
                self._no_device_logged = True
            return True
        self._no_device_logged = False
        if self.link.deflate_on_oom is False and not self._no_deflate_on_oom_logged:
            # Stats come at most once a second: a surge that eats the guest's headroom
            # faster than that is beyond any poll; with deflate-on-oom the guest itself
            # takes pages back from the balloon first, and balloond respects that.
            self.log.warning(
                "deflate-on-oom is off on this balloon device: a surge faster than one "
                "stats interval can OOM-kill a process in a squeezed guest "
                "(-device virtio-balloon-pci,...,deflate-on-oom=on)"
            )
            self._no_deflate_on_oom_logged = True
        if self._aligned():
            # Spread guests that connect together: QEMU's report timer starts when stats
            # are enabled, and the polls follow it.
            await self._sleep(random.uniform(0, self.timing.poll_interval_s))
            if self._done():
                return False
        await self._guard(self._in_session(self._enable_stats))
        return True

    def _wanted_stats_interval_s(self) -> int:
        """QEMU's stats polling interval: whole seconds, at least 1."""
        return max(1, round(self.timing.poll_interval_s))

    def _aligned(self) -> bool:
        """Whether polls follow the guest's reports: when both come once an interval.

        QEMU asks the guest for stats on a timer, and again an interval after each answer;
        a poll at a random phase would read a report up to a whole interval old. So the
        controller restarts that timer when it enables stats (the interval set to 0 and
        back: the guest reports at once), polls :data:`REPORT_SLACK_S` after each report is
        due, and when a poll on that grid finds no new report (the guest took longer to
        answer, and its timer drifted) restarts the timer again. A surge is then met with
        stats a fraction of a second old, not up to a second."""
        interval = self.timing.poll_interval_s
        return interval >= 1 and interval == self._wanted_stats_interval_s()

    async def _enable_stats(self) -> None:
        interval = self._wanted_stats_interval_s()
        aligned = self._aligned()
        await self.link.enable_stats(interval, timeout_s=self.timing.qmp_timeout_s, restart=aligned)
        self._stats_interval_s = interval
        if aligned:
            # QEMU's timer starts afresh now: the guest reports at once, then an interval
            # after each answer.
            self._report_s = self._clock() + interval
            self._regrid = True

    def _stats_due(self) -> bool:
        """Whether stats polling is to be (re-)enabled before this cycle's reads: not yet
        on this connection, a new interval, or a poll grid that drifted."""
        due = self._stats_interval_s != self._wanted_stats_interval_s() or self._resync
        self._resync = False
        return due

    def _done(self) -> bool:
        return self._stop_event.is_set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep until ``seconds`` pass or :meth:`wake`. This runs once per guest per poll:
        a bare future and a timer on the loop the controller runs in (an Event and a
        timeout context would each ask for the running loop, a system call on 3.11)."""
        if seconds > 0 and not self._woken and not self._done():
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            handle = loop.call_later(seconds, _resolve, waiter)
            try:
                await waiter
            finally:
                handle.cancel()
                self._waiter = None
        self._woken = False

    async def _guard(self, step: Any) -> None:
        """Run one step; link trouble is the link's state, not the loop's end."""
        try:
            await step
        except (LinkError, QMPCommandError) as exc:
            self._trouble(exc)

    def _trouble(self, exc: LinkError | QMPCommandError) -> None:
        if isinstance(exc, LinkError):
            self.log.debug("cycle: %s", exc)
        elif isinstance(exc, NoBalloonError):
            self.log.warning("%s", exc)
        else:
            self.log.warning("QMP: %s", exc)

    async def _in_session(self, step: Callable[[], Awaitable[None]]) -> None:
        async with self.link.session(timeout_s=self.timing.connect_timeout_s):
            await self._guard(step())

    async def _session_cycle(self) -> None:
        """One cycle in the link's session (a connection held just for it, where the
        transport is shared with other clients); link trouble is the link's state, not the
        loop's end."""
        try:
            session = self.link.session(timeout_s=self.timing.connect_timeout_s)
            if session is NO_SESSION:  # a held link: no context to enter on every poll
                if self._stats_due():
                    await self._guard(self._enable_stats())
                await self._cycle()
            else:
                async with session:
                    if self._stats_due():
                        await self._guard(self._enable_stats())
                    await self._cycle()
        except (LinkError, QMPCommandError) as exc:
            self._trouble(exc)

    async def _cycle(self) -> None:
        timeout = self.timing.qmp_timeout_s
        stats = await self.link.read_stats(timeout_s=timeout)
        actual = await self.link.current_actual(timeout_s=timeout)
        reads = await self.link.read_io_bytes(timeout_s=timeout)
        now = self._clock()
        sample = GuestSample(
            t_s=now, actual_bytes=actual, stats=stats if stats.valid else None, read_bytes=reads
        )
        move = self.books.record(sample)
        self.polls += 1
        if stats.valid:
            if (
                stats.last_update == self._last_update_seen
                and self._on_grid
                and self._aligned()
                and self.link.state is LinkState.ACTIVE
                and now - self._resynced_s > RESYNC_MIN_S
            ):
                # Polled before the report: restart QEMU's timer (not over and over for a
                # guest that stopped answering: that one is stale, and says so).
                self._resync = True
                self._resynced_s = now
            self._last_update_seen = stats.last_update
        available = stats.available_bytes if stats.valid else None
        self.timeline.add(
            self._wall(),
            size_bytes=actual,
            target_bytes=self.books.target_bytes,
            available_bytes=available,
            used_bytes=None if available is None else max(0, actual - available),
        )
        if move is not None:
            self._report_external(move, sample)
        if self._done():
            return  # shutting down: start no new balloon change
        change = self._act()
        if change is not None:
            await self._apply(change)

    def _report_external(self, move: ExternalMove, sample: GuestSample) -> None:
        """Say that a balloon move balloond did not make was accepted instead of fought: a
        guest's deflate-on-oom (upwards: memory pressure, so the books also count it as a
        deflate for the cooldown) or another QMP client."""
        self.log.info(
            "balloon moved to %s without balloond (target was %s): %s",
            fmt_size(move.actual_bytes),
            fmt_size(move.target_bytes),
            "the guest deflated it" if move.grew else "changed by another client",
        )
        self._record(
            actor="guest",
            old=move.target_bytes,
            new=move.actual_bytes,
            reason="external-change",
            explanation="balloon moved without balloond; accepted, backing off",
            sample=sample,
        )

    def _act(self) -> _Change | None:
        """What to do now, by the operator's intent or else the engine's decision (which
        it notes); the change to make, if any."""
        intent = self.intent
        expired = intent.hold_until is not None and self._wall() >= intent.hold_until
        if intent.mode is Mode.MANUAL and expired:
            self.log.info("manual hold expired: back to automatic")
            self.intent = intent = Intent(policy_override=intent.policy_override)
            if self._on_change is not None:
                self._on_change(self, HoldExpired(self.name))
        if intent.mode is Mode.PAUSED:
            return None
        if intent.mode is Mode.MANUAL and intent.manual_target_bytes is not None:
            wanted = intent.manual_target_bytes
            if self.dry_run:
                # Dry-run means no balloon moves, an operator's included: say once what
                # would happen, as for the engine's decisions.
                if self._dry_run_manual != wanted:
                    self._dry_run_manual = wanted
                    self.log.info("dry-run: would set %s for the operator", fmt_size(wanted))
                    self._record(
                        actor="operator",
                        old=self.history[-1].actual_bytes,
                        new=wanted,
                        reason="manual",
                        explanation=f"operator set {fmt_size(wanted)}; dry run: balloon left alone",
                        sample=self.history[-1],
                    )
                return None
            if self.target_bytes != wanted:
                return _Change(wanted, "manual", f"operator set {fmt_size(wanted)}", "operator")
            return None
        decision, policy = self.explain(), self.policy
        if decision is None or policy is None:
            return None
        self.books.decided(decision, policy=policy, now_s=self._clock())
        self.decisions[decision.reason] += 1
        previous, self.last_decision = self.last_decision, decision
        held = decision.reason is Reason.AT_FLOOR and decision.working_set_bytes is not None
        if held and not self._held_by_working_set:
            self.log.info("held by its working set: %s", decision.explanation)
        self._held_by_working_set = held
        if decision.target_bytes is None:
            return None
        if self.dry_run:
            if previous is None or previous.target_bytes != decision.target_bytes:
                self.log.info("dry-run: would %s", decision.explanation)
                self._record(
                    actor="engine",
                    old=self.history[-1].actual_bytes,
                    new=decision.target_bytes,
                    reason=str(decision.reason),
                    explanation=decision.explanation,
                    sample=self.history[-1],
                )
            return None
        return _Change(
            decision.target_bytes,
            str(decision.reason),
            decision.explanation,
            "engine",
            decision.reason,
        )

    async def _apply(self, change: _Change) -> None:
        target, reason, explanation = change.target_bytes, change.reason, change.explanation
        old = self.history[-1].actual_bytes if self.history else None
        await self.link.set_target(target, timeout_s=self.timing.qmp_timeout_s)
        self.books.applied(target, now_s=self._clock(), reason=change.engine_reason)
        self.log.info("%s -> %s (%s): %s", fmt_size(old), fmt_size(target), reason, explanation)
        self._record(
            actor=change.actor,
            old=old,
            new=target,
            reason=reason,
            explanation=explanation,
            sample=self.history[-1] if self.history else None,
        )

    def _record(
        self,
        *,
        actor: str,
        old: int | None,
        new: int,
        reason: str,
        explanation: str,
        sample: GuestSample | None,
    ) -> None:
        record: dict[str, Any] = {
            "guest": self.name,
            "actor": actor,
            "old_bytes": old,
            "new_bytes": new,
            "reason": reason,
            "explanation": explanation,
            "policy": self.policy_name,
            "dry_run": self.dry_run,
            "stats": sample.stats.as_dict() if sample and sample.stats else None,
            **self._bounds(actor),
        }
        self.last_action = self.audit.write(record)
        if old is not None and not self.dry_run:
            self.timeline.change(
                self._wall(), old_bytes=old, new_bytes=new, reason=reason, actor=actor
            )
        if self._on_change is not None:
            self._on_change(self, BalloonChange(self.name, self.last_action))

    def _bounds(self, actor: str) -> dict[str, int | None]:
        """The limits a target of ``actor`` had to keep, for the audit record: the engine's
        floor (used + keep + surge reserve, or min_size), what raised it (the working set
        refaults showed, the surge reserve) and max_size; an operator's min_size and
        max_size."""
        policy = self.policy
        if policy is None:
            return {"floor_bytes": None, "max_bytes": None}
        floor: int | None = policy.min_bytes
        working_set = reserve = None
        decision = self.last_decision
        if actor == "engine" and decision is not None:
            floor = decision.floor_bytes  # None where stats were lost
            working_set, reserve = decision.working_set_bytes, decision.surge_reserve_bytes
        return {
            "floor_bytes": floor,
            "working_set_bytes": working_set,
            "surge_reserve_bytes": reserve,
            "max_bytes": policy.max_bytes,
        }

    def _on_event(self, event: LinkEvent) -> None:
        """A BALLOON_CHANGE that moves away from our target is the guest (or someone)
        acting on its own, often under memory pressure: look at once, not next interval.
        Progress towards our own target needs no extra cycle."""
        if event.name != "BALLOON_CHANGE":
            if event.name in ("SHUTDOWN", "RESET"):
                self.wake()
            return
        actual = event.data.get("actual")
        target = self.target_bytes
        if not isinstance(actual, int) or target is None or not self.history:
            return
        if (
            abs(actual - target)
            > abs(self.history[-1].actual_bytes - target) + ACTUAL_TOLERANCE_BYTES
        ):
            self.wake()
