"""What an adapter may see and do of the running daemon: the whole of it, in one place.

The adapters (MQTT, the metrics endpoint, systemd notify, the control socket) are handed a
:class:`DaemonPort`, which the service's :class:`~balloond.service.daemon.Daemon` implements,
and never reach into the daemon's own attributes. A guest reaches them as a
:class:`ManagedGuest`. Both are read-only except for three doors: :meth:`DaemonPort.subscribe`
(balloon changes as they happen), :meth:`DaemonPort.on_reload` and
:meth:`DaemonPort.commands` (operator requests, through the one command layer).

Adding something an adapter needs means adding it here first, which keeps the service free
to change behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from balloond.core.events import BalloonChange
from balloond.core.link import LinkState
from balloond.core.ops import OPS
from balloond.core.stats import HostSnapshot

if TYPE_CHECKING:
    from balloond.runtime.config import Config

__all__ = [
    "CommandHandler",
    "DaemonPort",
    "GuestReading",
    "Listener",
    "ManagedGuest",
    "TaskHealth",
]


@dataclass(frozen=True, slots=True)
class GuestReading:
    """One guest's numbers now, for the metrics endpoint (bytes; None: not known yet)."""

    state: LinkState
    mode: str
    policy: str | None
    boot_bytes: int | None
    actual_bytes: int | None
    target_bytes: int | None
    available_bytes: int | None
    #: Wall-clock time of the guest's last stats report (epoch seconds).
    stats_time: float | None
    deflate_on_oom: bool | None
    free_page_reporting: bool | None
    #: Policy decisions by reason since the daemon started.
    decisions: Mapping[str, int]
    #: Link calls that failed, and those of them that timed out.
    errors_total: int
    timeouts_total: int
    #: The last decision said the guest needed memory (pressure, oom-risk, ...).
    under_pressure: bool = False
    #: Processes the guest's OOM killer ended (QEMU >= 9.2 reports it; None elsewhere).
    oom_kills: int | None = None
    #: The floor of the last decision, and the working set and surge reserve in it.
    floor_bytes: int | None = None
    working_set_bytes: int | None = None
    surge_reserve_bytes: int | None = None


class ManagedGuest(Protocol):
    """A guest under balloond's control, as adapters see it."""

    @property
    def name(self) -> str: ...

    def status(self) -> dict[str, Any]:
        """The guest's state for people and MQTT (sizes in bytes)."""
        ...

    def reading(self) -> GuestReading: ...


#: Called in the control loop (must not block) with each balloon change.
Listener = Callable[[ManagedGuest, BalloonChange], None]


class TaskHealth(Protocol):
    """A supervised task that failed at least once."""

    @property
    def task(self) -> str: ...
    @property
    def failures(self) -> int: ...
    @property
    def last_error(self) -> str: ...
    @property
    def last_failure_time(self) -> float: ...
    @property
    def restarting(self) -> bool: ...


class CommandHandler(Protocol):
    """The command layer: one request in (JSON text or a dict), exactly one reply out."""

    async def handle(self, payload: bytes | str | dict[str, Any]) -> dict[str, Any]: ...


class DaemonPort(Protocol):
    """The running daemon, as adapters may use it."""

    @property
    def config(self) -> Config: ...

    @property
    def dry_run(self) -> bool: ...

    @property
    def guests(self) -> Mapping[str, ManagedGuest]:
        """Every managed guest by name (a live view: copy before awaiting)."""
        ...

    @property
    def host(self) -> HostSnapshot | None:
        """The host's memory at the last planner cycle."""
        ...

    @property
    def cycles(self) -> int:
        """Host planner cycles run: a counter that moves while the control loop turns."""
        ...

    @property
    def reload_failures(self) -> int: ...

    @property
    def reload_error(self) -> str | None:
        """Why the last reload was refused, while the old config still runs."""
        ...

    def summary(self) -> dict[str, int]:
        """Counts over all guests: guests, active, reclaimed_bytes, under_pressure."""
        ...

    def task_failures(self) -> Sequence[TaskHealth]: ...

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every balloon change; returns the unsubscribe."""
        ...

    def on_reload(self, hook: Callable[[bool], None]) -> None:
        """Call ``hook(True)`` when a reload starts and ``hook(False)`` when it ends."""
        ...

    async def wait_ready(self) -> None:
        """Return once the first discovery is done (at once after that)."""
        ...

    def commands(self, *, allowed: Iterable[str] = OPS) -> CommandHandler:
        """The command layer, limited to the ``allowed`` operations."""
        ...
