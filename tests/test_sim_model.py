"""The simulated guest's memory model, in virtual time (no sockets, no sleeping)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balloond.core.units import GiB, MiB
from balloond.replay.model import DEFAULT_WALL_OFFSET_S, PAGE_BYTES, GuestModel, GuestParams
from balloond.replay.traces import Trace, cache_heavy, idle, ramp

RAM = 1 * GiB


def flat(anon: int, cache: int = 0) -> Trace:
    return Trace(times_s=(0.0,), anon_bytes=(anon,), cache_bytes=(cache,))


def climb(*, start: int, end: int, over_s: float, cache: int = 0) -> Trace:
    return Trace(times_s=(0.0, over_s), anon_bytes=(start, end), cache_bytes=(cache, cache))


def model(trace: Trace | None = None, **kw: object) -> GuestModel:
    return GuestModel(GuestParams(ram_bytes=RAM, **kw), trace)  # type: ignore[arg-type]


# --- stats reporting -------------------------------------------------------------------


def test_no_stats_before_the_driver_loads_then_one_report_even_with_polling_off() -> None:
    m = model(driver_load_s=5.0)
    assert m.stats.last_update == 0
    assert m.stats.as_dict() == {"last_update": 0} | {
        k: None for k in m.stats.as_dict() if k != "last_update"
    }
    assert m.stats.to_qmp()["stats"]["stat-free-memory"] == 0xFFFF_FFFF_FFFF_FFFF
    m.advance_to(4.9)
    assert m.stats.last_update == 0
    m.advance_to(5.0)
    assert m.stats.valid
    assert m.stats.last_update == int(DEFAULT_WALL_OFFSET_S + 5.0)
    first = m.stats
    m.advance_to(100.0)
    assert m.stats == first  # polling is off: the first report stays


def test_polling_reports_at_once_then_every_interval_and_stops_at_zero() -> None:
    m = model()
    m.advance_to(10.0)
    m.set_polling_interval(2)
    assert m.last_report_t_s == 10.0
    m.advance_to(13.0)
    assert m.last_report_t_s == 12.0
    m.advance_to(14.0)
    assert m.last_report_t_s == 14.0
    m.set_polling_interval(0)
    m.advance_to(60.0)
    assert m.last_report_t_s == 14.0
    assert m.stats.last_update == int(DEFAULT_WALL_OFFSET_S + 14.0)


def test_reports_carry_the_guest_view_of_memory() -> None:
    m = model(flat(200 * MiB, 100 * MiB))
    m.set_polling_interval(1)
    s = m.stats
    view = m.view()
    assert s.swap_in_bytes == s.swap_out_bytes == 0
    assert s.total_bytes == view.total_bytes < RAM
    assert s.free_bytes == view.free_bytes
    assert s.disk_caches_bytes == view.cache_bytes == 100 * MiB + 16 * MiB
    assert s.available_bytes == view.free_bytes + view.cache_bytes - m.params.reserve
    assert s.oom_kills is None  # QEMU 7.2 has no stat-oom-kills
    for amount in (s.free_bytes, s.available_bytes, s.total_bytes):
        assert amount is not None
        assert amount % PAGE_BYTES == 0


# --- the balloon -------------------------------------------------------------------------


def test_balloon_moves_at_a_finite_rate_and_deflates_faster() -> None:
    m = model()
    m.set_target(512 * MiB)
    m.step(0.1)
    assert 512 * MiB < m.actual_bytes < RAM
    assert m.in_motion
    m.step(1.0)
    assert m.actual_bytes == 512 * MiB
    assert not m.in_motion
    m.set_target(RAM)
    m.step(0.1)
    deflated = m.actual_bytes - 512 * MiB
    assert deflated > 0.1 * m.params.inflate_bytes_per_s
    m.step(1.0)
    assert m.actual_bytes == RAM


def test_target_is_clamped_to_ram_and_kept_in_pages() -> None:
    m = model()
    m.set_target(10 * RAM)
    assert m.target_bytes == RAM
    m.set_target(512 * MiB + 1000)
    assert m.target_bytes == 512 * MiB + PAGE_BYTES
    m.step(2.0)
    assert m.actual_bytes == m.target_bytes
    with pytest.raises(ValueError, match="positive"):
        m.set_target(0)


def test_ballooned_memory_leaves_memtotal_unless_deflate_on_oom() -> None:
    for doo in (False, True):
        m = model(deflate_on_oom=doo)
        m.set_polling_interval(1)
        before = m.stats.total_bytes
        assert before is not None
        m.set_target(512 * MiB)
        m.step(2.0)
        after = m.stats.total_bytes
        assert after == (before if doo else before - 512 * MiB)


def test_inflating_stalls_when_the_guest_has_nothing_left_to_give() -> None:
    busy_then_idle = Trace(
        times_s=(0.0, 10.0, 11.0),
        anon_bytes=(700 * MiB, 700 * MiB, 100 * MiB),
        cache_bytes=(0, 0, 0),
    )
    m = model(busy_then_idle)
    m.set_target(256 * MiB)
    m.step(5.0)
    assert m.actual_bytes > 700 * MiB  # anon memory cannot be ballooned without swap
    assert not m.in_motion  # waiting for memory, like the driver after "out of puff"
    assert m.oom_kills == 0
    assert m.target_bytes == 256 * MiB
    m.advance_to(13.0)  # the programs freed their memory: the driver carries on
    assert m.actual_bytes == 256 * MiB


def test_no_driver_accepts_a_target_but_nothing_moves() -> None:
    m = model(driver=False)
    m.set_target(512 * MiB)
    m.set_polling_interval(1)
    m.step(10.0)
    assert m.actual_bytes == RAM
    assert m.target_bytes == 512 * MiB
    assert m.stats.last_update == 0
    m.load_driver()  # modprobe: the driver reports and chases the stored target
    assert m.stats.valid
    m.step(2.0)
    assert m.actual_bytes == 512 * MiB


def test_a_stopped_guest_does_not_move() -> None:
    m = model()
    m.set_target(512 * MiB)
    m.skip_to(30.0)
    assert m.actual_bytes == RAM
    m.step(2.0)
    assert m.actual_bytes == 512 * MiB


# --- the workload ------------------------------------------------------------------------


def test_oom_kill_when_demand_exceeds_what_the_balloon_leaves() -> None:
    m = model(climb(start=100 * MiB, end=600 * MiB, over_s=10.0), qemu_version=(9, 2, 0))
    m.set_polling_interval(1)
    m.set_target(400 * MiB)
    m.advance_to(12.0)
    view = m.view()
    assert m.oom_kills >= 1
    assert view.anon_bytes < view.anon_demand_bytes  # the victim's memory is gone
    assert view.actual_bytes == 400 * MiB  # without deflate-on-oom the balloon holds
    assert m.stats.oom_kills == m.oom_kills  # QEMU 9.2 reports the counter
    assert m.stats.direct_reclaims is not None


def test_killed_process_comes_back_and_is_killed_again_if_nothing_changes() -> None:
    m = model(climb(start=100 * MiB, end=600 * MiB, over_s=5.0), oom_restart_s=30.0)
    m.set_target(400 * MiB)
    m.advance_to(120.0)
    assert m.oom_kills >= 2


def test_deflate_on_oom_gives_memory_back_instead_of_killing() -> None:
    m = model(climb(start=100 * MiB, end=600 * MiB, over_s=10.0), deflate_on_oom=True)
    m.set_target(400 * MiB)
    m.advance_to(12.0)
    assert m.oom_kills == 0
    assert m.guest_deflated_bytes > 0
    assert m.actual_bytes > 600 * MiB
    assert m.target_bytes == 400 * MiB
    m.advance_to(30.0)
    assert m.actual_bytes > 600 * MiB  # the driver does not re-inflate on its own


def test_cache_shrinks_under_the_balloon_and_refaults_show_as_major_faults() -> None:
    m = model(cache_heavy(RAM, period_s=10_000.0))
    m.advance_to(3_000.0)  # the cache has grown to most of RAM
    full = m.view()
    assert full.cache_bytes == full.cache_demand_bytes
    faults_before = full.major_faults
    m.set_target(512 * MiB)
    m.advance_to(3_060.0)
    squeezed = m.view()
    assert squeezed.actual_bytes == 512 * MiB
    assert squeezed.cache_bytes < full.cache_bytes
    assert squeezed.available_bytes < full.available_bytes
    assert squeezed.major_faults > faults_before
    assert m.oom_kills == 0


def test_minor_faults_rise_with_allocation() -> None:
    m = model(ramp(RAM, duration_s=100.0, start_frac=0.1, end_frac=0.5))
    before = m.view().minor_faults
    m.advance_to(100.0)
    grown = m.view().anon_bytes - int(0.1 * RAM)
    assert m.view().minor_faults - before >= grown // PAGE_BYTES - 1


def test_a_peak_between_steps_is_not_stepped_over() -> None:
    spike = Trace(
        times_s=(0.0, 50.0, 50.5, 51.0),
        anon_bytes=(100 * MiB, 100 * MiB, 700 * MiB, 100 * MiB),
        cache_bytes=(0, 0, 0, 0),
    )
    m = model(spike, max_step_s=100.0)
    m.set_target(512 * MiB)
    m.advance_to(10.0)
    m.advance_to(100.0)  # one call, much longer than the spike
    assert m.oom_kills == 1


# --- invariants --------------------------------------------------------------------------

_steps = st.lists(st.floats(min_value=0.001, max_value=20.0), min_size=1, max_size=40)
_targets = st.lists(st.integers(min_value=64 * MiB, max_value=2 * RAM), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(steps=_steps, targets=_targets, doo=st.booleans(), frac=st.floats(0.05, 0.95))
def test_memory_accounting_stays_consistent(
    steps: list[float], targets: list[int], doo: bool, frac: float
) -> None:
    m = model(
        climb(start=50 * MiB, end=int(frac * RAM), over_s=60.0, cache=200 * MiB), deflate_on_oom=doo
    )
    m.set_polling_interval(1)
    for i, dt in enumerate(steps):
        if i % 8 == 0:
            m.set_target(targets[(i // 8) % len(targets)])
        m.step(dt)
        v = m.view()
        assert 0 < v.actual_bytes <= RAM
        assert v.actual_bytes % PAGE_BYTES == 0
        assert v.free_bytes >= m.params.min_free
        assert v.total_bytes <= RAM
        assert v.available_bytes <= v.free_bytes + v.cache_bytes
        assert v.anon_bytes <= v.anon_demand_bytes
        assert v.cache_bytes <= v.cache_demand_bytes
        if not doo:
            assert v.guest_deflated_bytes == 0
        s = m.stats
        assert s.free_bytes is not None
        assert s.last_update >= int(DEFAULT_WALL_OFFSET_S)


def test_step_size_does_not_change_the_outcome() -> None:
    trace = climb(start=100 * MiB, end=700 * MiB, over_s=30.0)
    coarse, fine = model(trace), model(trace)
    for m in (coarse, fine):
        m.set_target(512 * MiB)
    coarse.advance_to(40.0)
    for i in range(1, 4001):
        fine.advance_to(i * 0.01)
    assert coarse.oom_kills == fine.oom_kills >= 1
    assert coarse.actual_bytes == fine.actual_bytes


def test_idle_guest_is_cheap_to_describe() -> None:
    m = GuestModel(GuestParams(ram_bytes=RAM))
    assert m.trace == idle(RAM)
    assert "actual=1073741824" in repr(m)
