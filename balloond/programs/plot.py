"""``balloonctl plot``: one guest's timeline as a PNG.

Draws the guest's size, balloond's target, and its available and used memory over time
(from the daemon's timeline, the ``timeline`` operation), with each balloon change marked
by a line coloured by its reason: the deflates that met a guest's need in reds, the
inflates that took idle memory in greens, the rest in greys. matplotlib is imported only
here (``pip install 'balloond[plot]'``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from balloond.core.units import MiB

#: Reasons by colour: what a marked change meant.
COLOURS: Mapping[str, str] = {
    "pressure": "#d62728",
    "oom-risk": "#b30000",
    "thrashing": "#ff7f0e",
    "guest-deflate": "#e377c2",
    "working-set": "#9467bd",
    "below-floor": "#8c564b",
    "stats-lost": "#7f7f7f",
    "host-recovered": "#17becf",
    "idle": "#2ca02c",
    "host-pressure": "#1f77b4",
    "above-max": "#bcbd22",
    "manual": "#000000",
    "external-change": "#aaaaaa",
}


class PlotError(Exception):
    """The plot could not be drawn (matplotlib missing, nothing to draw)."""


def draw(timeline: Mapping[str, Any], out: Path) -> str:
    """Draw ``timeline`` (a ``timeline`` reply) to ``out``; a one-line summary."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("plot needs matplotlib: pip install 'balloond[plot]'") from None
    points = list(timeline.get("points") or [])
    changes = list(timeline.get("changes") or [])
    guest = str(timeline.get("guest"))
    if not points:
        raise PlotError(
            f"no timeline for {guest} yet (a point every {timeline.get('interval_s')} s)"
        )
    now = float(timeline.get("now") or points[-1]["time"])
    minutes = [(p["time"] - now) / 60.0 for p in points]

    def series(key: str) -> list[float]:
        """MiB; NaN where unknown (a gap in the line)."""
        return [float("nan") if p.get(key) is None else p[key] / MiB for p in points]

    fig, ax = plt.subplots(figsize=(11, 5.5), constrained_layout=True)
    ax.plot(minutes, series("size_bytes"), label="size (actual)", color="black", linewidth=2)
    ax.step(minutes, series("target_bytes"), where="post", label="target", color="#1f77b4")
    ax.plot(minutes, series("available_bytes"), label="available", color="#2ca02c", alpha=0.8)
    ax.plot(minutes, series("used_bytes"), label="used", color="#d62728", alpha=0.8)
    boot = timeline.get("boot_bytes")
    if isinstance(boot, int):
        ax.axhline(boot / MiB, color="grey", linestyle=":", linewidth=1, label="boot memory")
    seen: set[str] = set()
    kinds: Counter[str] = Counter()
    start = minutes[0]
    for c in changes:
        x = (c["time"] - now) / 60.0
        if x < start:
            continue
        reason = str(c.get("reason"))
        deflate = c["new_bytes"] > c["old_bytes"]
        kinds[f"{'deflate' if deflate else 'inflate'} ({reason})"] += 1
        colour = COLOURS.get(reason, "#7f7f7f")
        ax.axvline(
            x,
            color=colour,
            linestyle="-" if deflate else "--",
            linewidth=1.2,
            alpha=0.8,
            label=None if reason in seen else f"change: {reason}",
        )
        seen.add(reason)
    ax.set(
        title=f"{guest}: memory over the last {max(1.0, -start):.0f} min",
        xlabel="minutes (0 = now)",
        ylabel="MiB",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    marked = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "no balloon change"
    return f"wrote {out}: {len(points)} points over {-start:.1f} min, marked {marked}"
