"""The policy engine: one test per reason path, plan_host's sharing rules, and the invariants
every decision keeps, checked with hypothesis over thousands of generated guests."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balloond.core.policy import (
    Decision,
    GuestView,
    Reason,
    Reclaim,
    ResolvedPolicy,
    decide,
    floor_bytes,
    observe,
    plan_host,
)
from balloond.core.policy.engine import inflate_block, keep_for, working_set_signal
from balloond.core.policy.observe import Observation
from balloond.core.stats import BalloonStats, GuestSample, HostSnapshot
from balloond.core.units import GiB, MiB
from balloond.runtime.config import Policy

BOOT = 1 * GiB
POLL_S = 1.0


def policy(*, boot: int = BOOT, **knobs: object) -> ResolvedPolicy:
    # The numbers in these tests are worked out for a 15%..30% band; they test the
    # engine's arithmetic, not the shipped defaults. The working-set signal and the surge
    # reserve are off unless a test turns them on (they have tests of their own).
    knobs.setdefault("free_high", "30%")
    knobs.setdefault("refault_threshold", "0MiB")
    knobs.setdefault("surge_reserve_max", "0MiB")
    return Policy.model_validate(knobs).resolve(boot, name="test")


def sample(
    t_s: float,
    *,
    actual: int,
    available: int,
    last_update: int | None = None,
    total: int | None = None,
    **counters: int,
) -> GuestSample:
    """A sample in MiB (actual, available, total); ``last_update`` defaults to t_s + 1000."""
    stats = BalloonStats(
        last_update=int(t_s) + 1000 if last_update is None else last_update,
        total_bytes=(actual if total is None else total) * MiB,
        available_bytes=available * MiB,
        **counters,
    )
    return GuestSample(t_s=t_s, actual_bytes=actual * MiB, stats=stats)


def view(*samples: GuestSample, **kw: object) -> GuestView:
    return GuestView(name="g1", boot_bytes=BOOT, history=samples, **kw)  # type: ignore[arg-type]


def run(
    guest: GuestView,
    pol: ResolvedPolicy | None = None,
    *,
    cap: int | None = None,
    now_s: float | None = None,
) -> Decision:
    now = guest.history[-1].t_s + 0.1 if now_s is None and guest.history else (now_s or 0.0)
    return decide(
        guest=guest,
        policy=pol or policy(),
        host_cap_bytes=cap,
        now_s=now,
        poll_interval_s=POLL_S,
    )


def steady(
    actual: int, available: int, n: int = 3, total: int | None = None, **counters: int
) -> tuple[GuestSample, ...]:
    return tuple(
        sample(float(i), actual=actual, available=available, total=total, **counters)
        for i in range(n)
    )


# Default policy at 1GiB: free_low 153.6MiB, free_high 307.2MiB, mid 230.4MiB, min 256MiB,
# step 128MiB, min_change 16MiB, cache_floor 64MiB.


# --- no data -----------------------------------------------------------------------------


def test_no_samples_is_no_stats() -> None:
    d = run(view(), now_s=5.0)
    assert (d.target_bytes, d.reason) == (None, Reason.NO_STATS)


def test_missing_stats_is_no_stats() -> None:
    g = view(GuestSample(t_s=0.0, actual_bytes=BOOT, stats=None))
    d = run(g)
    assert (d.target_bytes, d.reason, d.current_bytes) == (None, Reason.NO_STATS, BOOT)


def test_never_reported_stats_are_no_stats() -> None:
    # What QEMU shows before the guest driver answers: last-update 0.
    g = view(GuestSample(t_s=0.0, actual_bytes=BOOT, stats=BalloonStats(last_update=0)))
    assert run(g).reason is Reason.NO_STATS


def test_old_sample_is_stale() -> None:
    g = view(*steady(1024, 900))
    d = run(g, now_s=60.0)
    assert (d.target_bytes, d.reason) == (None, Reason.STALE_STATS)


def test_last_update_not_advancing_is_stale() -> None:
    frozen = tuple(sample(float(t), actual=1024, available=900, last_update=77) for t in range(8))
    d = run(view(*frozen))
    assert (d.target_bytes, d.reason) == (None, Reason.STALE_STATS)
    assert "not updated" in d.explanation


def test_last_update_lagging_a_poll_is_not_stale() -> None:
    # Guests report once a second; a poll can land twice in the same second.
    hist = (
        sample(0.0, actual=1024, available=200, last_update=10),
        sample(1.0, actual=1024, available=200, last_update=10),
        sample(2.0, actual=1024, available=200, last_update=11),
        sample(2.5, actual=1024, available=200, last_update=11),
    )
    assert run(view(*hist)).reason is Reason.IN_BAND


# --- fail-safe: stats lost while the guest is shrunk ---------------------------------------


def _frozen_at(actual: int, *, reported_s: float, polls: int = 8) -> GuestView:
    """Samples whose last_update stopped moving; the last report came at ``reported_s``."""
    frozen = tuple(
        sample(float(t), actual=actual, available=200, last_update=77) for t in range(polls)
    )
    return view(*frozen, target_bytes=actual * MiB, last_report_s=reported_s)


def test_stale_stats_hold_until_stale_release_s() -> None:
    pol = policy(stale_release_s=30)
    d = run(_frozen_at(512, reported_s=-20.0), pol)  # blind for 27 s
    assert (d.target_bytes, d.reason) == (None, Reason.STALE_STATS)


def test_stale_stats_past_stale_release_s_give_back_up_to_max_size() -> None:
    pol = policy(stale_release_s=30, max_size="900MiB")
    d = run(_frozen_at(512, reported_s=-30.0), pol)  # blind for 37 s
    assert (d.target_bytes, d.reason) == (900 * MiB, Reason.STATS_LOST)
    assert "no guest report for 37s" in d.explanation
    assert "stale_release_s 30s" in d.explanation


def test_stats_lost_changes_nothing_at_max_size() -> None:
    d = run(_frozen_at(1024, reported_s=-300.0), policy(stale_release_s=30))
    assert (d.target_bytes, d.reason) == (None, Reason.STALE_STATS)


def test_a_guest_that_never_reported_is_released_too() -> None:
    # Found shrunk and silent after a restart: no stats at all since the connect.
    g = view(
        GuestSample(t_s=0.0, actual_bytes=400 * MiB, stats=BalloonStats(last_update=0)),
        last_report_s=-60.0,
    )
    d = run(g, policy(stale_release_s=30))
    assert (d.target_bytes, d.reason) == (BOOT, Reason.STATS_LOST)


@settings(max_examples=200, deadline=None)
@given(
    actual_mib=st.integers(min_value=256, max_value=1024),
    blind_s=st.floats(min_value=0, max_value=600),
    release_s=st.floats(min_value=1, max_value=300),
)
def test_blind_guests_never_shrink_and_are_released_in_time(
    actual_mib: int, blind_s: float, release_s: float
) -> None:
    """Without fresh stats no target is below the current size; past stale_release_s a
    guest below max_size is always handed back to max_size."""
    g = _frozen_at(actual_mib, reported_s=7.1 - blind_s)  # run() decides at t = 7.1
    d = run(g, policy(stale_release_s=release_s))
    if d.target_bytes is not None:
        assert d.target_bytes >= actual_mib * MiB
    if blind_s >= release_s + 1e-6 and actual_mib * MiB < BOOT:
        assert (d.target_bytes, d.reason) == (BOOT, Reason.STATS_LOST)


# --- guest pressure ------------------------------------------------------------------------


def test_pressure_deflates_to_mid_band_plus_growth() -> None:
    pol = policy()
    hist = (
        sample(0.0, actual=512, available=200),
        sample(1.0, actual=512, available=140),  # falling 60MiB/s, below free_low
    )
    d = run(view(*hist), pol)
    assert d.reason is Reason.PRESSURE
    assert d.decline_bps == 60 * MiB
    need = pol.band_mid_bytes - 140 * MiB + 3 * 60 * MiB  # deficit + 3 polls of decline
    assert d.target_bytes == -(-(512 * MiB + need) // MiB) * MiB
    assert "available 140MiB < free_low 154MiB (15%), falling 60MiB/s" in d.explanation
    assert d.explanation.endswith("deflate 512MiB -> 783MiB")


def test_pressure_never_above_max_size() -> None:
    pol = policy(max_size="600MiB")
    hist = (sample(0.0, actual=512, available=100), sample(1.0, actual=512, available=20))
    d = run(view(*hist), pol)
    assert (d.reason, d.target_bytes) == (Reason.PRESSURE, 600 * MiB)


def test_pressure_at_max_size_holds() -> None:
    d = run(view(*steady(1024, 100)))
    assert (d.target_bytes, d.reason) == (None, Reason.AT_MAX)
    assert "already at max_size" in d.explanation


def test_pressure_deflate_is_at_least_min_change() -> None:
    pol = policy(free_low="100MiB", free_high="110MiB", min_change="64MiB")
    d = run(view(*steady(512, 99)), pol)
    assert d.reason is Reason.PRESSURE
    assert d.target_bytes == 512 * MiB + 64 * MiB


def test_pressure_lands_on_max_even_below_min_change() -> None:
    pol = policy()
    d = run(view(*steady(1024 - 4, 100)), pol)
    assert (d.reason, d.target_bytes) == (Reason.PRESSURE, BOOT)


def test_max_deflate_step_limits_a_deflate_above_the_floor() -> None:
    # Unlimited, the guest would get mid-band: 600 + 230.4 - 100 -> 731MiB. The step stops
    # it at 632MiB, but the floor (used 500 + free_low 153.6) wins over the step.
    unlimited = run(view(*steady(600, 100)))
    assert unlimited.target_bytes == 731 * MiB
    d = run(view(*steady(600, 100)), policy(max_deflate_step="32MiB"))
    assert d.target_bytes == 654 * MiB
    d = run(view(*steady(700, 300)), policy(max_deflate_step="32MiB", min_size="800MiB"))
    assert (d.reason, d.target_bytes) == (Reason.BELOW_FLOOR, 800 * MiB)


def test_falling_fast_is_oom_risk_before_free_low() -> None:
    hist = (sample(0.0, actual=512, available=300), sample(1.0, actual=512, available=220))
    d = run(view(*hist))  # 220MiB is in band, but 80MiB/s crosses free_low within 3s
    assert d.reason is Reason.OOM_RISK
    assert d.target_bytes is not None
    assert d.target_bytes >= 512 * MiB + 240 * MiB


def test_oom_kill_is_oom_risk() -> None:
    hist = (
        sample(0.0, actual=512, available=250, oom_kills=0),
        sample(1.0, actual=512, available=250, oom_kills=1),
    )
    d = run(view(*hist))
    assert d.reason is Reason.OOM_RISK
    assert "OOM-killed 1" in d.explanation
    assert d.target_bytes is not None
    assert d.target_bytes > 512 * MiB


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"swap_in_bytes": 0}, {"swap_in_bytes": 8 * MiB}),
        ({"major_faults": 0}, {"major_faults": 5000}),
        ({"alloc_stalls": 3}, {"alloc_stalls": 9}),
    ],
)
def test_faults_below_mid_band_are_thrashing(before: dict[str, int], after: dict[str, int]) -> None:
    hist = (
        sample(0.0, actual=512, available=200, **before),
        sample(1.0, actual=512, available=200, **after),
    )
    d = run(view(*hist))
    assert d.reason is Reason.THRASHING
    assert d.target_bytes is not None
    assert d.target_bytes >= 512 * MiB + (policy().free_high_bytes - 200 * MiB)


def test_faults_with_plenty_available_are_not_pressure() -> None:
    hist = (
        sample(0.0, actual=1024, available=290, major_faults=0),
        sample(1.0, actual=1024, available=290, major_faults=9000),
    )
    assert run(view(*hist)).reason is Reason.IN_BAND


def test_counter_reset_is_not_a_signal() -> None:
    hist = (
        sample(0.0, actual=512, available=200, swap_in_bytes=500 * MiB),
        sample(1.0, actual=512, available=200, swap_in_bytes=0),
    )
    assert run(view(*hist)).reason is Reason.IN_BAND


def test_guest_deflating_itself_is_pressure() -> None:
    # deflate-on-oom: the guest took 20MiB back from a balloon balloond had set to 512MiB.
    hist = (sample(0.0, actual=512, available=200), sample(1.0, actual=532, available=200))
    d = run(view(*hist, target_bytes=512 * MiB, last_deflate_s=0.9, external_change_s=0.9))
    assert d.reason is Reason.GUEST_DEFLATE
    assert d.target_bytes is not None
    assert d.target_bytes > 532 * MiB


def test_our_own_deflate_is_not_the_guests() -> None:
    hist = (sample(0.0, actual=512, available=200), sample(1.0, actual=600, available=200))
    d = run(view(*hist, target_bytes=700 * MiB, last_deflate_s=0.5))
    assert d.reason is Reason.IN_BAND


def test_guest_pressure_wins_over_cooldown_and_host_cap() -> None:
    hist = (sample(0.0, actual=512, available=100), sample(1.0, actual=512, available=100))
    g = view(*hist, last_deflate_s=0.5, external_change_s=0.5)
    d = run(g, cap=300 * MiB)
    assert d.reason is Reason.PRESSURE
    assert d.target_bytes is not None
    assert d.target_bytes > 512 * MiB


# --- used memory and trend ------------------------------------------------------------------


def test_used_is_the_same_with_and_without_deflate_on_oom() -> None:
    # 1GiB guest ballooned to 600MiB, 150MiB available. deflate-on-oom off: the balloon left
    # MemTotal. On: it stayed in MemTotal and counts as used there. Same answer either way.
    off = view(*steady(600, 150))
    on = view(*steady(600, 150, total=1000))
    a = observe(guest=off, now_s=2.5, poll_interval_s=POLL_S)
    b = observe(guest=on, now_s=2.5, poll_interval_s=POLL_S)
    assert isinstance(a, Observation)
    assert isinstance(b, Observation)
    assert a.used_bytes == b.used_bytes == 450 * MiB


def test_our_inflate_is_not_read_as_a_falling_guest() -> None:
    # balloond took 128MiB after t=1; the guest's report at t=2 still shows the old
    # available, the one at t=3 shows it 128MiB lower. Neither is the guest consuming.
    hist = (
        sample(0.0, actual=1024, available=600),
        sample(1.0, actual=1024, available=600),
        sample(2.0, actual=896, available=600),
        sample(3.0, actual=896, available=472),
    )
    for n in (3, 4):
        obs = observe(guest=view(*hist[:n]), now_s=hist[n - 1].t_s, poll_interval_s=POLL_S)
        assert isinstance(obs, Observation)
        assert obs.decline_bps == 0


def test_workload_growth_is_seen_through_a_balloon_move() -> None:
    hist = (
        sample(0.0, actual=1024, available=600),
        sample(1.0, actual=896, available=600),
        sample(2.0, actual=896, available=422),  # 128MiB ours, 50MiB the guest's
        sample(3.0, actual=896, available=372),
    )
    obs = observe(guest=view(*hist), now_s=3.0, poll_interval_s=POLL_S)
    assert isinstance(obs, Observation)
    assert obs.decline_bps == 50 * MiB


# --- floors, ceilings, idle -----------------------------------------------------------------


def test_below_min_size_deflates_to_it() -> None:
    d = run(view(*steady(200, 160)))  # someone set 200MiB; min_size is 256MiB
    assert (d.reason, d.target_bytes) == (Reason.BELOW_FLOOR, 256 * MiB)


def test_idle_inflates_one_step_toward_mid_band() -> None:
    d = run(view(*steady(1024, 800)))
    assert d.reason is Reason.IDLE
    assert d.target_bytes == 896 * MiB  # one 128MiB step
    assert d.explanation == ("available 800MiB > free_high 307MiB (30%): inflate 1GiB -> 896MiB")


def test_idle_aims_at_mid_band_when_close() -> None:
    pol = policy()
    d = run(view(*steady(1024, 350)), pol)
    assert d.reason is Reason.IDLE
    want = 1024 * MiB - (350 * MiB - pol.band_mid_bytes)
    assert d.target_bytes == -(-want // MiB) * MiB


def test_idle_stops_at_the_floor() -> None:
    pol = policy(min_size="900MiB")
    d = run(view(*steady(1024, 800)), pol)
    assert (d.reason, d.target_bytes) == (Reason.IDLE, 900 * MiB)
    d = run(view(*steady(900, 700)), pol)
    assert (d.reason, d.target_bytes) == (Reason.AT_FLOOR, None)


def test_cache_floor_keeps_available_memory_on_small_guests() -> None:
    # 256MiB guest: free_low is 38MiB but cache_floor keeps 64MiB available.
    pol = policy(boot=256 * MiB, min_size="64MiB")
    g = GuestView(name="s", boot_bytes=256 * MiB, history=steady(256, 150))
    d = run(g, pol)
    assert d.floor_bytes == (256 - 150 + 64) * MiB
    assert d.target_bytes is not None
    assert d.target_bytes >= d.floor_bytes


def test_in_band_holds() -> None:
    d = run(view(*steady(700, 200)))
    assert (d.target_bytes, d.reason) == (None, Reason.IN_BAND)
    assert d.explanation == "available 200MiB within 154MiB..307MiB: no change"


def test_cooldown_blocks_inflate() -> None:
    g = view(*steady(1024, 800), last_deflate_s=-10.0)
    d = run(g)
    assert (d.target_bytes, d.reason) == (None, Reason.COOLDOWN)
    assert "deflated 12s ago (cooldown 30s)" in d.explanation
    assert run(replace(g, last_deflate_s=-28.0)).reason is Reason.IDLE


def test_external_change_backs_off() -> None:
    g = view(*steady(1024, 800), external_change_s=0.0)
    assert run(g).reason is Reason.EXTERNAL_BACKOFF
    assert run(replace(g, external_change_s=-298.0)).reason is Reason.IDLE


def test_small_inflate_is_skipped() -> None:
    pol = policy()
    # 10MiB above free_high: mid-band is further, but the floor stops it 8MiB down.
    pol = policy(min_size="1016MiB")
    d = run(view(*steady(1024, 320)), pol)
    assert (d.target_bytes, d.reason) == (None, Reason.MIN_CHANGE)


def test_above_max_size_shrinks_straight_to_it() -> None:
    pol = policy(max_size="50%")
    d = run(view(*steady(1024, 700)), pol)
    assert (d.reason, d.target_bytes) == (Reason.ABOVE_MAX, 512 * MiB)


def test_above_max_size_waits_out_the_cooldown() -> None:
    pol = policy(max_size="50%")
    d = run(view(*steady(1024, 700), last_deflate_s=1.0), pol)
    assert d.reason is Reason.COOLDOWN


# --- host pressure in decide ---------------------------------------------------------------


def test_host_cap_squeezes_without_step_limit() -> None:
    d = run(view(*steady(1024, 600)), cap=600 * MiB)
    assert (d.reason, d.target_bytes, d.ceiling_bytes) == (
        Reason.HOST_PRESSURE,
        600 * MiB,
        600 * MiB,
    )


def test_host_cap_never_below_the_floor() -> None:
    d = run(view(*steady(1024, 600)), cap=100 * MiB)
    floor = floor_bytes(used_bytes=424 * MiB, policy=policy())
    assert d.floor_bytes == floor == 578 * MiB  # used 424MiB + free_low 153.6MiB, whole MiB
    assert d.target_bytes == floor


def test_host_pressure_mode_sits_at_max() -> None:
    pol = policy(reclaim="host-pressure")
    d = run(view(*steady(1024, 900)), pol)
    assert (d.target_bytes, d.reason) == (None, Reason.AT_MAX)


def test_host_pressure_mode_squeezes_then_recovers() -> None:
    pol = policy(reclaim="host-pressure")
    d = run(view(*steady(1024, 900)), pol, cap=512 * MiB)
    assert (d.reason, d.target_bytes) == (Reason.HOST_PRESSURE, 512 * MiB)
    d = run(view(*steady(512, 388)), pol, cap=512 * MiB)
    assert (d.reason, d.target_bytes) == (Reason.HOST_PRESSURE, None)
    d = run(view(*steady(512, 388)), pol)
    assert (d.reason, d.target_bytes) == (Reason.HOST_RECOVERED, BOOT)


def test_host_pressure_mode_partial_recovery_to_a_raised_cap() -> None:
    pol = policy(reclaim="host-pressure")
    d = run(view(*steady(512, 388)), pol, cap=700 * MiB)
    assert (d.reason, d.target_bytes) == (Reason.HOST_RECOVERED, 700 * MiB)


def test_idle_guest_squeezed_for_the_host_gets_memory_back() -> None:
    pol = policy()
    g = view(*steady(600, 170), last_reason=Reason.HOST_PRESSURE)
    d = run(g, pol)
    assert d.reason is Reason.HOST_RECOVERED
    assert d.target_bytes == -(-(600 * MiB + pol.band_mid_bytes - 170 * MiB) // MiB) * MiB
    # ... but not while the host still caps it.
    assert run(g, pol, cap=600 * MiB).reason is Reason.HOST_PRESSURE


# --- reclaim = "off" -------------------------------------------------------------------------


def test_off_leaves_the_balloon_alone() -> None:
    pol = policy(reclaim="off")
    for hist in (steady(600, 20), steady(1024, 900), ()):
        d = run(view(*hist), pol, now_s=5.0)
        assert (d.target_bytes, d.reason) == (None, Reason.OFF)


def test_off_hands_back_what_balloond_took() -> None:
    pol = policy(reclaim="off")
    d = run(view(*steady(600, 300), target_bytes=600 * MiB), pol)
    assert (d.target_bytes, d.reason) == (BOOT, Reason.OFF)
    d = run(view(*steady(1024, 300), target_bytes=BOOT), pol)
    assert d.target_bytes is None


def test_decision_is_json_ready() -> None:
    d = run(view(*steady(1024, 800)))
    out = json.loads(json.dumps(d.as_dict()))
    assert out["reason"] == "idle"
    assert out["target_bytes"] == 896 * MiB
    assert d.change_bytes == -128 * MiB


# --- plan_host --------------------------------------------------------------------------------


def host(total_gib: int, available_mib: int) -> HostSnapshot:
    return HostSnapshot(total_bytes=total_gib * GiB, available_bytes=available_mib * MiB)


def pair(
    name: str, actual: int, available: int, **knobs: object
) -> tuple[GuestView, ResolvedPolicy]:
    g = GuestView(name=name, boot_bytes=BOOT, history=steady(actual, available))
    knobs.setdefault("refault_threshold", "0MiB")
    knobs.setdefault("surge_reserve_max", "0MiB")
    return g, Policy.model_validate(knobs).resolve(BOOT, name="test")


def plan(
    guests: list[tuple[GuestView, ResolvedPolicy]], snapshot: HostSnapshot, reserve_mib: int
) -> dict[str, int]:
    return plan_host(
        guests=guests, host=snapshot, reserve_bytes=reserve_mib * MiB, now_s=2.5, poll_interval_s=1
    )


def test_host_with_room_has_no_caps() -> None:
    guests = [pair("a", 1024, 600), pair("b", 1024, 600, reclaim="host-pressure")]
    assert plan(guests, host(16, 4096), 1024) == {}


def test_shortfall_is_spread_by_idle_memory_over_weight() -> None:
    guests = [pair("a", 1024, 800, weight=100), pair("b", 1024, 800, weight=300)]
    caps = plan(guests, host(16, 1024 - 200), 1024)  # 200MiB short
    took = {n: BOOT - c for n, c in caps.items()}
    assert sum(took.values()) >= 200 * MiB
    assert took["a"] == pytest.approx(3 * took["b"], rel=0.01)


def test_shortfall_takes_more_from_the_idler_guest() -> None:
    guests = [pair("a", 1024, 900), pair("b", 1024, 400)]
    caps = plan(guests, host(16, 1024 - 200), 1024)
    assert BOOT - caps["a"] > BOOT - caps["b"] > 0


def test_caps_respect_floors_when_the_host_wants_everything() -> None:
    guests = [pair("a", 1024, 800), pair("b", 1024, 300, min_size="900MiB")]
    caps = plan(guests, host(16, 0), 8192)
    for g, pol in guests:
        obs = observe(guest=g, now_s=2.5, poll_interval_s=1)
        assert isinstance(obs, Observation)
        assert caps[g.name] == floor_bytes(used_bytes=obs.used_bytes, policy=pol)


def test_guests_in_cooldown_or_off_give_nothing() -> None:
    cooling = GuestView(name="c", boot_bytes=BOOT, history=steady(1024, 800), last_deflate_s=2.0)
    guests = [(cooling, policy()), pair("off", 1024, 800, reclaim="off"), pair("a", 1024, 800)]
    caps = plan(guests, host(16, 1024 - 100), 1024)
    assert caps["c"] == BOOT
    assert "off" not in caps
    assert caps["a"] <= BOOT - 100 * MiB


def test_thin_shares_are_gathered_into_min_change_chunks() -> None:
    guests = [pair(f"g{i}", 1024, 800) for i in range(100)]
    caps = plan(guests, host(64, 1024 - 100), 1024)  # 1MiB each would never be carried out
    took = [BOOT - c for c in caps.values()]
    assert all(t == 0 or t >= 16 * MiB for t in took)
    assert 100 * MiB <= sum(took) <= 116 * MiB


def test_recovery_shares_the_surplus_high_weight_first() -> None:
    guests = [
        pair("lo", 512, 400, reclaim="host-pressure", weight=100),
        pair("hi", 512, 400, reclaim="host-pressure", weight=400),
    ]
    caps = plan(guests, host(16, 1024 + 500), 1024)  # 500MiB surplus, 1GiB wanted back
    grant = {n: c - 512 * MiB for n, c in caps.items()}
    assert 480 * MiB <= sum(grant.values()) <= 500 * MiB
    assert grant["hi"] == pytest.approx(4 * grant["lo"], rel=0.01)


def test_recovery_ends_caps_once_the_surplus_covers_everyone() -> None:
    guests = [pair("a", 512, 400, reclaim="host-pressure")]
    assert plan(guests, host(16, 1024 + 600), 1024) == {}


def test_caps_hold_a_host_pressure_guest_without_stats() -> None:
    g = GuestView(
        name="n",
        boot_bytes=BOOT,
        history=(GuestSample(t_s=2.0, actual_bytes=512 * MiB, stats=None),),
    )
    caps = plan([(g, policy(reclaim="host-pressure"))], host(16, 100), 1024)
    assert caps == {"n": 512 * MiB}


# --- properties -------------------------------------------------------------------------------

# Strategies are built once: building them inside a composite on every draw costs more than
# the engine does. Bulk numbers come from a seeded Random (one draw) for the same reason.
SIZES_MIB = st.integers(min_value=256, max_value=16384)
SEEDS = st.integers(0, 2**32 - 1)
PERCENT = st.integers(1, 40)
MIN_SIZES = st.sampled_from(["16MiB", "256MiB", "600MiB", "10%", "40%"])
MAX_SIZES = st.sampled_from(["100%", "90%", "75%", "50%", "3000MiB", "700MiB"])
INFLATE_STEPS = st.sampled_from(["128MiB", "5%", "1MiB", "1GiB"])
DEFLATE_STEPS = st.sampled_from(["none", "64MiB", "10%"])
MIN_CHANGES = st.sampled_from(["0MiB", "1MiB", "16MiB", "100MiB", "2%"])
RECLAIMS = st.sampled_from(["idle", "idle", "idle", "host-pressure", "host-pressure", "off"])
REASONS = st.none() | st.sampled_from(Reason)


@st.composite
def policies(draw: st.DrawFn, boot: int) -> ResolvedPolicy:
    low = draw(PERCENT)
    rnd = random.Random(draw(SEEDS))
    knobs: dict[str, object] = {
        "free_low": f"{low}%",
        "free_high": f"{low + draw(PERCENT)}%",
        "min_size": draw(MIN_SIZES),
        "max_size": draw(MAX_SIZES),
        "cache_floor": f"{rnd.randint(0, 256)}MiB",
        "max_inflate_step": draw(INFLATE_STEPS),
        "max_deflate_step": draw(DEFLATE_STEPS),
        "min_change": draw(MIN_CHANGES),
        "cooldown_s": rnd.choice([0, 30, 120]),
        "external_backoff_s": rnd.choice([0, 300]),
        "weight": rnd.randint(1, 10000),
        "reclaim": draw(RECLAIMS),
        "refault_threshold": rnd.choice(["0MiB", "1MiB", "8MiB"]),
        "refault_window_s": rnd.choice([10, 60]),
        "working_set_halflife_s": rnd.choice([60, 1800]),
        "surge_reserve_max": rnd.choice(["0MiB", "10%", "25%"]),
        "surge_halflife_s": rnd.choice([60, 600]),
    }
    return Policy.model_validate(knobs).resolve(boot, name="p")


@st.composite
def histories(draw: st.DrawFn, boot: int, *, fresh: bool = False) -> tuple[GuestSample, ...]:
    """Samples around a latest one: earlier ones mostly close to it, sometimes far, so
    that steady, idle, falling and moving guests all come up. Counters rarely move; stats
    are sometimes missing or frozen, unless ``fresh``."""
    rnd = random.Random(draw(SEEDS))
    boot_mib = boot // MiB
    actual_mib = rnd.choice(
        (boot_mib, rnd.randint(1, boot_mib), rnd.randint(boot_mib // 2, boot_mib))
    )
    share = rnd.choice((rnd.uniform(0, 0.2), rnd.uniform(0.2, 0.5), rnd.uniform(0.5, 1.0)))
    available_mib = int(actual_mib * share)
    n = rnd.randint(2 if fresh else 1, 6)
    sizes = [(actual_mib, available_mib)]
    for _ in range(n - 1):
        a, v = sizes[-1]
        if rnd.random() < 0.2:  # a jump: a balloon move, or a burst of allocation
            a = rnd.randint(1, boot_mib)
            v = rnd.randint(0, a)
        else:
            v = min(a, max(0, v + rnd.randint(-boot_mib // 50, boot_mib // 50)))
        sizes.append((a, v))
    sizes.reverse()
    t, last_update = 100.0, 5000
    counters = {"swap_in_bytes": 0, "major_faults": 0, "oom_kills": 0, "alloc_stalls": 0}
    reads: int | None = None if rnd.random() < 0.3 else rnd.randint(0, GiB)
    out = []
    for a, v in sizes:
        if reads is not None:
            reads += rnd.choice((0, 0, 64 * 1024, 4 * MiB, 64 * MiB))
        t += 1.0 if fresh else rnd.uniform(0.2, 2.0)
        last_update += 1 if fresh or rnd.random() < 0.8 else 0
        for key in counters:
            if rnd.random() < 0.05:
                counters[key] += rnd.choice((1, 10_000, 64 * MiB))
        stats = (
            None
            if not fresh and rnd.random() < 0.05
            else BalloonStats(
                last_update=last_update,
                total_bytes=a * MiB,
                available_bytes=v * MiB,
                **counters,
            )
        )
        out.append(GuestSample(t_s=t, actual_bytes=a * MiB, stats=stats, read_bytes=reads))
    return tuple(out)


@st.composite
def situations(
    draw: st.DrawFn, *, fresh: bool = False
) -> tuple[GuestView, ResolvedPolicy, int | None, float]:
    boot = draw(SIZES_MIB) * MiB
    pol = draw(policies(boot))
    hist = draw(histories(boot, fresh=fresh))
    last_t = hist[-1].t_s
    rnd = random.Random(draw(SEEDS))

    def maybe_time() -> float | None:
        return None if rnd.random() < 0.4 else last_t - rnd.choice([0.5, 10, 40, 200, 400])

    guest = GuestView(
        name="g",
        boot_bytes=boot,
        history=hist,
        target_bytes=None if rnd.random() < 0.3 else rnd.randint(1, boot // MiB) * MiB,
        last_deflate_s=maybe_time(),
        external_change_s=maybe_time(),
        last_reason=draw(REASONS),
        last_report_s=maybe_time(),
        last_inflate_s=maybe_time(),
        io_baseline_bps=rnd.choice((None, 0.0, 100_000.0, 8.0 * MiB)),
        working_set_bytes=rnd.randint(0, boot // MiB) * MiB,
        working_set_s=maybe_time(),
        surge_bps=rnd.choice((0.0, 10.0 * MiB, 500.0 * MiB)),
        surge_s=maybe_time(),
    )
    cap = None if rnd.random() < 0.4 else rnd.randint(0, boot)
    now = last_t + (0.1 if fresh or rnd.random() < 0.8 else rnd.uniform(0.0, 10.0))
    return guest, pol, cap, now


PROPERTY = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.booleans().flatmap(lambda fresh: situations(fresh=fresh)))
def test_every_decision_keeps_the_invariants(
    case: tuple[GuestView, ResolvedPolicy, int | None, float],
) -> None:
    guest, pol, cap, now = case
    d = decide(guest=guest, policy=pol, host_cap_bytes=cap, now_s=now, poll_interval_s=1.0)
    assert d.explanation
    latest = guest.history[-1]
    current = latest.actual_bytes

    # A deflate whenever fresh stats show available memory below free_low and the guest is
    # below max_size (unless reclaim is off).
    if (
        d.reason not in (Reason.NO_STATS, Reason.STALE_STATS, Reason.OFF)
        and latest.stats is not None
        and latest.stats.available_bytes is not None
        and latest.stats.available_bytes < pol.free_low_bytes
        and current < pol.max_bytes
    ):
        assert d.target_bytes is not None, d.explanation
        assert d.target_bytes > current
    # The floor never leaves less than free_low available (unless max_size is lower).
    if d.floor_bytes is not None and d.used_bytes is not None:
        assert d.floor_bytes >= min(d.used_bytes + pol.free_low_bytes, pol.max_bytes)
    # No inflate while the working-set signal is high, or before the guest's own reads
    # are measured.
    obs = observe(guest=guest, now_s=now, poll_interval_s=1.0)
    held = isinstance(obs, Observation) and (
        working_set_signal(guest=guest, policy=pol, obs=obs, now_s=now) is not None
        or (pol.refault_threshold_bps > 0 and guest.io_baseline_bps is None)
    )
    if held and pol.reclaim is not Reclaim.OFF:
        assert d.target_bytes is None or d.target_bytes > current, d.explanation
    if d.target_bytes is None:
        return
    target = d.target_bytes
    # Bounds: never below the floor or min_size, never above max_size.
    assert pol.min_bytes <= target <= pol.max_bytes
    if d.floor_bytes is not None:
        assert target >= d.floor_bytes
    assert target != current
    assert target % MiB == 0
    if target < current:
        # No inflate inside the cooldown or the external backoff.
        assert guest.last_deflate_s is None or now - guest.last_deflate_s >= pol.cooldown_s
        assert (
            guest.external_change_s is None
            or now - guest.external_change_s >= pol.external_backoff_s
        )
    # No change smaller than min_change, except a deflate landing exactly on max_size.
    if abs(target - current) < pol.min_change_bytes:
        assert target == pol.max_bytes
        assert target > current


def test_fresh_situations_are_fresh() -> None:
    # The property above relies on fresh histories reaching the decision ladder.
    @settings(max_examples=50, deadline=None)
    @given(situations(fresh=True))
    def check(case: tuple[GuestView, ResolvedPolicy, int | None, float]) -> None:
        guest, pol, _, now = case
        if pol.reclaim is not Reclaim.OFF:
            obs = observe(guest=guest, now_s=now, poll_interval_s=1.0)
            assert isinstance(obs, Observation)

    check()


@settings(max_examples=250, deadline=None)
@given(
    st.lists(situations(fresh=True), min_size=1, max_size=12),
    st.integers(0, 64 * 1024),
    st.integers(0, 16 * 1024),
)
def test_plan_host_caps_keep_floors_and_cover_the_shortfall(
    cases: list[tuple[GuestView, ResolvedPolicy, int | None, float]],
    available_mib: int,
    reserve_mib: int,
) -> None:
    now = max(c[0].history[-1].t_s for c in cases) + 0.1
    pairs = [
        (
            replace(
                g,
                name=f"g{i}",
                history=tuple(
                    replace(s, t_s=s.t_s - g.history[-1].t_s + now - 0.1) for s in g.history
                ),
            ),
            p,
        )
        for i, (g, p, _, _) in enumerate(cases)
    ]
    snapshot = HostSnapshot(total_bytes=128 * GiB, available_bytes=available_mib * MiB)
    reserve = reserve_mib * MiB
    caps = plan_host(
        guests=pairs, host=snapshot, reserve_bytes=reserve, now_s=now, poll_interval_s=1.0
    )
    short = reserve - snapshot.available_bytes
    took = 0
    could = 0
    for guest, pol in pairs:
        if guest.name not in caps:
            continue
        obs = observe(guest=guest, now_s=now, poll_interval_s=1.0)
        assert isinstance(obs, Observation)
        base = min(obs.current_bytes, pol.max_bytes)
        keep = keep_for(guest=guest, policy=pol, now_s=now, poll_interval_s=1.0)
        floor = floor_bytes(used_bytes=obs.used_bytes, policy=pol, keep=keep)
        cap = caps[guest.name]
        change = abs(cap - base)
        assert change == 0 or change >= pol.min_change_bytes
        if short > 0:
            assert floor <= cap <= base or cap == base
            took += base - cap
            blocked = inflate_block(guest=guest, policy=pol, now_s=now) or working_set_signal(
                guest=guest, policy=pol, obs=obs, now_s=now
            )
            give = 0 if blocked else max(0, base - floor)
            if give >= pol.min_change_bytes:
                could += give
        else:
            assert cap >= base
            took -= cap - base
    if short > 0:
        assert took >= min(short, could)
    elif caps:
        assert -took <= -short  # never gives away more than the surplus
