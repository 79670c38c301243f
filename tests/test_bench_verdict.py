"""The scale benchmark's verdict on the ratio target: a window beside the floor counts only
when both sides kept to their polls (``benchmarks/scale.py``; the benchmark itself runs in
``make bench``, not here); and the report's head after a run of one section."""

from __future__ import annotations

from benchmarks.run import rerun_head
from benchmarks.scale import Paired, Result, Run, verdict


def _result(paired: Paired) -> Result:
    return Result(
        run=Run(1_000, floor=True),
        startup_s=2.0,
        cpu_pct=18.0,
        rss_mib=95.0,
        hwm_mib=99.0,
        p50_ms=0.4,
        p99_ms=5.0,
        max_ms=8.0,
        commands_per_s=107.0,
        polls_per_guest_s=1.0,
        loop_lag_ms=2.0,
        scrape_ms=30.0,
        qmp_timeouts=0,
        sim_cpu_pct=15.0,
        sim_lag_p99_ms=7.0,
        beside_qmp=paired,
    )


def _ratio_line(paired: Paired) -> str:
    (line,) = [x for x in verdict([_result(paired)], quick=False) if "floor" in x]
    return line


def test_a_steady_window_is_judged_per_poll() -> None:
    paired = Paired(
        cpu_pct=12.0,
        polls=1.0,
        rss_mib=47.0,
        daemon_cpu_pct=15.0,
        daemon_polls=1.0,
        fleets_cpu_pct=(15.0, 14.0),
        fleets_lag_p99_ms=8.0,
    )
    assert paired.steady
    assert paired.ratio == 1.25
    assert _ratio_line(paired).endswith(": met")


def test_a_window_in_which_the_daemon_fell_behind_shows_no_target_met() -> None:
    # Per poll this would read 1.15x; but the daemon made 0.78 polls per guest per second
    # and the floor 0.89: not the same traffic.
    paired = Paired(
        cpu_pct=27.8,
        polls=0.89,
        rss_mib=82.0,
        daemon_cpu_pct=28.0,
        daemon_polls=0.78,
        fleets_cpu_pct=(24.0, 23.0),
        fleets_lag_p99_ms=111.0,
    )
    assert not paired.steady
    line = _ratio_line(paired)
    assert "**not shown**" in line
    assert "met" not in line.replace("not shown", "")
    assert "the daemon 0.78, the floor 0.89" in line


def test_a_section_measured_again_is_named_once_in_the_head() -> None:
    head = (
        "# balloond benchmarks\n\n- Command: `python -m benchmarks.run` (full mode)\n"
        "- Then `python -m benchmarks.run --only scale` on 2026-12-01 05:17 UTC (17.8 minutes) "
        "measured the scale section again\n"
        "- Then `python -m benchmarks.run --only quality` on 2026-12-01 06:00 UTC (9.0 minutes) "
        "measured the quality section again\n"
    )
    rerun = (
        "- Then `python -m benchmarks.run --only scale` on 2026-12-01 07:27 UTC (17.8 minutes) "
        "measured the scale section again"
    )
    lines = rerun_head(head, "scale", rerun)
    assert lines[-1] == rerun
    assert not any("05:17" in line for line in lines)
    assert any("--only quality" in line for line in lines)  # another section's stays
    assert lines[:3] == [
        "# balloond benchmarks",
        "",
        "- Command: `python -m benchmarks.run` (full mode)",
    ]
