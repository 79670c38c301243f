"""What balloond is compared with: no ballooning, and the controllers users run today.

* :class:`StaticController` never moves a balloon: every guest keeps its boot memory.
* :class:`FreePageReportingController` never moves a balloon either, but the guests report
  their free pages to the host (virtio-balloon free page reporting, the default of recent
  libvirt, Nova and CloudStack): the host is charged each guest's size minus its MemFree.
* :class:`MomController` follows oVirt MOM's default auto-balloon rules
  (``balloon.rules``): a policy cycle every 10 s on statistics sampled every 5 s and
  averaged over the last 10 samples (50 s). While host free memory is below 20% of host
  RAM, each guest shrinks toward ``used + f * actual`` where ``f`` is 20% scaled down with
  the host's free share (and negative, "force the guest to swap", once the host is below
  5%), by at most 5% of its size per cycle. Otherwise each guest grows by 5% per cycle,
  and at once to ``used + 20%`` of its maximum when it is below that. "Used" is
  ``actual - free``, with free as MOM reads it: the guest's MemFree (page cache counts as
  used). Changes under 0.25% of the size are skipped. ``MomController(upstream=True)``
  (``mom-upstream``) grows to ``used + 20%`` of the guest's *current* size, as oVirt/mom's
  ``doc/balloon.rules`` does; the default variant uses the maximum, which gives MOM's
  guests more room.
* :class:`ProxmoxController` follows Proxmox VE's ``pvestatd`` auto-ballooning
  (``PVE::AutoBalloon::compute_alg1``): every 10 s, the goal is to bring host memory use to
  80% of host RAM. Above it, guests shrink toward an equal share (by ``shares``, all equal
  here) of the memory above their minimums, guests with free memory first; below it they
  grow, guests short of free memory first. Each guest moves by at most 100 MiB per round;
  goals under 10 MiB are ignored. It never looks at what a guest needs beyond its
  configured minimum.
* :class:`UsableBandController` is the small script many libvirt users run (for example
  urbancompasspony/balloon, from cron every 15 s, or nefelim4ag/libvirt-autoballoon):
  every 10 s, keep each guest's usable memory (``virsh dommemstat`` usable, MemAvailable)
  between 25% and 35% of its current size by moving its balloon a fixed 64 MiB; it never
  looks at the host.

Both baselines get the same bounds as balloond's policy for each guest — its ``min_size``
(oVirt's guaranteed memory, Proxmox's minimum memory) and ``max_size`` — so all controllers
play on the same field. Their constants are the upstream defaults; none is tuned here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from balloond.core.stats import GuestSample, HostSnapshot
from balloond.core.units import MiB

#: (min_bytes, max_bytes) for a guest, from its name and boot memory.
Bounds = Callable[[str, int], tuple[int, int]]


def boot_bounds(name: str, boot_bytes: int) -> tuple[int, int]:
    """Bounds without a policy: anything from 1 MiB to boot memory."""
    return MiB, boot_bytes


class StaticController:
    """No ballooning at all: the reference for what overcommit costs without it."""

    name = "static"
    interval_s = 60.0
    frees_pages = False

    def start(self, *, boot_bytes: Mapping[str, int]) -> None:
        pass

    def poll(
        self, *, now_s: float, samples: Mapping[str, GuestSample], host: HostSnapshot
    ) -> Mapping[str, int]:
        return {}


class FreePageReportingController(StaticController):
    """No balloon moves; the guests hand their free pages back (see the module docstring)."""

    name = "free-page-reporting"
    frees_pages = True


@dataclass(slots=True)
class _MomGuest:
    min_bytes: int
    max_bytes: int
    actual: deque[int] = field(default_factory=lambda: deque(maxlen=MomController.SAMPLES))
    free: deque[int] = field(default_factory=lambda: deque(maxlen=MomController.SAMPLES))


def _mean(values: deque[int]) -> float:
    return sum(values) / len(values)


class MomController:
    """oVirt MOM's auto-balloon policy (see the module docstring)."""

    name = "mom"
    #: MOM's guest and host monitors sample every 5 s ...
    interval_s = 5.0
    #: ... and its policy engine runs every 10 s, ...
    POLICY_EVERY = 2
    #: ... on averages over the last 10 samples (sample-history-length).
    SAMPLES = 10
    PRESSURE_THRESHOLD = 0.20
    PRESSURE_CRITICAL = 0.05
    MIN_GUEST_FREE = 0.20
    MAX_CHANGE = 0.05
    MIN_CHANGE = 0.0025

    frees_pages = False

    def __init__(self, bounds: Bounds = boot_bounds, *, upstream: bool = False) -> None:
        self._bounds = bounds
        #: Grow to used + 20% of the current size (upstream) rather than of the maximum.
        self.upstream = upstream
        if upstream:
            self.name = "mom-upstream"
        self._guests: dict[str, _MomGuest] = {}
        self._host_free: deque[int] = deque(maxlen=self.SAMPLES)
        self._polls = 0

    def start(self, *, boot_bytes: Mapping[str, int]) -> None:
        self._guests = {
            name: _MomGuest(*self._bounds(name, boot)) for name, boot in boot_bytes.items()
        }

    def poll(
        self, *, now_s: float, samples: Mapping[str, GuestSample], host: HostSnapshot
    ) -> Mapping[str, int]:
        self._host_free.append(host.available_bytes)
        for name, sample in samples.items():
            stats = sample.stats
            if stats is None or stats.free_bytes is None:
                continue
            guest = self._guests[name]
            guest.actual.append(sample.actual_bytes)
            guest.free.append(stats.free_bytes)
        self._polls += 1
        if (self._polls - 1) % self.POLICY_EVERY:
            return {}
        host_free_pct = _mean(self._host_free) / host.total_bytes
        shrink = host_free_pct < self.PRESSURE_THRESHOLD
        targets: dict[str, int] = {}
        for name, sample in samples.items():
            guest = self._guests[name]
            if not guest.actual or sample.stats is None:
                continue
            cur = sample.actual_bytes
            used = _mean(guest.actual) - _mean(guest.free)
            if shrink:
                size = self._shrink(guest, cur=cur, used=used, host_free_pct=host_free_pct)
            else:
                size = self._grow(guest, cur=cur, used=used)
            if size is not None:
                targets[name] = size
        return targets

    def _shrink(
        self, guest: _MomGuest, *, cur: int, used: float, host_free_pct: float
    ) -> int | None:
        if host_free_pct <= self.PRESSURE_CRITICAL:
            guest_free_pct = -0.05 + host_free_pct
        else:
            guest_free_pct = self.MIN_GUEST_FREE * host_free_pct / self.PRESSURE_THRESHOLD
        balloon_min = used + guest_free_pct * cur
        size = max(cur * (1 - self.MAX_CHANGE), balloon_min, guest.min_bytes)
        if size <= cur and self._big_enough(cur, size):
            return int(size)
        return None

    def _grow(self, guest: _MomGuest, *, cur: int, used: float) -> int | None:
        if cur >= guest.max_bytes:
            return None
        size = min(cur * (1 + self.MAX_CHANGE), guest.max_bytes)
        room = self.MIN_GUEST_FREE * (cur if self.upstream else guest.max_bytes)
        size = min(max(size, used + room), guest.max_bytes)
        return int(size) if self._big_enough(cur, size) else None

    def _big_enough(self, cur: int, size: float) -> bool:
        return abs(size - cur) > self.MIN_CHANGE * cur


