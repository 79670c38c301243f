"""Guests run by libvirt: the only module that imports libvirt-python.

libvirtd owns each domain's QMP monitor, so balloond asks libvirt instead: one connection
per URI (:class:`LibvirtSource`), shared by every domain on it, and a
:class:`LibvirtLink` per domain implementing the guest link
(:class:`balloond.core.link.GuestLink`):

* domains are found by listing the running ones at each connect, and followed through
  libvirt's lifecycle events (started, stopped, defined, undefined), not by polling;
* stats through ``setMemoryStatsPeriod`` and ``memoryStats``; targets through
  ``setMemoryFlags`` on the live domain; balloon-change events are taken as hints and
  ``actual`` is read back; the maximum is the domain's maximum memory;
* a domain whose XML has ``<memballoon model='none'>`` is ``no-device``, one whose guest
  never reports is ``no-driver``, as for QMP;
* a policy and bounds can come from the domain's own XML metadata, in balloond's
  namespace (:data:`METADATA_NS`)::

      <metadata>
        <balloond:guest xmlns:balloond="https://balloond.org/xmlns/libvirt/1">
          <balloond:policy>database</balloond:policy>
          <balloond:min>1GiB</balloond:min>
          <balloond:max>6GiB</balloond:max>
        </balloond:guest>
      </metadata>

libvirt's calls block: they run in a bounded executor shared by every libvirt guest, each
under the caller's timeout, and libvirt's errors are translated once, here, into
:mod:`balloond.core.errors`. Events come through libvirt's asyncio integration
(``libvirtaio``), registered once per process in the daemon's loop. When libvirtd goes
away (a restart), the source reconnects with backoff; its guests show as disconnected
meanwhile and keep their controllers, books, intents and holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import Any, TypeVar

import libvirt
import libvirtaio

from balloond.adapters.discovery import GuestSpec, Way
from balloond.adapters.linkbase import LinkBase
from balloond.core.errors import (
    DisconnectedError,
    LinkError,
    LinkTimeoutError,
    NoBalloonError,
    QMPCommandError,
)
from balloond.core.link import LinkEvent, LinkState
from balloond.core.stats import BalloonStats
from balloond.core.units import KiB, parse_size
from balloond.runtime.aio import backoff_s, sleep_unless

__all__ = ["METADATA_NS", "LibvirtLink", "LibvirtSource", "stats_from_libvirt"]

T = TypeVar("T")

#: The XML namespace of balloond's per-domain settings in ``<metadata>``.
METADATA_NS = "https://balloond.org/xmlns/libvirt/1"
#: libvirt error codes that mean the domain or the daemon is gone, not that a call failed.
_GONE = frozenset(
    {
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_OPERATION_INVALID,  # the domain is not running
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_AUTH_FAILED,
    }
)
#: memoryStats() keys (KiB unless counted) -> BalloonStats fields.
_KIB_FIELDS = {
    "swap_in": "swap_in_bytes",
    "swap_out": "swap_out_bytes",
    "unused": "free_bytes",
    "available": "total_bytes",  # libvirt's "available" is the guest's MemTotal
    "usable": "available_bytes",  # and its "usable" is MemAvailable
    "disk_caches": "disk_caches_bytes",
}
_COUNT_FIELDS = {
    "major_fault": "major_faults",
    "minor_fault": "minor_faults",
    "hugetlb_pgalloc": "htlb_pgalloc",
    "hugetlb_pgfail": "htlb_pgfail",
}
_registered_loop: asyncio.AbstractEventLoop | None = None


def _register_event_loop() -> None:
    """Have libvirt dispatch its events in this process's running loop (once)."""
    global _registered_loop
    loop = asyncio.get_running_loop()
    if _registered_loop is None:
        libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
        _registered_loop = loop
    elif _registered_loop is not loop:
        # libvirt keeps the first event implementation for the life of the process.
        raise RuntimeError("libvirt's events are bound to another event loop in this process")


def stats_from_libvirt(stats: dict[str, int]) -> BalloonStats:
    """A ``virDomain.memoryStats()`` dict as :class:`BalloonStats`; ValueError if odd."""
    if not isinstance(stats, dict):
        raise ValueError(f"memoryStats reply is not a dict: {stats!r:.200}")
    values: dict[str, int | None] = {}
    for key, field in (*_KIB_FIELDS.items(), *_COUNT_FIELDS.items()):
        value = stats.get(key)
        if value is None:
            values[field] = None
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            values[field] = value * KiB if key in _KIB_FIELDS else value
        else:
            raise ValueError(f"memoryStats {key} is not a non-negative integer: {value!r}")
    last_update = stats.get("last_update", 0)
    if not isinstance(last_update, int) or last_update < 0:
        raise ValueError(f"memoryStats last_update is not a count of seconds: {last_update!r}")
    return BalloonStats(last_update=last_update, **values)


