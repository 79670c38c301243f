"""The page cache a guest needs: the working-set signal, its floor, and the surge reserve.

Pure engine and books; the real-guest behaviour is in test_pagecache.py."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from balloond.core.policy import Decision, GuestView, Reason, ResolvedPolicy, decide, observe
from balloond.core.policy.books import GuestBooks
from balloond.core.policy.engine import keep_for, working_set_signal
from balloond.core.policy.observe import Observation
from balloond.core.stats import BalloonStats, GuestSample
from balloond.core.units import GiB, MiB
from balloond.runtime.config import Policy

BOOT = 1 * GiB


def policy(**knobs: object) -> ResolvedPolicy:
    knobs.setdefault("free_high", "30%")
    knobs.setdefault("surge_reserve_max", "0MiB")
    return Policy.model_validate(knobs).resolve(BOOT, name="ws")


def reads(
    *rates_mib_s: float, actual: int = 768, available: int = 500, major_faults: int = 0
) -> tuple[GuestSample, ...]:
    """Samples one second apart (one guest report each) whose disk reads run at the
    given rates (MiB/s) between them."""
    out, read = [], 0
    for i, rate in enumerate((0.0, *rates_mib_s)):
        read += int(rate * MiB)
        stats = BalloonStats(
            last_update=1000 + i,
            total_bytes=actual * MiB,
            available_bytes=available * MiB,
            major_faults=major_faults,
        )
        out.append(
            GuestSample(t_s=float(i), actual_bytes=actual * MiB, stats=stats, read_bytes=read)
        )
    return tuple(out)


def guest(history: tuple[GuestSample, ...], **kw: object) -> GuestView:
    last = history[-1].t_s
    kw.setdefault("last_report_s", last)
    return GuestView(name="g", boot_bytes=BOOT, history=history, **kw)  # type: ignore[arg-type]


def run(g: GuestView, pol: ResolvedPolicy, *, now_s: float | None = None) -> Decision:
    now = g.history[-1].t_s + 0.1 if now_s is None else now_s
    return decide(guest=g, policy=pol, host_cap_bytes=None, now_s=now, poll_interval_s=1.0)


# --- the signal --------------------------------------------------------------------------


def test_refaults_soon_after_an_inflate_give_a_step_back() -> None:
    g = guest(reads(0.1, 12.0), io_baseline_bps=0.1 * MiB, last_inflate_s=1.0)
    d = run(g, policy())
    assert d.reason is Reason.WORKING_SET
    assert d.target_bytes == (768 + 128) * MiB  # one inflate step back
    assert "refaults 12MiB/s" in d.explanation
    assert "eating the guest's working set" in d.explanation


def test_a_working_set_that_grows_into_the_balloon_gets_a_step_per_window() -> None:
    # No inflate for long, but the reads rose: the balloon holds what the guest now needs
    # (or the guest reads more of its own accord): one step back ...
    g = guest(reads(0.1, 12.0), io_baseline_bps=0.1 * MiB, last_inflate_s=-100.0)
    d = run(g, policy())
    assert (d.target_bytes, d.reason) == ((768 + 128) * MiB, Reason.WORKING_SET)
    assert "holds memory for the guest's working set" in d.explanation
    # ... then it waits a window to see it help, before another.
    waiting = replace(g, last_deflate_s=-10.0, last_report_s=2.0, last_reason=Reason.WORKING_SET)
    d = run(waiting, policy())
    assert (d.target_bytes, d.reason) == (None, Reason.WORKING_SET)
    assert "waiting to see it help" in d.explanation


def test_after_a_give_back_it_waits_for_the_cache_to_refill() -> None:
    g = guest(
        reads(0.1, 12.0),
        io_baseline_bps=0.1 * MiB,
        last_inflate_s=0.0,
        last_deflate_s=1.0,  # a give-back a second ago; its report came since
        last_report_s=2.0,
        last_reason=Reason.WORKING_SET,
    )
    d = run(g, policy())
    assert (d.target_bytes, d.reason) == (None, Reason.WORKING_SET)
    assert "waiting for its cache" in d.explanation


def test_the_give_back_returns_what_the_inflate_took() -> None:
    g = guest(
        reads(0.1, 12.0), io_baseline_bps=0.1 * MiB, last_inflate_s=1.0,
        last_inflate_from_bytes=1000 * MiB,
    )  # fmt: skip
    d = run(g, policy())
    assert (d.target_bytes, d.reason) == (1000 * MiB, Reason.WORKING_SET)


def test_a_guest_at_max_size_has_nothing_to_give_back() -> None:
    g = guest(reads(0.1, 12.0, actual=1024), io_baseline_bps=0.1 * MiB, last_inflate_s=1.0)
    assert run(g, policy()).reason is not Reason.WORKING_SET


def test_a_guest_that_always_reads_this_much_is_not_refaulting() -> None:
    g = guest(reads(12.0, 12.5), io_baseline_bps=12.0 * MiB, last_inflate_s=1.0)
    assert run(g, policy()).reason is Reason.IDLE


def test_major_faults_count_where_the_disk_is_not_seen() -> None:
    history = reads(0, 0)
    faults = [0, 0, 5000]  # 5000 faults in a second: about 20MiB/s
    history = tuple(
        replace(s, read_bytes=None, stats=replace(s.stats, major_faults=f))  # type: ignore[arg-type]
        for s, f in zip(history, faults, strict=True)
    )
    g = guest(history, io_baseline_bps=0.0, last_inflate_s=1.5)
    assert run(g, policy()).reason is Reason.WORKING_SET


def test_allocation_stalls_after_an_inflate_are_the_signal_too() -> None:
    history = reads(0, 0)
    stalls = [0, 0, 3]
    history = tuple(
        replace(s, stats=replace(s.stats, alloc_stalls=n))  # type: ignore[arg-type]
        for s, n in zip(history, stalls, strict=True)
    )
    g = guest(history, io_baseline_bps=0.0, last_inflate_s=1.5)
    d = run(g, policy())
    assert d.reason is Reason.WORKING_SET
    assert "3 allocation stalls" in d.explanation


def test_one_give_back_per_guest_report() -> None:
    # Deflated after the last report: wait for a report that shows the effect.
    g = guest(reads(0.1, 12.0), io_baseline_bps=0.1 * MiB, last_inflate_s=1.0, last_deflate_s=2.05)
    d = run(g, policy(), now_s=2.2)
    assert (d.target_bytes, d.reason) == (None, Reason.WORKING_SET)
    assert "not in a report yet" in d.explanation


def test_the_signal_is_off_with_a_zero_threshold() -> None:
    g = guest(reads(0.1, 12.0), io_baseline_bps=0.1 * MiB, last_inflate_s=1.0)
    assert run(g, policy(refault_threshold="0MiB")).reason is Reason.IDLE


def test_no_inflate_before_the_guests_own_reads_are_measured() -> None:
    g = guest(reads(0.1, 0.1), io_baseline_bps=None)
    d = run(g, policy())
    assert (d.target_bytes, d.reason) == (None, Reason.MEASURING)


# --- the working-set floor ---------------------------------------------------------------


def test_the_working_set_floor_holds_the_guest_and_says_so() -> None:
    # used 268MiB; the guest showed it needs 500MiB available: floor 768MiB.
    g = guest(
        reads(0.1, 0.1), io_baseline_bps=0.1 * MiB, working_set_bytes=500 * MiB, working_set_s=2.1
    )
    d = run(g, policy())
    assert (d.target_bytes, d.reason) == (None, Reason.AT_FLOOR)
    assert d.floor_bytes == 768 * MiB
    assert d.working_set_bytes == 500 * MiB
    assert "working set 500MiB" in d.explanation


def test_the_working_set_floor_decays_and_the_guest_is_reclaimed_again() -> None:
    g = guest(
        reads(0.1, 0.1),
        io_baseline_bps=0.1 * MiB,
        working_set_bytes=500 * MiB,
        working_set_s=-4 * 1800.0,  # four half-lives ago: 31MiB, below the policy's keep
    )
    d = run(g, policy())
    assert d.reason is Reason.IDLE
    assert d.target_bytes is not None
    assert d.target_bytes < 768 * MiB
    assert d.working_set_bytes is None


def test_books_learn_the_baseline_the_working_set_and_the_surge() -> None:
    pol = policy(surge_reserve_max="25%")
    books = GuestBooks.new("g", history_len=60)
    for s in reads(0.5, 0.5):
        books.record(s)
    view = books.view(BOOT)
    assert view is not None
    d = run(view, pol)
    books.decided(d, policy=pol, now_s=2.1)
    assert books.io_baseline_bps is not None
    assert 0.4 * MiB < books.io_baseline_bps < 0.6 * MiB
    # An inflate, then refaults: the books keep what the guest will have after the step.
    books.applied(640 * MiB, now_s=2.2, reason=Reason.IDLE)
    assert books.last_inflate_s == 2.2
    before = books.io_baseline_bps
    for i, s in enumerate(reads(0.5, 0.5, 30.0)[3:]):
        books.record(replace(s, t_s=3.0 + i, actual_bytes=640 * MiB))
    view = books.view(BOOT)
    assert view is not None
    d = run(view, pol)
    assert d.reason is Reason.WORKING_SET
    books.decided(d, policy=pol, now_s=3.1)
    assert books.io_baseline_bps == before  # inside the window: the baseline holds still
    assert books.working_set_bytes == 500 * MiB + 128 * MiB
    assert books.working_set_s == 3.1


def test_books_keep_the_fastest_recent_surge() -> None:
    pol = policy(surge_reserve_max="25%", surge_halflife_s=600)
    books = GuestBooks.new("g", history_len=60)
    books.decided(Decision(None, Reason.IN_BAND, "x", decline_bps=50.0 * MiB), policy=pol, now_s=0)
    books.decided(Decision(None, Reason.IN_BAND, "x", decline_bps=10.0 * MiB), policy=pol, now_s=1)
    assert (books.surge_bps, books.surge_s) == (50.0 * MiB, 0)
    # Ten half-lives later the old surge has faded: a small new one replaces it.
    books.decided(
        Decision(None, Reason.IN_BAND, "x", decline_bps=1.0 * MiB), policy=pol, now_s=6000
    )
    assert (books.surge_bps, books.surge_s) == (1.0 * MiB, 6000)


# --- the surge reserve -------------------------------------------------------------------


def test_the_surge_reserve_keeps_room_for_the_guests_own_worst_surge() -> None:
    pol = policy(surge_reserve_max="25%")
    g = guest(reads(0.1, 0.1), io_baseline_bps=0.1 * MiB, surge_bps=40.0 * MiB, surge_s=2.1)
    keep = keep_for(guest=g, policy=pol, now_s=2.1, poll_interval_s=1.0)
    assert keep.reserve == 80 * MiB  # 40MiB/s for a stats interval and the balloon's move
    d = run(g, pol)
    assert d.surge_reserve_bytes == 80 * MiB
    assert d.floor_bytes is not None
    calm = keep_for(guest=g, policy=pol, now_s=2.1 + 3 * 600, poll_interval_s=1.0)
    assert calm.reserve == 10 * MiB  # three half-lives later


def test_the_surge_reserve_is_capped() -> None:
    pol = policy(surge_reserve_max="10%")
    g = guest(reads(0.1, 0.1), io_baseline_bps=0.1 * MiB, surge_bps=900.0 * MiB, surge_s=1.0)
    assert keep_for(guest=g, policy=pol, now_s=2.0, poll_interval_s=1.0).reserve == int(0.1 * BOOT)


# --- properties --------------------------------------------------------------------------


@st.composite
def quiet_guests(draw: st.DrawFn) -> tuple[GuestView, float]:
    """A guest whose reads stay within the threshold of its own rate: no refaults."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    actual = rnd.randint(300, 1024)
    available = rnd.randint(0, actual)
    base = rnd.uniform(0, 20)
    rates = [max(0.0, base + rnd.uniform(-0.9, 0.9)) for _ in range(rnd.randint(1, 4))]
    history = reads(*rates, actual=actual, available=available)
    last = history[-1].t_s
    g = guest(
        history,
        io_baseline_bps=base * MiB,
        last_inflate_s=rnd.choice((None, last - 1, last - 200)),
        last_deflate_s=rnd.choice((None, last - 5, last - 100)),
        target_bytes=rnd.choice((None, actual * MiB)),
    )
    return g, last + 0.1


