"""Sharing host memory out when the host runs short: a cap per guest.

:func:`plan_host` runs once per cycle over every guest (thousands), before the per-guest
decisions, and returns caps that :func:`balloond.core.policy.engine.decide` applies. It is pure
and O(n log n): one sort for the weighted share-out.

It treats guest memory as a budget: the guests may together hold what they hold now plus the
host's surplus over ``reserve`` (memory a balloon returns goes back to the host, and memory it
gives a guest comes from there). Two cases:

* **Short** (host available < reserve): the shortfall is taken from guests in proportion to
  their idle memory (available above what they keep, i.e. size above their floor) divided by
  their weight: a guest gives the share ``min(1, L / weight)`` of its idle memory, with one
  ``L`` for all, so low weights give up to all their idle memory first and a guest with twice
  the weight gives half the share. Nobody goes below their floor (``min_size``, used +
  keep + surge reserve, the engine's own). Guests in their cooldown or external backoff,
  still measuring, with refaults after an inflate, without fresh stats, or with
  ``reclaim = "off"`` give nothing.
* **Room** (host available >= reserve): guests that balloond squeezed for the host and that
  want memory back (``reclaim = "host-pressure"`` below ``max_size``; ``"idle"`` squeezed
  below mid-band) share the surplus, high weights first, by the mirror rule. When the surplus
  covers them all, there are no caps: the result is empty.

Holding caps while the surplus cannot cover everyone is what keeps the host from swinging:
giving all memory back at the first sign of room would push the host straight back under its
reserve.

Amounts below a guest's ``min_change`` would never be carried out, so spread-thin shares are
gathered into whole ``min_change`` chunks, largest shares first. When the host is short that
may take up to one chunk more than the shortfall; when it has room it never gives more than
the surplus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from balloond.core.policy.decision import Reason
from balloond.core.policy.engine import floor_bytes, inflate_block, keep_for, working_set_signal
from balloond.core.policy.inputs import GuestFacts, Reclaim, ResolvedPolicy
from balloond.core.policy.observe import Unobservable, observe
from balloond.core.stats import HostSnapshot


@dataclass(slots=True)
class _Share:
    """One guest in the plan (mutable scratch, local to one call)."""

    name: str
    base: int  # the size the cap starts from
    limit: int  # most it may give (short) or wants back (room)
    min_change: int
    coef: float  # share per unit of L: 1/weight when short, weight when there is room
    amount: int = 0


def _water_fill(shares: list[_Share], total: int) -> None:
    """Set each ``amount = limit * min(1, L * coef)`` so that they sum to ``total`` (or to
    every limit, when ``total`` covers them all). O(n log n)."""
    live = [s for s in shares if s.limit > 0]
    if sum(s.limit for s in live) <= total:
        for s in live:
            s.amount = s.limit
        return
    # A share saturates (gives its whole limit) once L >= 1 / coef: walk them in that order.
    live.sort(key=lambda s: (-s.coef, s.name))
    saturated = 0.0
    slope = sum(s.limit * s.coef for s in live)
    level = 0.0
    for s in live:
        threshold = 1.0 / s.coef
        if saturated + threshold * slope >= total:
            break
        saturated += s.limit
        slope -= s.limit * s.coef
    level = (total - saturated) / slope if slope > 0 else float("inf")
    for s in live:
        s.amount = min(s.limit, int(s.limit * min(1.0, level * s.coef)))


def _chunk(shares: list[_Share], *, total: int, overshoot: bool) -> None:
    """Fold amounts below a guest's ``min_change`` into whole chunks for fewer guests."""
    for s in shares:
        if 0 < s.amount < s.min_change:
            s.amount = 0
    # What the dropped shares held, plus what the fill's rounding down left over.
    loose = total - sum(s.amount for s in shares)
    if loose <= 0:
        return
    for s in sorted(shares, key=lambda s: (-s.limit * s.coef, s.name)):
        if loose <= 0:
            break
        room = s.limit - s.amount
        add = min(room, loose)
        if s.amount + add < s.min_change:
            if s.limit < s.min_change or not overshoot:
                continue
            add = s.min_change - s.amount
        s.amount += add
        loose -= add


def plan_host(
    *,
    guests: Sequence[tuple[GuestFacts, ResolvedPolicy]],
    host: HostSnapshot,
    reserve_bytes: int,
    now_s: float,
    poll_interval_s: float,
) -> dict[str, int]:
    """Per-guest caps (bytes) while the host is short or recovering; empty when it has room.

    A guest missing from a non-empty result has no cap (it is "off", or its stats are
    unknown and it is not held by ``reclaim = "host-pressure"``).
    """
    short = reserve_bytes - host.available_bytes
    shares: list[_Share] = []
    held: dict[str, int] = {}
    for guest, policy in guests:
        if policy.reclaim is Reclaim.OFF or not guest.history:
            continue
        obs = observe(guest=guest, now_s=now_s, poll_interval_s=poll_interval_s)
        if isinstance(obs, Unobservable):
            # Unknown state: cannot squeeze it, but a host-pressure guest must not grow.
            if policy.reclaim is Reclaim.HOST_PRESSURE:
                held[guest.name] = guest.history[-1].actual_bytes
            continue
        base = min(obs.current_bytes, policy.max_bytes)
        weight = max(policy.weight, 1)
        if short > 0:
            blocked = inflate_block(guest=guest, policy=policy, now_s=now_s) or working_set_signal(
                guest=guest, policy=policy, obs=obs, now_s=now_s
            )
            keep = keep_for(
                guest=guest, policy=policy, now_s=now_s, poll_interval_s=poll_interval_s
            )
            floor = floor_bytes(used_bytes=obs.used_bytes, policy=policy, keep=keep)
            give = 0 if blocked else max(0, base - floor)
            shares.append(_Share(guest.name, base, give, policy.min_change_bytes, 1.0 / weight))
        else:
            if policy.reclaim is Reclaim.HOST_PRESSURE:
                want = policy.max_bytes - base
            elif guest.last_reason is Reason.HOST_PRESSURE:
                want = min(policy.band_mid_bytes - obs.available_bytes, policy.max_bytes - base)
            else:
                want = 0
            shares.append(_Share(guest.name, base, max(0, want), policy.min_change_bytes, weight))

    if short > 0:
        _water_fill(shares, short)
        _chunk(shares, total=short, overshoot=True)
        caps = {s.name: s.base - s.amount for s in shares}
    else:
        surplus = -short
        if sum(s.limit for s in shares) <= surplus:
            return {}
        _water_fill(shares, surplus)
        _chunk(shares, total=surplus, overshoot=False)
        caps = {s.name: s.base + s.amount for s in shares}
    caps.update(held)
    return caps