def _translate(name: str, what: str, exc: libvirt.libvirtError) -> Exception:
    code = exc.get_error_code()
    text = f"{name}: {what}: {exc.get_error_message() or exc}"
    if code in _GONE:
        return DisconnectedError(text)
    return QMPCommandError(text, error_class=f"libvirt:{code}")


def _domain_settings(xml: str) -> tuple[dict[str, str], bool, bool | None, bool | None]:
    """From a domain's XML: balloond's metadata, whether it has a balloon, and the
    balloon's deflate-on-oom and free-page-reporting (None: not said)."""
    root = ET.fromstring(xml)
    settings: dict[str, str] = {}
    for node in root.iterfind(f"metadata/{{{METADATA_NS}}}guest/*"):
        key = node.tag.rpartition("}")[2]
        if node.text and node.text.strip():
            settings[key] = node.text.strip()
    balloon = root.find("devices/memballoon")
    has_balloon = balloon is not None and balloon.get("model", "virtio") != "none"

    def flag(attr: str) -> bool | None:
        value = balloon.get(attr) if balloon is not None else None
        return None if value is None else value == "on"

    return settings, has_balloon, flag("autodeflate"), flag("freePageReporting")


class LibvirtSource:
    """One libvirt connection (``uri``): the running domains, followed through events,
    and the links to them.

    ``on_change`` is called (in the loop) when the set of domains or a domain's settings
    changed: the daemon rescans. ``patterns``: domain-name globs to manage.
    """

    def __init__(
        self,
        uri: str,
        *,
        executor: Executor,
        timeout_s: float,
        patterns: Iterable[str] = ("*",),
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.uri = uri
        self.executor = executor
        self.timeout_s = timeout_s
        self.patterns = tuple(patterns)
        self.on_change = on_change
        self.log = logging.getLogger(f"balloond.libvirt.{uri}")
        self.conn: libvirt.virConnect | None = None
        #: Bumped at each connect: links opened before it must look up their domain again.
        self.generation = 0
        self.connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._domains: dict[str, GuestSpec] = {}
        self._links: dict[str, LibvirtLink] = {}
        self._callbacks: list[int] = []
        #: Look-ups of single domains under way (after lifecycle events).
        self._pending: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"<LibvirtSource {self.uri} {len(self._domains)} domains>"

    # --- what the daemon uses -------------------------------------------------------------
    def specs(self) -> list[GuestSpec]:
        return list(self._domains.values())

    def owns(self, spec: GuestSpec) -> bool:
        return spec.way is Way.LIBVIRT and spec.address.startswith(f"{self.uri} ")

    def link(self, spec: GuestSpec) -> LibvirtLink:
        domain = spec.address.removeprefix(f"{self.uri} ")
        link = LibvirtLink(spec.name, domain, self)
        self._links[spec.name] = link
        return link

    async def call(self, what: str, fn: Callable[..., T], *args: Any, timeout_s: float) -> T:
        """Run a blocking libvirt call in the executor under ``timeout_s``."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                return await loop.run_in_executor(self.executor, functools.partial(fn, *args))
        except TimeoutError:
            raise LinkTimeoutError(f"{self.uri}: {what}: no answer within {timeout_s:g}s") from None
        except libvirt.libvirtError as exc:
            raise _translate(self.uri, what, exc) from exc

    # --- the connection -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, follow the domains, reconnect after libvirtd went away; until ``stop``."""
        _register_event_loop()
        attempt = 0
        try:
            while not stop.is_set():
                try:
                    await self._connect()
                except LinkError as exc:
                    attempt += 1
                    if attempt == 1 or attempt % 10 == 0:
                        self.log.warning("cannot connect (attempt %d): %s", attempt, exc)
                    await sleep_unless(stop, backoff_s(attempt - 1, initial_s=0.5, cap_s=30.0))
                    continue
                attempt = 0
                self.log.info("connected: %d domains to manage", len(self._domains))
                self.on_change()
                closed = asyncio.ensure_future(self._closed.wait())
                stopping = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closed.cancel()
                    stopping.cancel()
                if not stop.is_set():
                    self.log.warning("connection to libvirt lost; reconnecting")
                    await self._drop()
                    await sleep_unless(stop, 0.5)
        finally:
            await self._drop()

    async def _connect(self) -> None:
        conn = await self.call("open", libvirt.open, self.uri, timeout_s=self.timeout_s)
        self.conn = conn
        self.generation += 1
        self._closed = asyncio.Event()
        try:
            conn.registerCloseCallback(self._on_close, None)
            self._callbacks = [
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
                ),
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE, self._on_balloon, None
                ),
            ]
            conn.setKeepAlive(5, 3)
        except libvirt.libvirtError as exc:
            await self._drop()
            raise _translate(self.uri, "register events", exc) from exc
        try:
            await self._refresh()
        except LinkError:
            await self._drop()
            raise
        self.connected.set()

    async def _drop(self) -> None:
        conn, self.conn = self.conn, None
        self.connected.clear()
        for task in list(self._pending):
            task.cancel()
        for link in self._links.values():
            link.lost("libvirt connection lost")
        if conn is None:
            return
        callbacks, self._callbacks = self._callbacks, []

        def close() -> None:
            for cb in callbacks:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(cb)
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

        with contextlib.suppress(LinkError, QMPCommandError):
            await self.call("close", close, timeout_s=self.timeout_s)

    async def _refresh(self) -> None:
        """List the running domains and read each one's settings."""
        conn = self.conn
        if conn is None:
            return

        def scan() -> dict[str, GuestSpec]:
            found: dict[str, GuestSpec] = {}
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    spec = self._spec(dom)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() in _GONE:
                        continue  # stopped while we looked
                    raise
                if spec is not None:
                    found[spec.name] = spec
            return found

        domains = await self.call("list domains", scan, timeout_s=self.timeout_s * 4)
        if domains != self._domains:
            self._domains = domains
            self.on_change()

    def _spec(self, dom: libvirt.virDomain) -> GuestSpec | None:
        name = dom.name()
        if not any(fnmatch.fnmatchcase(name, p) for p in self.patterns):
            return None
        settings, _, _, _ = _domain_settings(dom.XMLDesc(0))
        bounds: dict[str, int | None] = {"min": None, "max": None}
        for key in bounds:
            if key in settings:
                try:
                    bounds[key] = parse_size(settings[key])
                except ValueError as exc:
                    self.log.warning("domain %s: metadata %s: %s; ignored", name, key, exc)
        return GuestSpec(
            name=name,
            way=Way.LIBVIRT,
            address=f"{self.uri} {name}",
            source="libvirt",
            min_bytes=bounds["min"],
            max_bytes=bounds["max"],
            policy=settings.get("policy"),
        )

    def _schedule(self, name: str) -> None:
        """Look at one domain again (it started, stopped, or was defined or undefined)."""
        task = asyncio.ensure_future(self._update_one(name))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _update_one(self, name: str) -> None:
        conn = self.conn
        if conn is None:
            return

        def look() -> GuestSpec | None:
            try:
                dom = conn.lookupByName(name)
                return self._spec(dom) if dom.isActive() else None
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in _GONE:
                    return None  # undefined, or gone while we looked
                raise

        try:
            spec = await self.call(f"look at {name}", look, timeout_s=self.timeout_s)
        except (LinkError, QMPCommandError) as exc:
            self.log.warning("cannot look at domain %s: %s", name, exc)
            return
        if spec == self._domains.get(name):
            return
        if spec is None:
            self._domains.pop(name, None)
        else:
            self._domains[name] = spec
        self.on_change()

    # --- libvirt's callbacks (in the event loop) -----------------------------------------
    def _on_close(self, conn: Any, reason: int, opaque: Any) -> None:
        self._closed.set()

    def _on_lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        name = dom.name()
        link = self._links.get(name)
        if event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN):
            if link is not None:
                link.deliver(LinkEvent("SHUTDOWN", {}, time.monotonic()))
        elif event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED and link is not None:
            link.deliver(LinkEvent("STOP", {}, time.monotonic()))
        elif event == libvirt.VIR_DOMAIN_EVENT_RESUMED and link is not None:
            link.deliver(LinkEvent("RESUME", {}, time.monotonic()))
        if event in (
            libvirt.VIR_DOMAIN_EVENT_STARTED,
            libvirt.VIR_DOMAIN_EVENT_STOPPED,
            libvirt.VIR_DOMAIN_EVENT_DEFINED,
            libvirt.VIR_DOMAIN_EVENT_UNDEFINED,
        ):
            self._schedule(name)

    def _on_balloon(self, conn: Any, dom: Any, actual_kib: int, opaque: Any) -> None:
        link = self._links.get(dom.name())
        if link is not None:
            link.balloon_changed(actual_kib * KiB)