@dataclass(slots=True)
class _PveGuest:
    """``vmstatus`` of one VM as compute_alg1 reads it."""

    name: str
    balloon: int  # current size (actual)
    balloon_min: int
    maxmem: int
    freemem: int | None
    shares: int = 1000


class _Bounded:
    """A baseline that keeps each guest within its (min, max) bounds."""

    frees_pages = False

    def __init__(self, bounds: Bounds = boot_bounds) -> None:
        self._bounds = bounds
        self._limits: dict[str, tuple[int, int]] = {}

    def start(self, *, boot_bytes: Mapping[str, int]) -> None:
        self._limits = {name: self._bounds(name, boot) for name, boot in boot_bytes.items()}


class ProxmoxController(_Bounded):
    """Proxmox VE's auto-ballooning (see the module docstring)."""

    name = "proxmox"
    interval_s = 10.0
    TARGET_USE = 0.80
    MAX_CHANGE_BYTES = 100 * MiB
    MIN_GOAL_BYTES = 10 * MiB

    def poll(
        self, *, now_s: float, samples: Mapping[str, GuestSample], host: HostSnapshot
    ) -> Mapping[str, int]:
        used = host.total_bytes - host.available_bytes
        goal = int(host.total_bytes * self.TARGET_USE - used)
        vms = []
        for name, sample in samples.items():
            if sample.stats is None:
                continue  # "skip if balloon driver not running"
            low, high = self._limits[name]
            free = sample.stats.free_bytes
            vms.append(_PveGuest(name, sample.actual_bytes, low, high, free))
        return _compute_alg1(
            vms, goal=goal, max_change=self.MAX_CHANGE_BYTES, min_goal=self.MIN_GOAL_BYTES
        )


