"""Policy quality: balloond's default policy against what users run today.

A mixed fleet (idle, diurnal, bursty, steady ramp and sawtooth workloads, and four with
real-world page-cache working sets: a database whose buffer is the page cache, a build
server, a file server and a guest that streams data once; 1 to 4 GiB guests) shares an
overcommitted host: beside its own use and QEMU's overhead, its RAM holds
:data:`HOST_SHARE` of the guests' boot memory. The same fleet replays, in virtual time
(:mod:`balloond.replay`), under each controller: ``static`` (no ballooning),
``free-page-reporting`` (no balloon moves, free pages handed back), ``mom`` and
``mom-upstream`` (oVirt MOM's rules with either grow rule), ``proxmox``, ``usable-band``
(the small host-blind libvirt scripts), all with the same size bounds as balloond's policy,
and ``balloond`` (the real engine with the default policy of ``config/balloond.toml``).
Then, to show how the result depends on how tight the host is, the fleet replays on
smaller and larger hosts.

Targets (reported, not asserted): balloond reclaims at least as much as the best baseline
(the one that reclaims the most without an OOM kill), with at most a fifth of its pressure
seconds, no OOM kill, and at most the refaults of the gentlest balloon controller (the
baseline that moves balloons with the fewest refaults). How balloond compares with the
baseline that reclaims the most whatever it costs is reported beside the targets.

``python -m benchmarks.quality [--quick] [--out DIR]`` runs it alone; ``benchmarks.run``
calls :func:`main`. Full: 24 guests for 3 simulated hours (about a minute per host size on
one core); quick: 12 guests for 30 minutes (seconds).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from balloond.core.units import GiB
from balloond.replay import (
    GuestSpec,
    RunResult,
    Scenario,
    compare,
    overcommitted_host,
    standard_controllers,
    traces,
)
from balloond.replay.engine import EngineController
from balloond.replay.report import (
    DEFINITIONS,
    markdown_table,
    targets,
    top_reclaimer,
    top_reclaimer_line,
    write_chart,
)
from balloond.replay.runner import run
from balloond.replay.traces import Trace
from balloond.runtime.config import Config, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "balloond.toml"
#: Guest memory the host holds, as a share of the guests' boot memory (4/3 overcommit).
HOST_SHARE = 0.75
#: Host sizes of the sensitivity runs.
HOST_SHARES = (0.6, 0.75, 0.9)
KINDS = (
    "idle",
    "diurnal",
    "bursty",
    "ramp",
    "sawtooth",
    "database",
    "build-server",
    "file-server",
    "stream-once",
)
SUBJECT = "balloond"
SEED = 2024
CHART = "quality.png"


@dataclass(frozen=True, slots=True)
class Mode:
    guests: int
    duration_s: float
    tick_s: float = 0.25


FULL = Mode(guests=27, duration_s=3 * 3600.0)
QUICK = Mode(guests=18, duration_s=1800.0)


def _trace(kind: str, ram: int, *, duration_s: float, rng: random.Random) -> Trace:
    """One workload sized for ``ram``, de-phased by ``rng`` so guests do not peak together."""
    if kind == "idle":
        return traces.idle(ram)
    if kind == "diurnal":  # one "day" per run
        return traces.diurnal(ram, period_s=duration_s).shifted(rng.uniform(0, duration_s))
    if kind == "bursty":
        return traces.bursty(ram, seed=rng.randrange(1 << 30))
    if kind == "ramp":  # a leak that ends at 70% of RAM: it still fits the guest
        return traces.ramp(ram, duration_s=duration_s, end_frac=0.7)
    if kind == "sawtooth":
        return traces.sawtooth(ram).shifted(rng.uniform(0, 600.0))
    if kind == "database":
        return traces.database(ram).shifted(rng.uniform(0, 3600.0))
    if kind == "build-server":
        return traces.build_server(ram).shifted(rng.uniform(0, 1800.0))
    if kind == "file-server":
        return traces.file_server(ram)
    if kind == "stream-once":
        return traces.stream_once(ram)
    raise ValueError(f"unknown workload {kind!r}")


def fleet(n_guests: int, *, duration_s: float, seed: int = SEED) -> tuple[GuestSpec, ...]:
    """``n_guests`` guests cycling through the workloads, each workload in several sizes."""
    rng = random.Random(seed)
    guests = []
    for i in range(n_guests):
        kind = KINDS[i % len(KINDS)]
        ram = (1 + (i + i // len(KINDS)) % 4) * GiB
        trace = _trace(kind, ram, duration_s=duration_s, rng=rng)
        guests.append(GuestSpec(name=f"{kind}-{i:02d}", ram_bytes=ram, trace=trace))
    return tuple(guests)


def scenario(mode: Mode, *, host_share: float = HOST_SHARE, seed: int = SEED) -> Scenario:
    guests = fleet(mode.guests, duration_s=mode.duration_s, seed=seed)
    host = overcommitted_host(guests, share=host_share)
    return Scenario(guests=guests, host=host, duration_s=mode.duration_s, tick_s=mode.tick_s)


def _by_kind(runs: Sequence[RunResult]) -> str:
    """Reclaim / pressure / OOM kills / refaults per workload and controller."""
    names = [r.metrics.controller for r in runs]
    lines = [
        "| workload | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for kind in KINDS:
        cells = []
        for r in runs:
            gs = [g for g in r.guests if g.name.startswith(f"{kind}-")]
            cells.append(
                f"{sum(g.reclaimed_gib_h for g in gs):.1f} / {sum(g.pressure_s for g in gs):.0f}"
                f" / {sum(g.oom_kills for g in gs)} / {sum(g.refaults for g in gs) / 1e6:.2f}"
            )
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _why(runs: Sequence[RunResult]) -> list[str]:
    """Where the top reclaimer took more than balloond, and at what cost to the guests."""
    subject = next(r for r in runs if r.metrics.controller == SUBJECT)
    best_m = top_reclaimer([r.metrics for r in runs], subject=SUBJECT)
    if best_m is None:
        return []
    best = next(r for r in runs if r.metrics.controller == best_m.controller)
    out = []
    for kind in KINDS:
        mine = [g for g in subject.guests if g.name.startswith(f"{kind}-")]
        theirs = [g for g in best.guests if g.name.startswith(f"{kind}-")]
        gap = sum(g.reclaimed_gib_h for g in theirs) - sum(g.reclaimed_gib_h for g in mine)
        if gap <= 0.05:
            continue
        out.append(
            f"- {kind}: {best.metrics.controller} reclaimed {gap:.1f} GiB-h more, with "
            f"{sum(g.pressure_s for g in theirs):.0f} pressure s and "
            f"{sum(g.oom_kills for g in theirs)} OOM kills and "
            f"{sum(g.refaults for g in theirs) / 1e6:.2f}M refaults there (balloond: "
            f"{sum(g.pressure_s for g in mine):.0f} s, {sum(g.oom_kills for g in mine)}, "
            f"{sum(g.refaults for g in mine) / 1e6:.2f}M)."
        )
    return out


def _sensitivity(rows: Sequence[tuple[float, int, list[RunResult]]]) -> str:
    names = [r.metrics.controller for r in rows[0][2]]
    lines = [
        "| host RAM | " + " | ".join(names) + " | balloond targets | vs top reclaimer |",
        "|---|" + "---:|" * len(names) + "---|---|",
    ]
    for share, host_bytes, runs in rows:
        cells = [
            f"{r.metrics.reclaimed_gib_h:.1f} / {r.metrics.pressure_s:.0f} / "
            f"{r.metrics.oom_kills} / {r.metrics.refaults / 1e6:.2f}"
            for r in runs
        ]
        results = [r.metrics for r in runs]
        met = targets(results, subject=SUBJECT)
        verdict = ", ".join("met" if t.met else "missed" for t in met)
        mine = next(m for m in results if m.controller == SUBJECT)
        top = top_reclaimer(results, subject=SUBJECT)
        versus = "-"
        if top is not None:
            more = mine.reclaimed_gib_h >= top.reclaimed_gib_h
            versus = f"{'more' if more else 'less'} than {top.controller}"
        lines.append(
            f"| {host_bytes / GiB:.1f} GiB ({share:.0%}) | "
            + " | ".join(cells)
            + f" | {verdict} | {versus} |"
        )
    return "\n".join(lines)


#: The page-cache and surge keys of the default policy, and the values tried beside each
#: default (one key changed at a time), to show what the defaults were chosen from.
KNOBS: tuple[tuple[str, tuple[object, ...]], ...] = (
    ("refault_threshold", ("0MiB", "1MiB", "2MiB", "4MiB")),
    ("working_set_halflife_s", (600.0, 1800.0, 3600.0)),
    ("surge_reserve_max", ("0MiB", "10%", "25%")),
    ("free_low/free_high", (("10%", "20%"), ("15%", "25%"))),
)


def _with(config: Config, key: str, value: object) -> Config:
    """``config`` with one key of its default policy changed."""
    doc = config.model_dump(mode="json")
    policy = doc["policies"]["default"]
    if key == "free_low/free_high":
        policy["free_low"], policy["free_high"] = value  # type: ignore[misc]
    else:
        policy[key] = value
    return parse_config(doc)


def _knobs(config: Config, scen: Scenario) -> str:
    """balloond with one policy key changed at a time, on the main host size."""
    default = config.policies["default"]
    lines = [
        "| key | value | reclaimed GiB-h | pressure s | OOM kills | refaults (M) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, values in KNOBS:
        for value in values:
            m = run(scen, EngineController(_with(config, key, value))).metrics
            shown = "/".join(value) if isinstance(value, tuple) else str(value)
            current = (
                (str(default.free_low), str(default.free_high))
                if key == "free_low/free_high"
                else str(getattr(default, key))
            )
            mark = " (default)" if str(value) == str(current) or value == current else ""
            lines.append(
                f"| {key} | {shown}{mark} | {m.reclaimed_gib_h:.2f} | {m.pressure_s:.0f} "
                f"| {m.oom_kills} | {m.refaults / 1e6:.2f} |"
            )
        print(f"  knob {key} done", file=sys.stderr, flush=True)
    return "\n".join(lines)


def _runs(config: Config, scen: Scenario, *, log: bool) -> list[RunResult]:
    def progress(result: RunResult) -> None:
        if log:
            print(f"  {result.metrics.controller} done", file=sys.stderr, flush=True)

    return compare(scen, standard_controllers(config, name=SUBJECT), progress=progress)


def main(quick: bool, out_dir: Path) -> str:
    """Run the suite, write the chart to ``out_dir``, return a Markdown section."""
    started = time.monotonic()
    mode = QUICK if quick else FULL
    config = load_config(CONFIG)
    rows: list[tuple[float, int, list[RunResult]]] = []
    main_runs: list[RunResult] = []
    main_scen = scenario(mode)
    for share in HOST_SHARES:
        scen = main_scen if share == HOST_SHARE else scenario(mode, host_share=share)
        print(f"quality: host at {share:.0%} of boot memory", file=sys.stderr, flush=True)
        runs = _runs(config, scen, log=True)
        rows.append((share, scen.host.total_bytes, runs))
        if share == HOST_SHARE:
            main_runs = runs
    results = [r.metrics for r in main_runs]
    chart = write_chart(
        main_runs,
        out_dir / CHART,
        title=f"{len(main_scen.guests)} guests, host with room for {HOST_SHARE:.0%} of their"
        " boot memory",
        boot_total_bytes=main_scen.boot_total_bytes,
    )
    elapsed = time.monotonic() - started
    boot = main_scen.boot_total_bytes
    sizes = sorted({g.ram_bytes // GiB for g in main_scen.guests})
    hours = mode.duration_s / 3600
    chart_ref = os.path.relpath(chart, Path(__file__).resolve().parent)
    checks = targets(results, subject=SUBJECT)
    why = _why(main_runs)
    parts = [
        "## Policy quality",
        "",
        f"{len(main_scen.guests)} simulated guests ({', '.join(KINDS)}; "
        f"{', '.join(str(s) for s in sizes)} GiB; {boot / GiB:.0f} GiB of boot memory in all) "
        f"on a host with {main_scen.host.total_bytes / GiB:.1f} GiB of RAM (room for "
        f"{HOST_SHARE:.0%} of that beside its own 0.5 GiB and 48 MiB per QEMU), "
        f"{hours:g} simulated hours in {mode.tick_s:g} s ticks, guest stats every "
        f"{main_scen.stats_interval_s} s, every guest booted at full size. `balloond` is the "
        "engine with the default policy of `config/balloond.toml`; the baselines follow "
        "those projects' default rules with the same size bounds (see "
        "`balloond/replay/baselines.py`). "
        f"{'Quick mode. ' if quick else ''}Replayed in {elapsed:.0f} s.",
        "",
        markdown_table(results),
        "",
        "Targets for balloond's default policy:",
        "",
        *[f"- {t.line()}" for t in checks],
        "",
    ]
    top_line = top_reclaimer_line(results, subject=SUBJECT)
    if top_line is not None:
        parts += [f"Beside the targets: {top_line}", ""]
    if why:
        top = top_reclaimer(results, subject=SUBJECT)
        name = top.controller if top is not None else "the top reclaimer"
        parts += [f"Where {name} reclaimed more, and what it cost the guests:", "", *why, ""]
    parts += [
        "By workload (reclaimed GiB-h / pressure s / OOM kills / refaults in millions):",
        "",
        _by_kind(main_runs),
        "",
        "The same fleet on smaller and larger hosts (reclaimed GiB-h / pressure s / OOM kills"
        " / refaults in millions; balloond's targets: reclaim, pressure, OOM, refaults):",
        "",
        _sensitivity(rows),
        "",
        "Choosing the defaults: balloond alone on the same fleet and host, with one key of the "
        "default policy changed at a time (the defaults ship in `config/balloond.toml`):",
        "",
        _knobs(config, main_scen),
        "",
        "How to read the columns:",
        "",
        DEFINITIONS,
        f"![policy quality]({chart_ref})",
        "",
    ]
    return "\n".join(parts)


def _cli(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="12 guests, 30 simulated minutes")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args(argv)
    print(main(args.quick, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
