"""The offline runner: simulated guests on a host, in virtual time, under one controller.

Each guest is a :class:`~balloond.replay.model.GuestModel` replaying its trace. Every tick
the runner moves every guest forward; whenever a controller's interval comes round it
shows the controller what a daemon would see — per guest a
:class:`~balloond.core.stats.GuestSample` (``actual`` and the guest's last stats report, just as
QMP returns them) and a :class:`~balloond.core.stats.HostSnapshot` of the host's memory — and
applies the targets it returns, as QEMU would. Nothing reads a clock and nothing is
random, so a run is a pure function of its scenario and controller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from balloond.core.stats import GuestSample, HostSnapshot
from balloond.replay.model import GuestModel, GuestParams
from balloond.replay.scenario import Scenario
from balloond.replay.scoring import GuestMetrics, MetricsRecorder, RunMetrics, SeriesPoint


class Controller(Protocol):
    """A balloon policy under test: balloond's engine or a baseline."""

    #: Short name for tables and charts.
    name: str
    #: Seconds between two calls of :meth:`poll`.
    interval_s: float
    #: The guests report free pages to the host (free page reporting): the host is
    #: charged each guest's size minus its free memory.
    frees_pages: bool

    def start(self, *, boot_bytes: Mapping[str, int]) -> None:
        """Called once before the first poll with every guest's RAM at boot."""

    def poll(
        self, *, now_s: float, samples: Mapping[str, GuestSample], host: HostSnapshot
    ) -> Mapping[str, int]:
        """The guests whose balloon should move, and the size (bytes) to ask QEMU for."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one run produced: the metrics, each guest's share, a time series for charts."""

    metrics: RunMetrics
    series: tuple[SeriesPoint, ...]
    guests: tuple[GuestMetrics, ...]


def _models(scenario: Scenario) -> list[GuestModel]:
    models = []
    for spec in scenario.guests:
        model = GuestModel(
            GuestParams(ram_bytes=spec.ram_bytes, deflate_on_oom=spec.deflate_on_oom),
            spec.trace,
        )
        model.set_polling_interval(scenario.stats_interval_s)
        models.append(model)
    return models


def run(scenario: Scenario, controller: Controller) -> RunResult:
    """Run ``controller`` on ``scenario`` from boot (every guest at full size) to the end."""
    models = _models(scenario)
    names = [g.name for g in scenario.guests]
    host_spec = scenario.host
    tick_s = scenario.tick_s
    n_ticks = max(1, round(scenario.duration_s / tick_s))
    poll_every = max(1, round(controller.interval_s / tick_s))
    frees_pages = controller.frees_pages
    metrics = MetricsRecorder(models, tick_s=tick_s, frees_pages=frees_pages)
    asked: dict[str, int] = {}
    by_name = dict(zip(names, models, strict=True))
    controller.start(boot_bytes={g.name: g.ram_bytes for g in scenario.guests})

    for i in range(n_ticks):
        t_s = i * tick_s
        for model in models:
            model.advance_to(t_s)
        charged = sum(m.actual_bytes - (m.free_bytes if frees_pages else 0) for m in models)
        free = host_spec.free_bytes(charged, len(models))
        if i % poll_every == 0:
            samples = {
                name: GuestSample(
                    t_s=t_s,
                    actual_bytes=model.actual_bytes,
                    stats=model.stats if model.stats.valid else None,
                    read_bytes=model.read_bytes,
                )
                for name, model in by_name.items()
            }
            # /proc/meminfo cannot show less than nothing available.
            host = HostSnapshot(total_bytes=host_spec.total_bytes, available_bytes=max(0, free))
            targets = controller.poll(now_s=t_s, samples=samples, host=host)
            for name, target in targets.items():
                if asked.get(name) != target:
                    asked[name] = target
                    by_name[name].set_target(target)
                    metrics.balloon_ops += 1
        metrics.tick(t_s, host_free_bytes=free)
    result = metrics.result(controller=controller.name)
    return RunResult(metrics=result, series=tuple(metrics.series), guests=metrics.per_guest(names))