def _change(vms: list[_PveGuest], res: dict[str, int], rest: int, max_change: int) -> int:
    """compute_alg1's inner loop: spread ``rest`` bytes over ``vms`` by shares, each moving
    at most ``max_change`` from its current size; returns what could not be placed."""
    done: set[str] = set()
    repeat = progress = True
    growing = rest > 0
    while rest and repeat and progress:
        repeat = progress = False
        live = [d for d in vms if d.name not in done]
        shares_total = sum(d.shares for d in live)
        alloc_old = sum(res.get(d.name, d.balloon) - d.balloon_min for d in live)
        alloc_new = alloc_old + rest
        changes = 0
        for d in live:
            desired = d.balloon_min + int(alloc_new / shares_total * d.shares)
            if desired > d.maxmem:
                desired, repeat = d.maxmem, True
            elif desired < d.balloon_min:
                desired, repeat = d.balloon_min, True
            if growing and desired > d.balloon:
                balloon = min(d.balloon + max_change, desired)
            elif desired < d.balloon:
                balloon = max(d.balloon - max_change, desired)
            else:
                done.add(d.name)
                continue
            if balloon != d.balloon:
                old = res.get(d.name, d.balloon)
                res[d.name] = balloon
                if balloon != old:
                    changes += balloon - old
                    progress = True
                    repeat = True
        rest -= changes
    return rest


def _compute_alg1(
    vms: list[_PveGuest], *, goal: int, max_change: int, min_goal: int
) -> dict[str, int]:
    """``PVE::AutoBalloon::compute_alg1``: new sizes for the VMs that should move."""
    roomy = [
        d
        for d in vms
        if d.freemem and d.freemem > d.balloon_min * 0.25 and d.balloon >= d.balloon_min
    ]
    roomy_names = {d.name for d in roomy}
    short = [d for d in vms if d.name not in roomy_names]
    res: dict[str, int] = {}
    if goal > min_goal:
        rest = _change(short, res, goal, max_change)  # guests short of memory first
        if rest >= goal:
            _change(vms, res, rest, max_change)
    elif goal < -min_goal:
        rest = _change(roomy, res, goal, max_change)  # guests with free memory first
        if rest <= goal:
            _change(vms, res, rest, max_change)
    return res


class UsableBandController(_Bounded):
    """A host-blind band of usable memory, in fixed steps (see the module docstring)."""

    name = "usable-band"
    interval_s = 10.0
    LOW_SHARE = 0.25
    HIGH_SHARE = 0.35
    STEP_BYTES = 64 * MiB

    def poll(
        self, *, now_s: float, samples: Mapping[str, GuestSample], host: HostSnapshot
    ) -> Mapping[str, int]:
        targets: dict[str, int] = {}
        for name, sample in samples.items():
            stats = sample.stats
            if stats is None or stats.available_bytes is None:
                continue
            low, high = self._limits[name]
            cur = sample.actual_bytes
            if stats.available_bytes < self.LOW_SHARE * cur and cur < high:
                targets[name] = min(cur + self.STEP_BYTES, high)
            elif stats.available_bytes > self.HIGH_SHARE * cur and cur > low:
                targets[name] = max(cur - self.STEP_BYTES, low)
        return targets
