"""A guest's timeline: a fixed ring of points, changes beside it, and its plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from balloond.core.timeline import MAX_CHANGES, Timeline
from balloond.core.units import MiB
from balloond.programs.plot import draw


def test_points_come_every_interval_and_the_ring_keeps_the_newest() -> None:
    tl = Timeline(span_s=60, interval_s=10)
    assert tl.slots == 6
    kept = [
        tl.add(
            float(t),
            size_bytes=(512 - t) * MiB,
            target_bytes=None,
            available_bytes=100 * MiB,
            used_bytes=None,
        )
        for t in range(0, 100, 5)
    ]
    assert kept == [t % 10 == 0 for t in range(0, 100, 5)]
    points = tl.points()
    assert [p["time"] for p in points] == [40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
    assert points[0]["size_bytes"] == 472 * MiB
    assert points[0]["target_bytes"] is None
    assert points[0]["available_bytes"] == 100 * MiB
    assert [p["time"] for p in tl.points(since_wall=75)] == [80.0, 90.0]


def test_changes_are_bounded() -> None:
    tl = Timeline()
    for i in range(MAX_CHANGES + 10):
        tl.change(float(i), old_bytes=512 * MiB, new_bytes=400 * MiB, reason="idle", actor="engine")
    changes = tl.changes()
    assert len(changes) == MAX_CHANGES
    assert changes[0].t_wall == 10.0
    assert len(tl.changes(since_wall=MAX_CHANGES + 5)) == 5


def test_a_plot_marks_the_deflate(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    tl = Timeline(span_s=600, interval_s=1)
    for t in range(120):
        size = 256 if t < 60 else 480
        available = 40 if 55 <= t < 62 else 150
        tl.add(
            1000.0 + t,
            size_bytes=size * MiB,
            target_bytes=size * MiB,
            available_bytes=available * MiB,
            used_bytes=(size - 150) * MiB,
        )
    tl.change(1060.0, old_bytes=256 * MiB, new_bytes=480 * MiB, reason="oom-risk", actor="engine")
    reply = {
        "guest": "g",
        "now": 1120.0,
        "interval_s": 1,
        "boot_bytes": 512 * MiB,
        "points": tl.points(),
        "changes": [c.as_dict() for c in tl.changes()],
    }
    out = tmp_path / "g.png"
    summary = draw(reply, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "1 deflate (oom-risk)" in summary


def test_changes_are_a_bounded_ring_oldest_first() -> None:
    from balloond.core.timeline import MAX_CHANGES, Timeline

    tl = Timeline(span_s=60, interval_s=10)
    for i in range(MAX_CHANGES + 44):
        tl.change(
            float(i),
            old_bytes=(1 << 30) + i,
            new_bytes=(1 << 29) + i,
            reason="idle" if i % 2 else "pressure",
            actor="engine" if i % 3 else "guest",
        )
    kept = tl.changes()
    assert len(kept) == MAX_CHANGES
    assert [c.t_wall for c in kept] == [float(i) for i in range(44, MAX_CHANGES + 44)]
    last = kept[-1]
    i = MAX_CHANGES + 43
    assert (last.old_bytes, last.new_bytes) == ((1 << 30) + i, (1 << 29) + i)
    assert (last.reason, last.actor) == (
        "idle" if i % 2 else "pressure",
        "engine" if i % 3 else "guest",
    )
    assert [c.t_wall for c in tl.changes(since_wall=290.0)] == [
        290.0,
        291.0,
        292.0,
        293.0,
        294.0,
        295.0,
        296.0,
        297.0,
        298.0,
        299.0,
    ]
