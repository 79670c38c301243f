"""A Linux guest's memory, its virtio balloon and its workload, stepped in virtual time.

The simulator needs guests whose numbers behave like the lab's real ones without booting
thousands of kernels. This model is pure: it never reads a clock. Its owner moves it forward
with :meth:`GuestModel.advance_to` (the QMP server passes the event loop's clock; an offline
simulator passes virtual time), so the same guest can be served over QMP or replayed fast.

What it reproduces, from the lab's measurements (``/work/shared/LAB.md``) and the Linux
virtio_balloon driver:

* ``actual`` (the guest's logical size) moves toward the target at a finite rate
  (QEMU 7.2 + Linux 6.1 under TCG: about 1.7 GiB/s inflating, faster deflating), in whole
  pages, and stalls ("out of puff") when the guest has nothing left to give; a value above
  RAM is clamped the way QEMU does.
* The workload (a :class:`~balloond.replay.traces.Trace`) wants anonymous memory and page
  cache. Cache shrinks when memory is tight, cold pages first (the kernel's LRU keeps what
  is touched). What is missing of the *hot* cache is read again at the workload's touch
  rate: refaults, which are disk reads (the guest's block device counts them, as QEMU's
  ``query-blockstats`` shows) and, for the share mapped into memory, major faults. A
  stream reads new data on top, whatever the balloon does.
  When anonymous demand does not fit, the guest deflates the balloon itself if
  deflate-on-oom is on, otherwise the OOM killer ends a process: demand drops by its size
  (which comes back as the process restarts) and an OOM counter increments.
* Stats as the Linux driver reports them, at QEMU's guest-stats-polling-interval, with
  QEMU's quirks: -1 everywhere and last-update 0 until the first report; one report when
  the driver loads, even with polling off; turning polling on reports at once;
  stat-oom-kills (and the other 9.2 counters) only for QEMU >= 9.2.
* A guest without the driver: the target is stored, ``actual`` never moves, stats never come.

Amounts are bytes, times are seconds.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from balloond.core.stats import BalloonStats
from balloond.core.units import MiB
from balloond.replay.traces import Trace, idle

PAGE_BYTES = 4096
#: QEMU refuses a polling interval above UINT32_MAX seconds.
MAX_POLL_INTERVAL_S = 0xFFFF_FFFF
#: Wall-clock seconds at model time 0 unless the owner says otherwise (any fixed, non-zero
#: value keeps offline runs deterministic; 0 would read as "never reported").
DEFAULT_WALL_OFFSET_S = 1_700_000_000.0
#: QEMU versions from which guest-stats carries the oom-kill and reclaim counters.
STATS_V92 = (9, 2)


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestParams:
    """How one simulated guest is built. ``None`` sizes are derived from ``ram_bytes``."""

    ram_bytes: int
    deflate_on_oom: bool = False
    #: False is the "no driver" guest: balloon commands are accepted, nothing happens.
    driver: bool = True
    #: Seconds after boot until the driver loads (and sends its first stats).
    driver_load_s: float = 0.0
    qemu_version: tuple[int, int, int] = (7, 2, 0)
    #: Lab, 1 GiB TCG guest: 512 MiB inflated in ~0.3 s, deflated in ~0.2 s.
    inflate_bytes_per_s: int = 1536 * MiB
    deflate_bytes_per_s: int = 2560 * MiB
    #: RAM never in MemTotal (kernel image, memmap...). Lab: 50.7 MiB of a 1 GiB guest.
    kernel_reserved_bytes: int | None = None
    #: Kernel and base-system memory in use whatever the workload (slab, page tables, init).
    base_used_bytes: int | None = None
    #: Free memory the kernel keeps back; allocations beyond it reclaim or OOM-kill.
    min_free_bytes: int | None = None
    #: Subtracted from free + cache to give MemAvailable (Linux's totalreserve_pages).
    #: Lab, 1 GiB guest: available was 65 MiB below free with almost no cache.
    reserve_bytes: int | None = None
    #: File pages the system itself keeps using (binaries, libraries): always in the cache
    #: demand, so squeezing them shows as major faults even for a trace without cache.
    file_working_set_bytes: int = 16 * MiB
    #: The OOM killer's victim holds at least this fraction of anon memory (or the shortfall).
    oom_victim_fraction: float = 0.5
    #: Seconds for a killed process's memory to come back (it restarts and warms up).
    oom_restart_s: float = 60.0
    idle_minor_faults_per_s: float = 20.0
    #: Share of the hot cache read each second, for a trace that does not say (refaults
    #: are this share of the hot pages that are missing).
    cache_touch_per_s: float = 0.02
    #: Share of refaults that are page faults (files mapped into memory: binaries,
    #: libraries, mmap'd databases); the rest are read() calls, which the guest's major
    #: fault counter never sees.
    mmap_fraction: float = 0.25
    #: Longest integration step; steps also end on trace points and stats reports.
    max_step_s: float = 1.0

    def __post_init__(self) -> None:
        if self.ram_bytes < 64 * MiB or self.ram_bytes % PAGE_BYTES:
            raise ValueError("ram_bytes must be a whole number of pages, at least 64 MiB")
        if self.inflate_bytes_per_s <= 0 or self.deflate_bytes_per_s <= 0:
            raise ValueError("balloon rates must be positive")
        if not 0 <= self.mmap_fraction <= 1 or not 0 <= self.cache_touch_per_s <= 1:
            raise ValueError("mmap_fraction and cache_touch_per_s must be in [0, 1]")
        if not 0 < self.oom_victim_fraction <= 1:
            raise ValueError("oom_victim_fraction must be in (0, 1]")
        if self.max_step_s <= 0 or self.oom_restart_s <= 0 or self.driver_load_s < 0:
            raise ValueError("max_step_s and oom_restart_s must be positive, driver_load_s >= 0")

    @property
    def kernel_reserved(self) -> int:
        if self.kernel_reserved_bytes is not None:
            return self.kernel_reserved_bytes
        return _page_floor(34 * MiB + self.ram_bytes // 64)

    @property
    def base_used(self) -> int:
        if self.base_used_bytes is not None:
            return self.base_used_bytes
        return _page_floor(32 * MiB + self.ram_bytes // 256)

    @property
    def min_free(self) -> int:
        if self.min_free_bytes is not None:
            return self.min_free_bytes
        # Linux's min_free_kbytes = sqrt(lowmem_kbytes * 16), clamped to [128 KiB, 256 MiB].
        kib = int(math.sqrt(self.ram_bytes // 1024 * 16))
        return _page_floor(min(max(kib, 128), 262_144) * 1024)

    @property
    def reserve(self) -> int:
        if self.reserve_bytes is not None:
            return self.reserve_bytes
        return _page_floor(min(self.ram_bytes // 16, 256 * MiB))

    @property
    def reports_v92_stats(self) -> bool:
        return self.qemu_version[:2] >= STATS_V92


class DriverState(enum.Enum):
    """Whether the guest's virtio_balloon driver runs."""

    ABSENT = "absent"  # never loads by itself (no-driver guest)
    LOADING = "loading"  # loads at a set time after boot
    LOADED = "loaded"


