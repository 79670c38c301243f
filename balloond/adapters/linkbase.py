"""What every guest link shares, however it reaches its guest.

:class:`~balloond.adapters.qmp.QmpLink` (and its shared-socket kind) and
:class:`~balloond.adapters.libvirt.LibvirtLink` differ in how they talk to QEMU, not in what
they say of the guest. :class:`LinkBase` holds that part once:

* the state machine: one method, :meth:`LinkBase._set_state`, changes the state and logs
  the transition (a warning for trouble), and remembers the state a hang interrupted so
  that an answer puts it back;
* the balloon driver's verdict on each stats read (PROBING, ACTIVE, NO_DRIVER:
  :func:`balloond.core.link.driver_verdict`);
* connecting with retries, with capped, randomised exponential backoff, until stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from balloond.core.errors import LinkError, QMPCommandError
from balloond.core.link import NO_SESSION, LinkEvent, LinkState, driver_verdict
from balloond.core.stats import BalloonStats
from balloond.runtime.aio import backoff_s, sleep_unless

#: States logged as warnings: the guest cannot be managed as it should.
TROUBLE = frozenset(
    {LinkState.NO_DEVICE, LinkState.NO_DRIVER, LinkState.HUNG, LinkState.DISCONNECTED}
)
#: The first delay between connect attempts, and the most it grows to.
CONNECT_BACKOFF_S = 0.2
CONNECT_BACKOFF_CAP_S = 30.0


class LinkBase:
    """The state, the driver verdict and the connect loop of a guest link; a subclass
    provides :meth:`connect` and the calls.

    ``driver_grace_s``: how long after stats polling is enabled the guest may stay silent
    before it is reported as :attr:`LinkState.NO_DRIVER`.
    """

    def __init__(self, name: str, *, driver_grace_s: float, clock: Callable[[], float]) -> None:
        self.name = name
        self.driver_grace_s = driver_grace_s
        self.log = logging.getLogger(f"balloond.guest.{name}")
        self._clock = clock
        #: Called (in the event loop, must not block) with every event as it arrives.
        self.on_event: Callable[[LinkEvent], None] | None = None
        #: The balloon device's properties, read at each connect (None: unknown).
        self.deflate_on_oom: bool | None = None
        self.free_page_reporting: bool | None = None
        #: Counters for metrics: errors of any kind, and timeouts.
        self.errors_total = 0
        self.timeouts_total = 0
        self._state = LinkState.IDLE
        self._state_before_hang = LinkState.PROBING
        self._boot_bytes: int | None = None
        #: When stats polling was last enabled, and the last report's ``last_update``.
        self._stats_enabled_at: float | None = None
        self._last_stats_update = 0
        #: The guest's size as last heard; None: ask.
        self._actual_bytes: int | None = None
        #: Whether the guest has block devices to count reads on; None: not asked yet.
        self._has_disks: bool | None = None

    # --- state ---------------------------------------------------------------------------
    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def boot_bytes(self) -> int | None:
        """Guest RAM at boot, read on connect."""
        return self._boot_bytes

    def _set_state(self, new: LinkState, why: str = "") -> None:
        old = self._state
        if new is old:
            return
        self._state = new
        if new is LinkState.HUNG:
            self._state_before_hang = old
        level = logging.WARNING if new in TROUBLE else logging.INFO
        self.log.log(level, "link %s -> %s%s", old.value, new.value, f": {why}" if why else "")

    def _answered(self, what: str) -> None:
        """A call answered: a hung link is back in the state the hang interrupted."""
        if self._state is LinkState.HUNG:
            self._set_state(self._state_before_hang, f"{what} answered again")

    def _judge_driver(self, stats: BalloonStats) -> None:
        """Move between PROBING, ACTIVE and NO_DRIVER on what a stats read shows."""
        verdict = driver_verdict(
            self._state,
            stats,
            reported_before=self._last_stats_update,
            enabled_at=self._stats_enabled_at,
            now_s=self._clock(),
            grace_s=self.driver_grace_s,
        )
        if stats.valid:
            self._last_stats_update = stats.last_update
        if verdict is not None:
            self._set_state(*verdict)

    # --- connection ----------------------------------------------------------------------
    def session(self, *, timeout_s: float) -> contextlib.AbstractAsyncContextManager[None]:
        """The link is held for good: a cycle needs no session of its own."""
        return NO_SESSION

    async def connect(self, *, timeout_s: float) -> None:
        raise NotImplementedError

    async def connect_with_retry(
        self,
        *,
        attempt_timeout_s: float,
        stop: asyncio.Event,
        initial_backoff_s: float = CONNECT_BACKOFF_S,
        max_backoff_s: float = CONNECT_BACKOFF_CAP_S,
    ) -> bool:
        """Connect, retrying with capped, randomised exponential backoff.

        Returns True once connected, False if ``stop`` was set first. A guest that is not
        there, does not answer, or answers oddly while being set up is tried again.
        """
        attempt = 0
        while not stop.is_set():
            attempt += 1
            try:
                await self.connect(timeout_s=attempt_timeout_s)
                return True
            except (LinkError, QMPCommandError) as exc:
                # Log the first failure and then every tenth: a guest that stays away
                # must not fill the journal.
                if attempt == 1 or attempt % 10 == 0:
                    self.log.info("connect attempt %d failed: %s", attempt, exc)
            delay = backoff_s(attempt - 1, initial_s=initial_backoff_s, cap_s=max_backoff_s)
            await sleep_unless(stop, delay)
        return False