@settings(max_examples=500, deadline=None)
@given(quiet_guests(), st.sampled_from(["1MiB", "4MiB"]))
def test_a_guest_without_refaults_is_reclaimed_as_before(
    case: tuple[GuestView, float], threshold: str
) -> None:
    g, now = case
    on = decide(
        guest=g, policy=policy(refault_threshold=threshold), host_cap_bytes=None,
        now_s=now, poll_interval_s=1.0,
    )  # fmt: skip
    off = decide(
        guest=g, policy=policy(refault_threshold="0MiB"), host_cap_bytes=None,
        now_s=now, poll_interval_s=1.0,
    )  # fmt: skip
    assert (on.target_bytes, on.reason) == (off.target_bytes, off.reason)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**32))
def test_no_inflate_while_the_signal_is_high(seed: int) -> None:
    rnd = random.Random(seed)
    actual = rnd.randint(300, 1000)  # below max_size: something to give back
    available = rnd.randint(160, actual)  # at or above free_low: the signal's ground
    base = rnd.uniform(0, 5)
    history = reads(base, base + rnd.uniform(1.0, 50.0), actual=actual, available=available)
    g = guest(
        history,
        io_baseline_bps=base * MiB,
        last_inflate_s=history[-1].t_s - rnd.uniform(0, 50),
        last_deflate_s=rnd.choice((None, 0.5, 1.5)),
        working_set_bytes=rnd.randint(0, 900) * MiB,
        working_set_s=rnd.choice((None, 0.0)),
    )
    pol = policy()
    obs = observe(guest=g, now_s=2.1, poll_interval_s=1.0)
    assert isinstance(obs, Observation)
    assert working_set_signal(guest=g, policy=pol, obs=obs, now_s=2.1) is not None
    d = run(g, pol)
    assert d.target_bytes is None or d.target_bytes > actual * MiB
    if d.floor_bytes is not None and d.used_bytes is not None:
        assert d.floor_bytes >= min(d.used_bytes + pol.free_low_bytes, pol.max_bytes)