class LibvirtLink(LinkBase):
    """One libvirt domain as a guest link. Calls go through its source's executor."""

    way = "libvirt"

    def __init__(
        self,
        name: str,
        domain: str,
        source: LibvirtSource,
        *,
        driver_grace_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, driver_grace_s=driver_grace_s, clock=clock)
        self.domain = domain
        self.source = source
        self._dom: libvirt.virDomain | None = None
        self._generation = -1
        self._has_balloon = False

    def __repr__(self) -> str:
        return f"<LibvirtLink {self.name} {self._state.value} {self.address}>"

    @property
    def address(self) -> str:
        return f"{self.source.uri} {self.domain}"

    # --- from the source ------------------------------------------------------------------
    def lost(self, why: str) -> None:
        """The source's connection went away: so did this link's."""
        self._dom = None
        self._actual_bytes = None
        if self._state.connected:
            self._set_state(LinkState.DISCONNECTED, why)

    def deliver(self, event: LinkEvent) -> None:
        if event.name == "SHUTDOWN":
            self._dom = None
            self._actual_bytes = None
            if self._state.connected:
                self._set_state(LinkState.DISCONNECTED, "domain stopped")
        if self.on_event is not None:
            self.on_event(event)

    def balloon_changed(self, actual_bytes: int) -> None:
        """A balloon-change event: a hint (libvirt merges them); ``actual`` is read back."""
        self._actual_bytes = None
        if self.on_event is not None:
            self.on_event(LinkEvent("BALLOON_CHANGE", {"actual": actual_bytes}, self._clock()))

    # --- connection -----------------------------------------------------------------------
    async def connect(self, *, timeout_s: float) -> None:
        """Look the domain up on the source's connection and read its settings."""
        if self._state is LinkState.CLOSED:
            raise DisconnectedError(f"{self.name}: link is closed")
        self._set_state(LinkState.CONNECTING, self.address)
        conn = self.source.conn
        if conn is None or not self.source.connected.is_set():
            self._set_state(LinkState.DISCONNECTED, "no libvirt connection")
            raise DisconnectedError(f"{self.name}: not connected to {self.source.uri}")
        generation = self.source.generation

        def look() -> tuple[libvirt.virDomain, int, str]:
            dom = conn.lookupByName(self.domain)
            if not dom.isActive():
                raise libvirt.libvirtError("domain is not running")
            return dom, dom.maxMemory(), dom.XMLDesc(0)

        try:
            dom, max_kib, xml = await self.source.call("look up", look, timeout_s=timeout_s)
        except LinkError as exc:
            self._set_state(LinkState.DISCONNECTED, str(exc))
            raise
        except QMPCommandError as exc:
            self._set_state(LinkState.DISCONNECTED, str(exc))
            raise DisconnectedError(str(exc)) from exc
        try:
            _, has_balloon, deflate, reporting = _domain_settings(xml)
        except ET.ParseError as exc:
            self._set_state(LinkState.DISCONNECTED, "unreadable domain XML")
            raise QMPCommandError(f"{self.name}: unreadable domain XML: {exc}") from exc
        if not isinstance(max_kib, int) or max_kib <= 0:
            self._set_state(LinkState.DISCONNECTED, "odd maximum memory")
            raise QMPCommandError(f"{self.name}: odd maximum memory {max_kib!r}")
        self._dom, self._generation = dom, generation
        self._boot_bytes = max_kib * KiB
        self._has_balloon = has_balloon
        self.deflate_on_oom, self.free_page_reporting = deflate, reporting
        self._actual_bytes = None
        self._has_disks = None
        self._last_stats_update = 0
        if not has_balloon:
            self._set_state(LinkState.NO_DEVICE, "no memballoon in the domain")
        else:
            self._set_state(LinkState.PROBING, "memballoon found")

    async def close(self) -> None:
        self._dom = None
        self._set_state(LinkState.CLOSED)
        if self.source._links.get(self.name) is self:
            del self.source._links[self.name]

    # --- calls ----------------------------------------------------------------------------
    async def _run(self, what: str, timeout_s: float, fn: Callable[[libvirt.virDomain], T]) -> T:
        dom = self._dom
        if dom is None or not self._state.connected or self._generation != self.source.generation:
            raise DisconnectedError(f"{self.name}: {what}: not connected ({self._state.value})")
        try:
            result = await self.source.call(what, fn, dom, timeout_s=timeout_s)
        except LinkTimeoutError:
            self.timeouts_total += 1
            self.errors_total += 1
            self._set_state(LinkState.HUNG, f"{what} got no answer within {timeout_s:g}s")
            raise
        except DisconnectedError:
            self.errors_total += 1
            self._dom = None
            self._set_state(LinkState.DISCONNECTED, f"lost during {what}")
            raise
        except QMPCommandError:
            self.errors_total += 1
            raise
        self._answered(what)
        return result

    def _require_balloon(self) -> None:
        if not self._has_balloon:
            raise NoBalloonError(f"{self.name}: no memballoon", error_class="DeviceNotActive")

    async def enable_stats(
        self, interval_s: int, *, timeout_s: float, restart: bool = False
    ) -> None:
        if interval_s < 1:
            raise ValueError(f"stats polling interval must be >= 1 s, not {interval_s}")
        self._require_balloon()
        live = libvirt.VIR_DOMAIN_AFFECT_LIVE

        def apply(dom: libvirt.virDomain) -> None:
            if restart:  # QEMU ignores a set to the period it already has
                dom.setMemoryStatsPeriod(0, live)
            dom.setMemoryStatsPeriod(interval_s, live)

        await self._run("set stats period", timeout_s, apply)
        self._stats_enabled_at = self._clock()

    async def read_stats(self, *, timeout_s: float) -> BalloonStats:
        self._require_balloon()
        raw = await self._run("memory stats", timeout_s, lambda d: d.memoryStats())
        try:
            stats = stats_from_libvirt(raw)
        except ValueError as exc:
            self.errors_total += 1
            raise QMPCommandError(f"{self.name}: odd memoryStats reply: {exc}") from exc
        actual = raw.get("actual")
        if isinstance(actual, int) and actual > 0:
            self._actual_bytes = actual * KiB
        self._judge_driver(stats)
        return stats

    async def current_actual(self, *, timeout_s: float) -> int:
        """``actual`` from the memoryStats this cycle read, unless the balloon moved since
        (a target set, a balloon-change event): then read again."""
        if self._actual_bytes is not None:
            return self._actual_bytes
        raw = await self._run("memory stats", timeout_s, lambda d: d.memoryStats())
        actual = raw.get("actual") if isinstance(raw, dict) else None
        if not isinstance(actual, int) or isinstance(actual, bool) or actual <= 0:
            self.errors_total += 1
            raise QMPCommandError(f"{self.name}: memoryStats has no actual: {raw!r:.200}")
        self._actual_bytes = actual * KiB
        return self._actual_bytes

    async def read_io_bytes(self, *, timeout_s: float) -> int | None:
        """Bytes read from the domain's disks (``block.N.rd.bytes`` summed), or None."""
        if self._has_disks is False:
            return None
        conn = self.source.conn
        if conn is None:
            raise DisconnectedError(f"{self.name}: not connected to {self.source.uri}")

        def blocks(dom: libvirt.virDomain) -> dict[str, Any]:
            records = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_BLOCK)
            return dict(records[0][1]) if records else {}

        params = await self._run("block stats", timeout_s, blocks)
        total, seen = 0, False
        for key, value in params.items():
            if key.startswith("block.") and key.endswith(".rd.bytes") and isinstance(value, int):
                total += value
                seen = True
        self._has_disks = seen
        return total if seen else None

    async def set_target(self, target_bytes: int, *, timeout_s: float) -> None:
        if target_bytes <= 0:
            raise ValueError(f"balloon target must be positive, not {target_bytes}")
        self._require_balloon()
        kib = target_bytes // KiB
        await self._run(
            "set memory",
            timeout_s,
            lambda d: d.setMemoryFlags(kib, libvirt.VIR_DOMAIN_AFFECT_LIVE),
        )
        self._actual_bytes = None  # read back at the next cycle

    async def boot_memory(self, *, timeout_s: float) -> int:
        if self._boot_bytes is None:
            raise DisconnectedError(f"{self.name}: not connected")
        return self._boot_bytes
