"""The guest link: what a guest controller needs of a way to reach its guest.

A :class:`~balloond.service.guest.GuestController` never knows how its guest is reached. It
holds a :class:`GuestLink` and calls these, each under a timeout it chooses:

* connect (:meth:`GuestLink.connect_with_retry`), and close (:meth:`GuestLink.close`);
* probe: :meth:`GuestLink.enable_stats` turns the guest's stats reports on, after which the
  link's :attr:`~GuestLink.state` says whether a driver answers;
* :meth:`GuestLink.read_stats`, :meth:`GuestLink.current_actual` (the guest's size now),
  :meth:`GuestLink.read_io_bytes` (what the guest read from its disks, for refaults),
  :meth:`GuestLink.set_target` (the balloon command) and :meth:`GuestLink.boot_memory`;
* events: :attr:`GuestLink.on_event` is called with each :class:`LinkEvent` as it arrives;
* a session (:meth:`GuestLink.session`) around each cycle's calls: a link that shares its
  transport with other clients (a QMP socket Proxmox VE also uses) connects for the
  session and lets go after it; the others hold their connection and do nothing.

:class:`balloond.adapters.qmp.QmpLink` implements it over a QMP socket of balloond's own,
:class:`~balloond.adapters.qmp.SharedQmpLink` over a shared one, and
:class:`balloond.adapters.libvirt.LibvirtLink` through libvirt. A link translates its
transport's errors into :mod:`balloond.core.errors` (``LinkError`` and its kinds), so the
controller handles trouble the same way whichever link it holds.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from balloond.core.stats import BalloonStats

__all__ = ["NO_SESSION", "GuestLink", "LinkEvent", "LinkState", "driver_verdict"]


class LinkState(enum.Enum):
    """What balloond knows about a guest's link and balloon."""

    IDLE = "idle"  # created, never connected
    CONNECTING = "connecting"
    PROBING = "probing"  # connected, balloon found, waiting for the guest's first stats
    ACTIVE = "active"  # stats flowing: the guest driver answers
    NO_DEVICE = "no-device"  # connected, but the guest has no virtio-balloon device
    NO_DRIVER = "no-driver"  # device present, the guest driver never reports
    HUNG = "hung"  # connected, but the last call timed out
    DISCONNECTED = "disconnected"
    CLOSED = "closed"

    @property
    def connected(self) -> bool:
        # By value: an Enum member's own hash is a Python-level call, and this is asked
        # several times per guest per poll.
        return self._value_ in _CONNECTED


_CONNECTED = frozenset(
    state.value
    for state in (
        LinkState.PROBING,
        LinkState.ACTIVE,
        LinkState.NO_DEVICE,
        LinkState.NO_DRIVER,
        LinkState.HUNG,
    )
)


class _NoSession(AbstractAsyncContextManager[None]):
    async def __aexit__(self, *exc: object) -> None:
        return None


#: The session of a link that stays connected: nothing to open or close. A controller that
#: gets it from :meth:`GuestLink.session` runs its cycle without entering it.
NO_SESSION: AbstractAsyncContextManager[None] = _NoSession()


def driver_verdict(
    state: LinkState,
    stats: BalloonStats,
    *,
    reported_before: int,
    enabled_at: float | None,
    now_s: float,
    grace_s: float,
) -> tuple[LinkState, str] | None:
    """What one stats read says of the guest's balloon driver, for any link: ACTIVE once
    the guest reports afresh (``last_update`` other than ``reported_before``), NO_DRIVER
    when a probing guest still has no valid stats ``grace_s`` after polling was enabled;
    None when the link's state stays as it is."""
    if stats.valid and stats.last_update != reported_before:
        if state in (LinkState.PROBING, LinkState.NO_DRIVER):
            return LinkState.ACTIVE, "guest reports stats"
        return None
    if (
        state is LinkState.PROBING
        and enabled_at is not None
        and now_s - enabled_at > grace_s
        and not stats.valid
    ):
        return (
            LinkState.NO_DRIVER,
            f"no stats {grace_s:g}s after polling was enabled "
            "(virtio_balloon driver not loaded in the guest?)",
        )
    return None


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """Something the guest's VMM reported: ``name`` as QEMU spells it (BALLOON_CHANGE,
    SHUTDOWN, STOP, RESUME, RESET), its ``data``, and when the link received it (monotonic
    seconds). A link over another transport names its events the same way."""

    name: str
    data: Mapping[str, Any]
    t_s: float


class GuestLink(Protocol):
    """One guest, reached one way. Sizes in bytes; every call takes its own timeout."""

    #: The guest's name, as the operator knows it.
    name: str
    #: How the guest is reached, for people: "qmp", "qmp-shared", "libvirt".
    way: str
    #: Called in the event loop (must not block) with each event as it arrives.
    on_event: Callable[[LinkEvent], None] | None
    #: The balloon device's properties, read at each connect (None: unknown).
    deflate_on_oom: bool | None
    free_page_reporting: bool | None
    #: Calls that failed, and those of them that got no answer in time (for metrics).
    errors_total: int
    timeouts_total: int

    @property
    def state(self) -> LinkState: ...

    @property
    def address(self) -> str:
        """Where the guest is reached (a QMP socket path, ...), for people and logs."""
        ...

    @property
    def boot_bytes(self) -> int | None:
        """Guest RAM at boot, once known."""
        ...

    async def connect_with_retry(self, *, attempt_timeout_s: float, stop: Any) -> bool:
        """Connect, retrying with backoff; False if ``stop`` (an asyncio.Event) came first."""
        ...

    def session(self, *, timeout_s: float) -> AbstractAsyncContextManager[None]:
        """Around one cycle's calls: connects first where the link does not stay connected
        (raising LinkError as a call would), and lets go after; :data:`NO_SESSION` for a
        link that stays connected."""
        ...

    async def enable_stats(
        self, interval_s: int, *, timeout_s: float, restart: bool = False
    ) -> None:
        """Ask the guest to report stats every ``interval_s`` (the probe for a driver).
        ``restart``: restart the VMM's report timer, so the guest reports at once and then
        every interval from now (a known phase to poll on)."""
        ...

    async def read_stats(self, *, timeout_s: float) -> BalloonStats: ...

    async def current_actual(self, *, timeout_s: float) -> int:
        """The guest's logical size now."""
        ...

    async def read_io_bytes(self, *, timeout_s: float) -> int | None:
        """Bytes the guest has read from its disks, as the host counts them; None when it
        has none or the link cannot tell."""
        ...

    async def set_target(self, target_bytes: int, *, timeout_s: float) -> None: ...

    async def boot_memory(self, *, timeout_s: float) -> int: ...

    async def close(self) -> None:
        """Disconnect for good; the link is not used again."""
        ...