@dataclass(frozen=True, slots=True)
class MemoryView:
    """The guest's memory right now, as the model sees it (for tests and simulators)."""

    t_s: float
    actual_bytes: int
    target_bytes: int
    balloon_bytes: int
    total_bytes: int
    free_bytes: int
    available_bytes: int
    anon_bytes: int
    anon_demand_bytes: int
    cache_bytes: int
    cache_demand_bytes: int
    oom_kills: int
    guest_deflated_bytes: int
    major_faults: int
    minor_faults: int
    #: Hot cache pages read again after the guest had to drop them, since boot.
    refaults: int
    #: Bytes read from the guest's disk since boot: refaults and streamed data.
    read_bytes: int
    #: The part of the cache the workload keeps touching, and how much of it is resident.
    hot_cache_demand_bytes: int
    hot_cache_bytes: int


def _page_floor(n: int) -> int:
    return n - n % PAGE_BYTES


def _mib_ceil(n: int) -> int:
    return -(-n // MiB) * MiB


class GuestModel:
    """One guest's memory and balloon, moved forward by its owner's clock.

    ``boot_t_s`` is the time (on the owner's clock) the guest boots; the trace starts there.
    ``wall_offset_s`` maps model time to host wall-clock seconds for ``last-update``.
    """

    def __init__(
        self,
        params: GuestParams,
        trace: Trace | None = None,
        *,
        boot_t_s: float = 0.0,
        wall_offset_s: float = DEFAULT_WALL_OFFSET_S,
    ) -> None:
        self.params = params
        self.trace = trace if trace is not None else idle(params.ram_bytes)
        self.boot_t_s = boot_t_s
        self.wall_offset_s = wall_offset_s
        self.t_s = boot_t_s
        p = params
        self._capacity = p.ram_bytes - p.kernel_reserved - p.base_used - p.min_free
        self._balloon = 0
        self._target_balloon = 0
        self._chasing = False  # the driver works toward the target (after a config change)
        self._stalled = False  # ... but the guest had nothing to give at the last step
        self._killed = 0.0
        self._killed_decay_bps = 0.0
        self._oom_kills = 0
        self._guest_deflated = 0
        self._minor = 0.0
        self._major = 0.0
        self._refaults = 0.0
        self._read_bytes = 0.0
        self._touch_per_s = (
            self.trace.cache_touch_per_s
            if self.trace.cache_touch_per_s is not None
            else params.cache_touch_per_s
        )
        self._alloc_stalls = 0.0
        self._async_scans = 0.0
        self._direct_scans = 0.0
        self._async_reclaims = 0.0
        self._direct_reclaims = 0.0
        self._poll_s = 0
        self._next_report_t: float | None = None
        self._stats = BalloonStats(last_update=0)
        self._last_report_t: float | None = None
        if p.driver:
            self._driver = DriverState.LOADING
            self._driver_load_t = boot_t_s + p.driver_load_s
        else:
            self._driver = DriverState.ABSENT
            self._driver_load_t = math.inf
        anon, cache = (_page_floor(v) for v in self.trace.at(0.0))
        self._anon_demand = anon
        self._cache_demand = cache + p.file_working_set_bytes
        self._hot_demand = _page_floor(self.trace.hot_at(0.0)) + p.file_working_set_bytes
        self._anon = min(anon, max(0, self._capacity))
        self._cache = min(self._cache_demand, max(0, self._capacity - self._anon))
        self._minor = self._anon / PAGE_BYTES
        self._fire_due()

    def __repr__(self) -> str:
        return (
            f"<GuestModel t={self.t_s:.3f} actual={self.actual_bytes} "
            f"target={self.target_bytes} driver={self._driver.value} oom_kills={self._oom_kills}>"
        )

    # --- what QMP sees -----------------------------------------------------------------

    @property
    def actual_bytes(self) -> int:
        """The guest's logical size, as ``query-balloon`` reports it."""
        return self.params.ram_bytes - self._balloon

    @property
    def target_bytes(self) -> int:
        """The logical size the host asked for (RAM until the first ``balloon``)."""
        return self.params.ram_bytes - self._target_balloon

    @property
    def stats(self) -> BalloonStats:
        """The guest's last stats report (all None and last_update 0 before the first)."""
        return self._stats

    @property
    def last_report_t_s(self) -> float | None:
        """Model time of the last stats report, None before the first."""
        return self._last_report_t

    @property
    def polling_interval_s(self) -> int:
        return self._poll_s

    @property
    def driver_state(self) -> DriverState:
        return self._driver

    @property
    def oom_kills(self) -> int:
        """Processes the guest's OOM killer has ended since boot."""
        return self._oom_kills

    @property
    def guest_deflated_bytes(self) -> int:
        """Bytes the guest took back from the balloon itself (deflate-on-oom) since boot."""
        return self._guest_deflated

    @property
    def in_motion(self) -> bool:
        """True while the driver is moving the balloon (not while it waits for memory)."""
        return self._chasing and not self._stalled and self._driver is DriverState.LOADED

    def view(self) -> MemoryView:
        """Everything about the guest's memory now."""
        free = self._free()
        return MemoryView(
            t_s=self.t_s,
            actual_bytes=self.actual_bytes,
            target_bytes=self.target_bytes,
            balloon_bytes=self._balloon,
            total_bytes=self._total(),
            free_bytes=free,
            available_bytes=self._available(free),
            anon_bytes=self._anon,
            anon_demand_bytes=self._anon_demand,
            cache_bytes=self._cache,
            cache_demand_bytes=self._cache_demand,
            oom_kills=self._oom_kills,
            guest_deflated_bytes=self._guest_deflated,
            major_faults=int(self._major),
            minor_faults=int(self._minor),
            refaults=int(self._refaults),
            read_bytes=int(self._read_bytes),
            hot_cache_demand_bytes=self._hot_demand,
            hot_cache_bytes=min(self._hot_demand, self._cache),
        )

    @property
    def free_bytes(self) -> int:
        """The guest's free memory now (MemFree; what free page reporting hands back)."""
        return self._free()

    @property
    def read_bytes(self) -> int:
        """Bytes read from the guest's disk since boot (what ``query-blockstats`` counts)."""
        return int(self._read_bytes)

    # --- what QMP does -----------------------------------------------------------------

    def set_target(self, value_bytes: int) -> None:
        """The ``balloon`` command: ask for a logical size (QEMU clamps it to RAM).

        QEMU keeps the request in pages, so a target that is not page-aligned ends up
        slightly above the value asked for.
        """
        if value_bytes <= 0:
            raise ValueError("the balloon target must be positive")
        ram = self.params.ram_bytes
        self._target_balloon = _page_floor(ram - min(value_bytes, ram))
        self._chasing = True
        self._stalled = False

    def set_polling_interval(self, interval_s: int) -> None:
        """``qom-set guest-stats-polling-interval``: 0 stops polling; turning it on reports now."""
        if not 0 <= interval_s <= MAX_POLL_INTERVAL_S:
            raise ValueError(f"polling interval out of range: {interval_s}")
        old = self._poll_s
        if interval_s == old:
            return
        self._poll_s = interval_s
        if interval_s == 0:
            self._next_report_t = None
        elif old == 0:
            self._next_report_t = self.t_s  # QEMU fires the new timer at once
            self._fire_due()
        else:
            self._next_report_t = self.t_s + interval_s

    def load_driver(self) -> None:
        """``modprobe virtio_balloon``: the driver sends stats and chases the target."""
        if self._driver is not DriverState.LOADED:
            self._driver = DriverState.LOADED
            self._chasing = True
            self._stalled = False
            self._report()

    def unload_driver(self) -> None:
        """``rmmod virtio_balloon``: the driver gives every page back; stats stop."""
        self._driver = DriverState.ABSENT
        self._driver_load_t = math.inf
        self._balloon = 0
        self._chasing = False

    # --- time --------------------------------------------------------------------------

    def step(self, dt_s: float) -> None:
        """Move forward by ``dt_s`` seconds."""
        self.advance_to(self.t_s + dt_s)

    def advance_to(self, t_s: float) -> None:
        """Run the guest until ``t_s``; a time in the past is ignored."""
        while True:
            self._fire_due()
            if self.t_s >= t_s:
                return
            nxt = min(t_s, self.t_s + self.params.max_step_s)
            point = self.trace.next_point_after(self.t_s - self.boot_t_s)
            if point is not None:
                nxt = min(nxt, self.boot_t_s + point)
            if self._driver is DriverState.LOADING:
                nxt = min(nxt, self._driver_load_t)
            if self._next_report_t is not None:
                nxt = min(nxt, self._next_report_t)
            if nxt <= self.t_s:  # float rounding: never stand still
                nxt = min(t_s, math.nextafter(self.t_s, math.inf))
            self._step_to(nxt)

    def skip_to(self, t_s: float) -> None:
        """Let time pass while the guest does not run (VM stopped, or QEMU frozen).

        Nothing moves and nothing is reported; the stats timer and the driver's load time
        shift with the pause (QEMU's stats timer runs on the stopped virtual clock). The
        workload's trace position still jumps: its users did not wait.
        """
        dt = t_s - self.t_s
        if dt <= 0:
            return
        self.t_s = t_s
        if self._next_report_t is not None:
            self._next_report_t += dt
        if self._driver is DriverState.LOADING:
            self._driver_load_t += dt

    # --- internals ---------------------------------------------------------------------

    def _fire_due(self) -> None:
        if self._driver is DriverState.LOADING and self.t_s >= self._driver_load_t:
            self.load_driver()
        elif self._next_report_t is not None and self.t_s >= self._next_report_t:
            self._report()
        if self._next_report_t is not None and self.t_s >= self._next_report_t:
            self._next_report_t = self.t_s + self._poll_s

    def _step_to(self, t_new: float) -> None:
        p = self.params
        dt = t_new - self.t_s
        self.t_s = t_new
        if self._killed > 0:
            self._killed = max(0.0, self._killed - self._killed_decay_bps * dt)
        trace_t = t_new - self.boot_t_s
        raw_anon, cache_want = (_page_floor(v) for v in self.trace.at(trace_t))
        cache_want += p.file_working_set_bytes
        hot_want = _page_floor(self.trace.hot_at(trace_t)) + p.file_working_set_bytes
        self._anon_demand = raw_anon
        self._cache_demand = cache_want
        self._hot_demand = hot_want
        anon = max(0, raw_anon - _page_floor(int(self._killed)))
        driver = self._driver is DriverState.LOADED

        # The driver moves the balloon; inflating takes free memory and cache, never anon.
        if driver and self._chasing:
            if self._balloon < self._target_balloon:
                room = self._capacity - anon - self._balloon
                inc = min(int(p.inflate_bytes_per_s * dt), self._target_balloon - self._balloon)
                self._stalled = room < PAGE_BYTES
                self._balloon += _page_floor(max(0, min(inc, room)))
            elif self._balloon > self._target_balloon:
                dec = min(int(p.deflate_bytes_per_s * dt), self._balloon - self._target_balloon)
                self._balloon -= _page_floor(dec)
            if self._balloon == self._target_balloon:
                self._chasing = False

        # Anonymous demand that does not fit: the guest deflates itself, or kills.
        short = anon + self._balloon - self._capacity
        if short > 0 and driver and p.deflate_on_oom and self._balloon > 0:
            give = min(self._balloon, _mib_ceil(short))
            self._balloon -= give
            self._guest_deflated += give
            short -= give
        if short > 0:
            victim = min(anon, max(short, _page_floor(int(anon * p.oom_victim_fraction))))
            anon -= victim
            self._killed += victim
            self._killed_decay_bps = self._killed / p.oom_restart_s
            self._oom_kills += 1

        grown = anon - self._anon
        if grown > 0:
            self._minor += grown / PAGE_BYTES
        self._minor += p.idle_minor_faults_per_s * dt
        self._anon = anon

        # Page cache gets what is left; what is squeezed out is reclaimed, then refaults.
        room = max(0, self._capacity - anon - self._balloon)
        cache = min(cache_want, room)
        squeezed = min(self._cache, cache_want) - cache
        if squeezed > 0:
            pages = squeezed / PAGE_BYTES
            if grown > 0:  # an allocation had to wait for reclaim
                self._alloc_stalls += 1
                self._direct_scans += 2 * pages
                self._direct_reclaims += pages
            else:
                self._async_scans += 2 * pages
                self._async_reclaims += pages
        self._cache = cache
        # The LRU keeps the hot pages: only the hot cache that does not fit refaults.
        missing_hot = hot_want - min(hot_want, cache)
        if missing_hot > 0:
            pages = missing_hot / PAGE_BYTES * self._touch_per_s * dt
            self._refaults += pages
            self._major += pages * p.mmap_fraction
            self._read_bytes += pages * PAGE_BYTES
        self._read_bytes += self.trace.read_bytes_per_s * dt

    def _total(self) -> int:
        p = self.params
        total = p.ram_bytes - p.kernel_reserved
        # Linux: with deflate-on-oom the ballooned pages stay in MemTotal, counted as used.
        return total if p.deflate_on_oom else total - self._balloon

    def _free(self) -> int:
        p = self.params
        used = p.kernel_reserved + p.base_used + self._anon + self._cache + self._balloon
        return max(0, p.ram_bytes - used)

    def _available(self, free: int) -> int:
        return max(0, free + self._cache - self.params.reserve)

    def _report(self) -> None:
        """The guest answers a stats request (or sends its first stats at driver load)."""
        if self._driver is not DriverState.LOADED:
            return
        free = self._free()
        v92 = self.params.reports_v92_stats
        self._stats = BalloonStats(
            last_update=int(self.wall_offset_s + self.t_s),
            swap_in_bytes=0,
            swap_out_bytes=0,
            major_faults=int(self._major),
            minor_faults=int(self._minor),
            free_bytes=free,
            total_bytes=self._total(),
            available_bytes=self._available(free),
            disk_caches_bytes=self._cache,
            htlb_pgalloc=0,
            htlb_pgfail=0,
            oom_kills=self._oom_kills if v92 else None,
            alloc_stalls=int(self._alloc_stalls) if v92 else None,
            async_scans=int(self._async_scans) if v92 else None,
            direct_scans=int(self._direct_scans) if v92 else None,
            async_reclaims=int(self._async_reclaims) if v92 else None,
            direct_reclaims=int(self._direct_reclaims) if v92 else None,
        )
        self._last_report_t = self.t_s
        if self._poll_s:
            self._next_report_t = self.t_s + self._poll_s
