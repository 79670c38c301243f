"""Turning replay results into what people read: a table, the targets, a chart.

The same functions serve ``balloond simulate`` (plain text on a terminal, Markdown and a
PNG in ``--out``) and the quality benchmark (a Markdown section of ``RESULTS.md``).
matplotlib is imported only by :func:`write_chart`; it comes with balloond's ``bench``
extra and nothing else needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from balloond.core.units import GiB
from balloond.replay.runner import RunResult
from balloond.replay.scoring import PRESSURE_FRACTION, SHORT_FRACTION, RunMetrics

#: The target: balloond's pressure seconds at most this share of the best baseline's.
PRESSURE_SHARE = 0.2

HEADERS = (
    "controller",
    "reclaimed GiB-h",
    "mean reclaimed",
    "pressure s",
    "OOM kills",
    "balloon ops",
    "surges answered",
    "reaction p50/p95 s",
    "host over s",
    "refaults",
)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def row(m: RunMetrics) -> tuple[str, ...]:
    """One table row for a run."""
    share = m.mean_reclaimed_bytes / m.boot_total_bytes
    return (
        m.controller,
        f"{m.reclaimed_gib_h:.2f}",
        f"{m.mean_reclaimed_bytes / GiB:.2f} GiB ({share:.0%})",
        f"{m.pressure_s:.0f}",
        str(m.oom_kills),
        str(m.balloon_ops),
        f"{m.answered}/{m.surges}",
        f"{_seconds(m.reaction_p50_s)}/{_seconds(m.reaction_p95_s)}",
        f"{m.host_over_s:.0f}",
        f"{m.refaults:,}",
    )


def render_markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; columns after the first are right-aligned."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_text(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table aligned in columns for a terminal."""
    table = [tuple(headers), *(tuple(r) for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    out = []
    for n, r in enumerate(table):
        pairs = enumerate(zip(r, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(results: Sequence[RunMetrics]) -> str:
    """One row per controller, as Markdown."""
    return render_markdown(HEADERS, [row(m) for m in results])


def text_table(results: Sequence[RunMetrics]) -> str:
    """One row per controller, for a terminal."""
    return render_text(HEADERS, [row(m) for m in results])


def guest_rows(runs: Sequence[RunResult]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a per-guest table: for each controller, the guest's reclaimed
    GiB-h / pressure seconds / OOM kills."""
    headers = ["guest", *(r.metrics.controller for r in runs)]
    rows = []
    for i, guest in enumerate(runs[0].guests):
        cells = [f"{guest.name} ({guest.ram_bytes / GiB:g} GiB)"]
        for r in runs:
            g = r.guests[i]
            cells.append(f"{g.reclaimed_gib_h:.2f} / {g.pressure_s:.0f} / {g.oom_kills}")
        rows.append(cells)
    return headers, rows


DEFINITIONS = f"""\
- *reclaimed GiB-h*: boot memory minus balloon size (`actual`), integrated over time and
  summed over guests; *mean reclaimed*: the same as an average amount (and its share of
  the guests' boot memory).
- *pressure s*: seconds a guest's available memory (MemAvailable) was below
  {PRESSURE_FRACTION:.0%} of its boot memory, summed over guests.
- *OOM kills*: processes killed by the guests' OOM killers.
- *balloon ops*: balloon targets set (a target equal to the last one set is not counted).
- *surges answered*: a surge starts at the first stats report in which a ballooned guest
  (`actual` below boot memory) shows available memory below {SHORT_FRACTION:.0%} of boot
  memory; it is answered when the balloon has deflated enough to bring available memory
  back to that level (or is fully deflated) without an OOM kill on the way. Surges that
  end otherwise (the demand went away, an OOM kill freed memory, the run ended) are not.
- *reaction p50/p95*: time from the report that started a surge to its answer, over
  answered surges, to one simulation tick.
- *host over s*: seconds during which the guests' sizes plus QEMU overhead exceeded host
  RAM (a real host would swap or OOM-kill a QEMU then).
- *refaults*: pages (4 KiB) of the guests' hot page cache squeezed out and read back from
  disk; a cold page (a file streamed once) dropped costs nothing and is not counted.
- under *free-page-reporting* no balloon moves; the host gets each guest's free memory
  (MemFree) back, which counts as reclaimed.
"""


@dataclass(frozen=True, slots=True)
class Target:
    """One target and whether the subject met it."""

    description: str
    met: bool
    detail: str

    def line(self) -> str:
        return f"{'met' if self.met else 'NOT met'}: {self.description} ({self.detail})"


def best_baseline(results: Sequence[RunMetrics], *, subject: str) -> RunMetrics | None:
    """The baseline that reclaimed the most without an OOM kill (ties: fewer pressure
    seconds): memory taken by killing a guest's processes is not memory an operator can
    count on. Without one, the baseline that reclaimed the most."""
    others = [m for m in results if m.controller != subject]
    if not others:
        return None
    harmless = [m for m in others if m.oom_kills == 0] or others
    return max(harmless, key=lambda m: (m.reclaimed_gib_h, -m.pressure_s))


def top_reclaimer(results: Sequence[RunMetrics], *, subject: str) -> RunMetrics | None:
    """The baseline that reclaimed the most, whatever it cost the guests."""
    others = [m for m in results if m.controller != subject]
    return max(others, key=lambda m: (m.reclaimed_gib_h, -m.pressure_s)) if others else None


def top_reclaimer_line(results: Sequence[RunMetrics], *, subject: str) -> str | None:
    """How the subject compares with the top reclaimer, where that is not the best
    baseline (it OOM-killed guests' processes); None when they are the same."""
    mine = next(m for m in results if m.controller == subject)
    best = best_baseline(results, subject=subject)
    top = top_reclaimer(results, subject=subject)
    if top is None or best is None or top.controller == best.controller:
        return None
    verdict = "more" if mine.reclaimed_gib_h >= top.reclaimed_gib_h else "less"
    return (
        f"{subject} reclaimed {verdict} than the top reclaimer, {top.controller} "
        f"({mine.reclaimed_gib_h:.2f} vs {top.reclaimed_gib_h:.2f} GiB-h), which took its "
        f"memory with {top.oom_kills} OOM kills, {top.pressure_s:.0f} pressure s and "
        f"{top.refaults:,} refaults ({subject}: {mine.oom_kills}, {mine.pressure_s:.0f} s, "
        f"{mine.refaults:,})."
    )


def gentlest_baseline(results: Sequence[RunMetrics], *, subject: str) -> RunMetrics | None:
    """The balloon controller (a baseline that set balloon targets) with the fewest
    refaults: what ballooning costs a guest's page cache at best, today."""
    movers = [m for m in results if m.controller != subject and m.balloon_ops > 0]
    if not movers:
        return None
    return min(movers, key=lambda m: (m.refaults, -m.reclaimed_gib_h))


def targets(results: Sequence[RunMetrics], *, subject: str) -> list[Target]:
    """The quality targets for ``subject``: at least the best baseline's reclaim, at most a
    fifth of its pressure seconds, no OOM kill, and at most the refaults of the gentlest
    balloon controller."""
    mine = next(m for m in results if m.controller == subject)
    best = best_baseline(results, subject=subject)
    out = []
    if best is not None:
        out.append(
            Target(
                f"reclaims at least as much as the best baseline without an OOM kill "
                f"({best.controller})",
                mine.reclaimed_gib_h >= best.reclaimed_gib_h,
                f"{mine.reclaimed_gib_h:.2f} vs {best.reclaimed_gib_h:.2f} GiB-h",
            )
        )
        limit = best.pressure_s * PRESSURE_SHARE
        out.append(
            Target(
                f"at most a fifth of {best.controller}'s pressure seconds",
                mine.pressure_s <= limit,
                f"{mine.pressure_s:.0f} s vs limit {limit:.0f} s",
            )
        )
    out.append(Target("no OOM kill", mine.oom_kills == 0, f"{mine.oom_kills} kills"))
    gentlest = gentlest_baseline(results, subject=subject)
    if gentlest is not None:
        out.append(
            Target(
                f"at most the refaults of the gentlest balloon controller ({gentlest.controller})",
                mine.refaults <= gentlest.refaults,
                f"{mine.refaults:,} vs {gentlest.refaults:,}",
            )
        )
    return out


def write_chart(
    runs: Sequence[RunResult], path: Path, *, title: str, boot_total_bytes: int
) -> Path:
    """A PNG: reclaimed memory and host free memory over time, reclaim and pressure per
    controller. Raises ImportError when matplotlib is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    (ax_rec, ax_host), (ax_bar, ax_press) = axes
    hours = max(r.metrics.duration_s for r in runs) >= 3 * 3600
    unit, scale = ("h", 3600.0) if hours else ("min", 60.0)
    for r in runs:
        t = [p.t_s / scale for p in r.series]
        ax_rec.plot(t, [p.reclaimed_bytes / GiB for p in r.series], label=r.metrics.controller)
        ax_host.plot(t, [p.host_free_bytes / GiB for p in r.series], label=r.metrics.controller)
    ax_rec.set(
        title=f"memory reclaimed (of {boot_total_bytes / GiB:.0f} GiB booted)",
        xlabel=f"time ({unit})",
        ylabel="GiB",
    )
    ax_host.axhline(0, color="black", linewidth=0.8)
    ax_host.set(title="host free memory (below 0: over-committed)", xlabel=f"time ({unit})")
    ax_host.set_ylabel("GiB")
    ax_rec.legend()
    names = [r.metrics.controller for r in runs]
    ax_bar.bar(names, [r.metrics.reclaimed_gib_h for r in runs], color="tab:green")
    ax_bar.set(title="reclaimed (GiB-hours, higher is better)", ylabel="GiB-h")
    bars = ax_press.bar(names, [r.metrics.pressure_s for r in runs], color="tab:red")
    for bar, r in zip(bars, runs, strict=True):
        ax_press.annotate(
            f"{r.metrics.oom_kills} OOM",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax_press.set(
        title=f"guest pressure (s below {PRESSURE_FRACTION:.0%} available; lower is better)",
        ylabel="seconds",
    )
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
