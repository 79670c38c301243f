"""Thousands of simulated guests in one event loop.

balloond is meant to manage every guest on a host, so its scale tests need many QMP
sockets at once. A :class:`SimFleet` starts one :class:`~testkit.sim.qmp_server.SimGuest`
per spec, each with its own listening unix socket, all in the calling event loop: no thread
and no task per guest. One ticker task moves every model on with the loop's clock; a guest
whose balloon is still is stepped only every ``idle_step_s``, so an idle fleet costs little.

::

    async with SimFleet(dir=tmp, guests=[SimGuestSpec("g1", 1 * GiB, trace)]) as fleet:
        path = fleet.socket_path("g1")
        guest = fleet.guest("g1")      # model, kill(), restart(), pause(), set_driver() ...
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

from testkit.sim.qmp_server import SimGuest, SimGuestSpec

log = logging.getLogger("testkit.sim.fleet")

#: Guests started concurrently; more would only queue on the loop anyway.
_START_BATCH = 256


def _raise_fd_limit(needed: int) -> None:
    """Each guest needs a listening socket and a connection: lift the soft fd limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning("open-file limit %d is below the %d this fleet needs", target, needed)


class SimFleet:
    """Simulated guests, their sockets in ``dir`` (``<name>.sock``), and their ticker."""

    def __init__(
        self,
        *,
        dir: str | Path,
        guests: Iterable[SimGuestSpec],
        tick_s: float = 0.1,
        idle_step_s: float = 0.5,
    ) -> None:
        self.dir = Path(dir)
        self.tick_s = tick_s
        self.idle_step_s = idle_step_s
        self._guests: dict[str, SimGuest] = {}
        for spec in guests:
            self._add(spec)
        self._ticker: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<SimFleet {len(self._guests)} guests in {self.dir}>"

    def _add(self, spec: SimGuestSpec) -> SimGuest:
        if spec.name in self._guests:
            raise ValueError(f"two guests named {spec.name!r}")
        if not spec.name or "/" in spec.name:
            raise ValueError(f"guest name {spec.name!r} cannot name a socket file")
        guest = SimGuest(
            spec, socket_path=self.dir / f"{spec.name}.sock", idle_step_s=self.idle_step_s
        )
        self._guests[spec.name] = guest
        return guest

    # --- access ------------------------------------------------------------------------

    def guest(self, name: str) -> SimGuest:
        """The guest called ``name`` (KeyError if there is none)."""
        return self._guests[name]

    def socket_path(self, name: str) -> Path:
        """Where guest ``name`` listens for QMP."""
        return self._guests[name].socket_path

    @property
    def names(self) -> list[str]:
        return list(self._guests)

    def __iter__(self) -> Iterator[SimGuest]:
        return iter(self._guests.values())

    def __len__(self) -> int:
        return len(self._guests)

    # --- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the sockets and start the ticker."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _raise_fd_limit(2 * len(self._guests) + 256)
        guests = list(self._guests.values())
        try:
            for i in range(0, len(guests), _START_BATCH):
                await asyncio.gather(*(g.start() for g in guests[i : i + _START_BATCH]))
        except BaseException:
            await self.close()
            raise
        self._ticker = asyncio.create_task(self._tick_forever(), name="sim-fleet-ticker")

    async def add(self, spec: SimGuestSpec) -> SimGuest:
        """Start one more guest in a running fleet."""
        guest = self._add(spec)
        await guest.start()
        return guest

    async def close(self) -> None:
        """Stop the ticker, kill every guest and remove its socket."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.wait([self._ticker])  # its CancelledError stays inside it
            self._ticker = None
        await asyncio.gather(*(g.aclose() for g in self._guests.values()))

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            for guest in self._guests.values():
                try:
                    guest.tick(now)
                except Exception:  # one guest's bug must not stop the others' clocks
                    log.exception("ticking %r failed", guest)
