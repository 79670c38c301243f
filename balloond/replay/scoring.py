"""How well a controller did: the numbers an offline replay reports.

Everything here is measured on the guests' true state (the model's), tick by tick, not on
what the controller saw. The definitions, which the report repeats:

* **Reclaimed** (GiB-hours): the integral over time of ``boot - actual``, summed over
  guests. 1 GiB held back for an hour is 1 GiB-h.
* **Pressure seconds**: time during which a guest's available memory (MemAvailable) is
  below :data:`PRESSURE_FRACTION` of its boot memory, summed over guests.
* **OOM kills**: processes the guests' OOM killers ended.
* **Balloon operations**: targets a controller set that differ from the last target it
  set for that guest.
* **Reaction time**: a *surge* starts at the first stats report in which a guest that the
  balloon holds below its boot size (``actual < boot``) shows available memory below
  :data:`SHORT_FRACTION` of its boot memory. It is *answered* at the first tick at which
  the balloon has given the guest enough, i.e. the guest's available memory is back at
  that level or the balloon is fully deflated, provided ``actual`` grew during the surge
  and no process was OOM-killed. The reaction time is from that report to that tick. A
  surge that ends any other way (the demand went away, the OOM killer freed memory, the run
  ended) is *unanswered*. Resolution: one tick.
* **Host over-committed seconds**: time during which the guests' sizes plus overheads
  exceed host RAM (where a real host swaps or kills a QEMU).
* **Refaults**: pages of the guests' hot page cache squeezed out and read back from disk
  (what ``workingset_refault_file`` counts in a Linux guest), in pages of 4 KiB. Cold cache
  (a file streamed once) costs nothing when dropped, and counts nothing here.
* **Reclaimed** under free page reporting: the host gets back each guest's free memory
  (MemFree) without a balloon, so a guest's reclaim there is ``boot - actual + free``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from balloond.core.units import GiB
from balloond.replay.model import GuestModel

#: A guest with available memory below this share of its boot memory is under pressure.
PRESSURE_FRACTION = 0.05
#: A guest with available memory below this share of its boot memory is short: where a
#: surge (for the reaction time) starts and ends.
SHORT_FRACTION = 0.10
#: Seconds between two points of the time series kept for charts.
SERIES_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """The fleet at one moment, for charts."""

    t_s: float
    reclaimed_bytes: int
    host_free_bytes: int
    guests_under_pressure: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestMetrics:
    """One guest's share of a run's results."""

    name: str
    ram_bytes: int
    reclaimed_gib_h: float
    pressure_s: float
    oom_kills: int
    major_faults: int
    refaults: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RunMetrics:
    """One controller's results on one scenario (see the module docstring)."""

    controller: str
    duration_s: float
    guests: int
    boot_total_bytes: int
    reclaimed_gib_h: float
    mean_reclaimed_bytes: int
    pressure_s: float
    oom_kills: int
    balloon_ops: int
    surges: int
    answered: int
    reaction_p50_s: float | None
    reaction_p95_s: float | None
    host_over_s: float
    major_faults: int
    refaults: int


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


class _Books:
    """One guest's running tallies."""

    __slots__ = (
        "actual_at_start",
        "oom_at_start",
        "pressure_below",
        "pressure_ticks",
        "ram",
        "reclaimed_byte_ticks",
        "report_t",
        "short_below",
        "surge_start",
    )

    def __init__(self, ram: int) -> None:
        self.ram = ram
        self.pressure_below = int(ram * PRESSURE_FRACTION)
        self.short_below = int(ram * SHORT_FRACTION)
        self.report_t: float | None = None
        self.surge_start: float | None = None
        self.actual_at_start = 0
        self.oom_at_start = 0
        self.pressure_ticks = 0
        self.reclaimed_byte_ticks = 0


class MetricsRecorder:
    """Accumulates :class:`RunMetrics` as a run advances; call :meth:`tick` once per tick."""

    def __init__(
        self, models: Sequence[GuestModel], *, tick_s: float, frees_pages: bool = False
    ) -> None:
        self._models = list(models)
        self._frees_pages = frees_pages
        self._books = [_Books(m.params.ram_bytes) for m in self._models]
        self._tick_s = tick_s
        self._reclaimed_byte_s = 0.0
        self._pressure_ticks = 0
        self._host_over_ticks = 0
        self._ticks = 0
        self._reactions: list[float] = []
        self._surges = 0
        self.balloon_ops = 0
        self.series: list[SeriesPoint] = []
        self._next_series_s = 0.0

    def tick(self, t_s: float, *, host_free_bytes: int) -> None:
        """Account for the interval ``[t_s, t_s + tick_s)`` with the guests as they are now."""
        reclaimed = 0
        pressured = 0
        for model, books in zip(self._models, self._books, strict=True):
            view = model.view()
            actual = view.actual_bytes
            given = books.ram - actual + (view.free_bytes if self._frees_pages else 0)
            reclaimed += given
            books.reclaimed_byte_ticks += given
            available = view.available_bytes
            if available < books.pressure_below:
                pressured += 1
                books.pressure_ticks += 1
            self._follow_surge(model, books, t_s, actual=actual, available=available)
        self._ticks += 1
        self._reclaimed_byte_s += reclaimed * self._tick_s
        self._pressure_ticks += pressured
        if host_free_bytes < 0:
            self._host_over_ticks += 1
        if t_s >= self._next_series_s:
            self.series.append(SeriesPoint(t_s, reclaimed, host_free_bytes, pressured))
            self._next_series_s += SERIES_EVERY_S

    def _follow_surge(
        self, model: GuestModel, books: _Books, t_s: float, *, actual: int, available: int
    ) -> None:
        report_t = model.last_report_t_s
        fresh = report_t is not None and report_t != books.report_t
        if fresh:
            # Reports seen during a surge are used up: only a later one can start the next.
            books.report_t = report_t
        if books.surge_start is not None:
            if available >= books.short_below or actual >= books.ram:
                grew = actual > books.actual_at_start
                if grew and model.oom_kills == books.oom_at_start:
                    self._reactions.append(t_s - books.surge_start)
                books.surge_start = None
            return
        stats = model.stats
        if (
            fresh
            and report_t is not None
            and stats.available_bytes is not None
            and stats.available_bytes < books.short_below
            and actual < books.ram
        ):
            books.surge_start = report_t
            books.actual_at_start = actual
            books.oom_at_start = model.oom_kills
            self._surges += 1

    def per_guest(self, names: Sequence[str]) -> tuple[GuestMetrics, ...]:
        """Each guest's reclaim, pressure, OOM kills and major faults, in ``names`` order."""
        return tuple(
            GuestMetrics(
                name=name,
                ram_bytes=books.ram,
                reclaimed_gib_h=books.reclaimed_byte_ticks * self._tick_s / GiB / 3600.0,
                pressure_s=books.pressure_ticks * self._tick_s,
                oom_kills=model.oom_kills,
                major_faults=model.view().major_faults,
                refaults=model.view().refaults,
            )
            for name, model, books in zip(names, self._models, self._books, strict=True)
        )

    def result(self, *, controller: str) -> RunMetrics:
        duration_s = self._ticks * self._tick_s
        return RunMetrics(
            controller=controller,
            duration_s=duration_s,
            guests=len(self._models),
            boot_total_bytes=sum(b.ram for b in self._books),
            reclaimed_gib_h=self._reclaimed_byte_s / GiB / 3600.0,
            mean_reclaimed_bytes=int(self._reclaimed_byte_s / duration_s) if duration_s else 0,
            pressure_s=self._pressure_ticks * self._tick_s,
            oom_kills=sum(m.oom_kills for m in self._models),
            balloon_ops=self.balloon_ops,
            surges=self._surges,
            answered=len(self._reactions),
            reaction_p50_s=percentile(self._reactions, 0.50),
            reaction_p95_s=percentile(self._reactions, 0.95),
            host_over_s=self._host_over_ticks * self._tick_s,
            major_faults=sum(m.view().major_faults for m in self._models),
            refaults=sum(m.view().refaults for m in self._models),
        )
